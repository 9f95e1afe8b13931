"""Helpers that build state through the public API, shared by the test folders."""
