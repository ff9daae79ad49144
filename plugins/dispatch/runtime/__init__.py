"""Running the stages: the CLI pipeline, the Airflow task bodies, runs, progress and preview."""
