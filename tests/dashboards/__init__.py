"""Dashboard read API."""
