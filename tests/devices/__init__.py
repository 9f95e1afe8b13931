"""Device lifecycle."""
