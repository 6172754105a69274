"""The command line's machinery (Click options from configs, the chain, one-line errors); pipeline.py holds the table of stages."""
