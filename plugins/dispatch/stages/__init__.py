"""The pipeline's stages, one module per DAG task and named like it."""
