"""Pure rules with no I/O: scheduling, recipients, import checks, control characters."""
