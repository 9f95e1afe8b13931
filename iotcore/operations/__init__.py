"""Operator tooling that talks to a deployment from outside (the smoke test)."""
