#!/usr/bin/env bash
# Databases of the docker-compose stack besides Airflow's metadata (POSTGRES_DB): the
# dispatch database, and an accounting database for the demo (set ACCOUNTING_DB_URI to the
# real accounting system instead). Run by the postgres image once, when its volume is new.
set -euo pipefail

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v dispatch_password="${DISPATCH_DB_PASSWORD:-dispatch}" \
  -v accounting_password="${ACCOUNTING_DB_PASSWORD:-accounting}" <<'SQL'
CREATE ROLE dispatch LOGIN PASSWORD :'dispatch_password';
CREATE DATABASE dispatch OWNER dispatch;
CREATE ROLE accounting LOGIN PASSWORD :'accounting_password';
CREATE DATABASE accounting OWNER accounting;
SQL
