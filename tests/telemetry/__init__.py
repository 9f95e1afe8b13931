"""Telemetry ingestion."""
