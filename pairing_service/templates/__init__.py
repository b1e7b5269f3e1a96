"""HTML pages and their texts; client-facing Dutch lives here, not in Python."""
