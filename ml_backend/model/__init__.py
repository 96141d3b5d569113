"""Models: where files come from, how the shared base and its adapters load, the tiny test model."""
