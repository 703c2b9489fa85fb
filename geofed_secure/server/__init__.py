"""Server logic: round management, precision-weighted aggregation, checkpoints."""
