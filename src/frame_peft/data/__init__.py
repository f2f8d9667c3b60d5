"""Tasks, training data, mixing and batching (see docs/data.md)."""
