#!/usr/bin/env bash
# Prepare an Airflow deployment for the invoice_dispatch DAG. Idempotent: safe to run on
# every start (docker-compose's airflow-init service does).
#   1. Airflow's metadata schema        airflow db migrate
#   2. the pools the DAG uses            airflow pools import include/airflow/pools.json
#   3. the dispatch database's schema    python -m dispatch.cli db init   (DISPATCH_DB_URL)
#   4. only with DISPATCH_LOAD_DEMO=true: the demo accounting data and configuration
#   5. every *.yaml of DISPATCH_CONFIG_DIR, in name order (each load is all-or-nothing and an
#      upsert, so the configuration may be split over several files; a bad file stops here)
# Pools are declared in pools.json, never created by hand, so every environment has the
# same sizes (tests/dags/test_dag_integrity.py checks that the DAG uses only those pools).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"

airflow db migrate
airflow pools import "${here}/pools.json"
"${python}" -m dispatch.cli db init
if [[ "${DISPATCH_LOAD_DEMO:-false}" == "true" ]]; then
  "${python}" -m dispatch.cli demo
fi
if [[ -n "${DISPATCH_CONFIG_DIR:-}" && -d "${DISPATCH_CONFIG_DIR}" ]]; then
  shopt -s nullglob
  for file in "${DISPATCH_CONFIG_DIR}"/*.yaml "${DISPATCH_CONFIG_DIR}"/*.yml; do
    echo "loading configuration ${file}"
    "${python}" -m dispatch.cli config load "${file}"
  done
fi
