"""Operator procedures."""
