"""Local `evaluate` modules (loaded by path with evaluate.load, never fetched)."""
