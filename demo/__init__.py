"""Synthetic demo dataset, a backbone pretrained on its labels, and the `pipeline.py demo` stage."""
