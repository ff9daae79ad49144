"""Configuration: the YAML file of organizations and plans, and the environment settings."""
