"""Issue 11 item 11: the docker-compose stack for a real deployment — valid against the
Compose Specification's JSON schema (vendored in tests/fixtures/compose-spec.json from
github.com/compose-spec/compose-spec, Apache-2.0), an image with the runtime dependencies
only under the constraints file, one's own configuration loaded at init, a Fernet key that
is never empty, the accounting password wired to the service that reads it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import sqlalchemy as sa
import yaml

ROOT = Path(__file__).parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
SCHEMA = Path(__file__).parent / "fixtures" / "compose-spec.json"
DEV_TOOLS = {"pytest", "pytest-timeout", "hypothesis", "aiosmtpd", "jsonschema", "ruff"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ``${V}``, ``${V:-default}``, ``${V:?error}``, nested
    defaults, ``$$`` for a literal ``$``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return interpolate(arg or "", env)
            return value
        if op in (":?", "?"):
            if value is None or (op == ":?" and value == ""):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return value
        return value or ""

    protected = text.replace("$$", "\x00")
    previous = None
    while previous != protected:  # inner ${…} first, then the ones that contained them
        previous, protected = protected, _VAR.sub(one, protected)
    return protected.replace("\x00", "$")


def compose(env: dict[str, str] | None = None) -> dict:
    return yaml.safe_load(interpolate(COMPOSE.read_text(encoding="utf-8"), env or {}))


def _requirements(path: Path) -> set[str]:
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=\[ ;]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_interpolation_follows_compose() -> None:
    assert interpolate("${A:-x}/${B}/$${C}", {"B": "b"}) == "x/b/${C}"
    assert interpolate("${A:-u:${P:-p}@h}", {"P": "s"}) == "u:s@h"
    assert interpolate("${A:-u:${P:-p}@h}", {"A": "given"}) == "given"
    with pytest.raises(ValueError, match="K"):
        interpolate("${K:?set K}", {})


@pytest.mark.parametrize("env", [{}, {"ACCOUNTING_DB_PASSWORD": "s3cret", "AIRFLOW_WORKERS": "4"}])
def test_compose_file_is_valid_against_the_compose_specification(env: dict[str, str]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose(env)), key=str)
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_a_broken_compose_file_is_refused_by_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    doc = compose()
    doc["services"]["postgres"]["restart_policy"] = "always"  # not a service property
    assert not jsonschema.Draft7Validator(schema).is_valid(doc)


def test_the_image_installs_runtime_dependencies_only_under_the_constraints() -> None:
    dockerfile = (ROOT / "include/airflow/Dockerfile").read_text(encoding="utf-8")
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert len(installs) == 1
    assert "-r /tmp/invoice-dispatch/requirements.txt" in installs[0]
    assert "-c /tmp/invoice-dispatch/constraints.txt" in installs[0]
    instructions = [line for line in dockerfile.splitlines() if line.strip() and not line.startswith("#")]
    assert not [line for line in instructions if "requirements-dev" in line]
    runtime = _requirements(ROOT / "requirements.txt")
    assert runtime and not runtime & DEV_TOOLS
    dev = ROOT / "requirements-dev.txt"
    assert "-r requirements.txt" in dev.read_text(encoding="utf-8").splitlines()
    assert _requirements(dev) >= DEV_TOOLS
    pinned = _requirements(ROOT / "constraints.txt")
    assert (runtime | DEV_TOOLS) - pinned == set()  # every requirement has its pin
    assert "requirements-dev.txt" in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_accounting_password_reaches_the_service_that_reads_it() -> None:
    init_script = (ROOT / "include/airflow/postgres-init.sh").read_text(encoding="utf-8")
    assert "ACCOUNTING_DB_PASSWORD" in init_script  # the postgres image runs it
    doc = compose({"ACCOUNTING_DB_PASSWORD": "s3cret"})
    assert doc["services"]["postgres"]["environment"]["ACCOUNTING_DB_PASSWORD"] == "s3cret"
    worker_env = doc["services"]["airflow-worker"]["environment"]
    assert (
        worker_env["AIRFLOW_CONN_ACCOUNTING_DB"] == "postgresql://accounting:s3cret@postgres:5432/accounting"
    )
    real = compose({"ACCOUNTING_DB_URI": "postgresql://ro@erp:5432/erp", "ACCOUNTING_DB_PASSWORD": "x"})
    assert (
        real["services"]["airflow-init"]["environment"]["ACCOUNTING_DB_URL"] == "postgresql://ro@erp:5432/erp"
    )


def test_every_airflow_component_reads_a_fernet_key_that_init_writes() -> None:
    doc = compose()
    for name, service in doc["services"].items():
        if not name.startswith("airflow-"):
            continue
        env = service["environment"]
        assert "AIRFLOW__CORE__FERNET_KEY" not in env, name  # an empty value would win
        assert env["AIRFLOW__CORE__FERNET_KEY_CMD"] == "cat /opt/airflow/config/fernet.key", name
        assert "airflow-config:/opt/airflow/config" in service["volumes"], name
    assert "fernet-key.sh /opt/airflow/config/fernet.key" in doc["services"]["airflow-init"]["command"][1]


def _fernet(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "include/airflow/fernet-key.sh"), str(tmp_path / "fernet.key")],
        env={"PATH": os.environ["PATH"], "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_fernet_key_is_generated_once_kept_or_taken_from_the_environment(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    key_file = tmp_path / "fernet.key"
    assert _fernet(tmp_path).returncode == 0
    generated = key_file.read_text().strip()
    Fernet(generated.encode())  # a real Fernet key
    assert _fernet(tmp_path).returncode == 0 and key_file.read_text().strip() == generated  # kept
    given = Fernet.generate_key().decode()
    key_file.chmod(0o600)
    assert _fernet(tmp_path, AIRFLOW_FERNET_KEY=given).returncode == 0
    assert key_file.read_text().strip() == given
    bad = _fernet(tmp_path, AIRFLOW_FERNET_KEY="not-a-key")
    assert bad.returncode == 2 and "AIRFLOW_FERNET_KEY" in bad.stderr
    assert key_file.read_text().strip() == given  # unchanged


def test_init_loads_the_configuration_files_of_the_config_folder(tmp_path: Path) -> None:
    """include/airflow/setup.sh with the real dispatch CLI (Airflow's own commands stubbed)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "airflow").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "airflow").chmod(0o755)
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "10-acme.yaml").write_text(
        "organizations:\n  - {id: acme, name: ACME, timezone: Europe/Paris}\n"
    )
    (config_dir / "20-users.yaml").write_text("users:\n  - {id: u1, org: acme, name: Una}\n")
    db = tmp_path / "dispatch.db"
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "DISPATCH_DB_URL": f"sqlite:///{db}",
        "ACCOUNTING_DB_URL": f"sqlite:///{tmp_path / 'accounting.db'}",
        "DISPATCH_CONFIG_DIR": str(config_dir),
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "include/airflow/setup.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT org_id FROM organizations")).scalars().all() == ["acme"]
        assert conn.execute(sa.text("SELECT user_id FROM users")).scalars().all() == ["u1"]
    engine.dispose()
    (config_dir / "30-bad.yaml").write_text("users:\n  - {id: u2, org: nowhere, name: X}\n")
    failed = subprocess.run(
        ["bash", str(ROOT / "include/airflow/setup.sh")], env=env, capture_output=True, text=True, check=False
    )
    assert failed.returncode != 0 and "30-bad.yaml" in failed.stdout + failed.stderr
