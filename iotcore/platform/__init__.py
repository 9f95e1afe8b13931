"""Shared infrastructure: database, Redis, errors, HTTP plumbing, metrics, logging."""
