"""Template rendering: the Jinja2 sandbox, its limits, filters and context."""
