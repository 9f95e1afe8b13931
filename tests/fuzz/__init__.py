"""Schemathesis against the live API."""
