"""The pages people work from (CONTRACT §8): one FastAPI application, served inside Airflow's
api-server as a plugin and standalone by ``dispatch web``. Its routes call the same people's
operations as the CLI (:mod:`dispatch.people.operations`), so no rule is written twice."""
