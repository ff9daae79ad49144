"""Development tools (demo data, benchmarks); never imported by the runtime path."""
