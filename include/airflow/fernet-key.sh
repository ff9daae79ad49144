#!/usr/bin/env bash
# The Fernet key that encrypts Airflow connection passwords at rest, in the file every
# component reads (AIRFLOW__CORE__FERNET_KEY_CMD: cat FILE). Run by airflow-init:
#   * AIRFLOW_FERNET_KEY set  -> checked and written to FILE (a bad key stops the stack here);
#   * not set, FILE exists    -> kept (a new key would make stored passwords unreadable);
#   * not set, no FILE        -> a new key is generated, once.
# The key is never empty: an empty key would store connection passwords in clear text.
set -euo pipefail

file="${1:?usage: fernet-key.sh FILE}"
python="${PYTHON:-python}"

if [[ -n "${AIRFLOW_FERNET_KEY:-}" ]]; then
  # standard library only (this runs before /entrypoint, as root): 32 url-safe base64 bytes
  if ! "${python}" -c 'import base64, binascii, os, sys
try:
    ok = len(base64.urlsafe_b64decode(os.environ["AIRFLOW_FERNET_KEY"].strip().encode())) == 32
except (binascii.Error, ValueError):
    ok = False
sys.exit(0 if ok else 1)' 2>/dev/null; then
    echo "fernet-key: AIRFLOW_FERNET_KEY is not a Fernet key (32 url-safe base64-encoded bytes);" \
      "generate one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'" >&2
    exit 2
  fi
  (umask 077 && printf '%s\n' "${AIRFLOW_FERNET_KEY}" > "${file}")
  echo "fernet-key: using AIRFLOW_FERNET_KEY"
elif [[ -s "${file}" ]]; then
  echo "fernet-key: keeping the key in ${file}"
else
  (umask 077 && "${python}" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())' > "${file}")
  echo "fernet-key: generated a new key in ${file} (keep the airflow-config volume, or set AIRFLOW_FERNET_KEY)"
fi
chown "${AIRFLOW_UID:-50000}:0" "${file}" 2>/dev/null || true
chmod 0440 "${file}"
