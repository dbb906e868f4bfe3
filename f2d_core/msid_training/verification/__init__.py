"""Face verification: pairs (insightface .bin files, held-out identity folders) and their metrics."""
