"""Tenant deletion, device purges and jobs."""
