"""The dispatch database: schema, engines and migrations."""
