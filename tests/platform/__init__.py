"""Foundation: settings, errors, health, migrations, OpenAPI."""
