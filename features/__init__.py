"""Feature store: dataset parsing, HDF5 schema, writer, memmap reader and shard merge (no torch)."""
