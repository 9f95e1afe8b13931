"""The tenants' web console: static pages served at `/`, talking to the public API."""
