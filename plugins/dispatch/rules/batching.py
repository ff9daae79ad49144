"""The most batches a run may stage: one mapped ``dispatch_batch`` task per batch.

Airflow refuses to expand a task into more than ``core.max_map_length`` instances, so
``compute_due_sends`` grows the batch size rather than stage more batches than that. The DAG
reads the deployment's value; this is Airflow's default, used where there is no Airflow
configuration (``dispatch run``, tests). Defined here, with no imports, so that the DAG file
(parsed often) and the stage agree on it without the DAG importing the stage's libraries.
"""

from __future__ import annotations

#: Airflow's default ``core.max_map_length``.
DEFAULT_MAX_BATCHES = 1024
