"""The plugin inside a real ``airflow api-server`` (simple auth manager): the pages sit
behind Airflow's login, a logged-in user lists the to-do rows, the navigation has the entries."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.builders import World, open_world
from tests.web.conftest import ROOT, build_todo_world

pytestmark = pytest.mark.slow
AIRFLOW = Path(sys.executable).parent / "airflow"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(
    url: str, *, token: str | None = None, body: dict | None = None, cookie: str | None = None
) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = f"_token={cookie}"  # what the Airflow UI's login sets
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:  # not listening yet
        return 0, str(exc)


@pytest.fixture
def world(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "world").mkdir()
    with open_world("sqlite", tmp_path / "world") as w:
        build_todo_world(w)
        yield w


def test_the_plugin_behind_airflows_login(world: World, tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    (home / "dags").mkdir(parents=True)
    (home / "passwords.json").write_text(json.dumps({"claire": "claire-pw"}))
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        **world.env(),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__LAZY_LOAD_PLUGINS": "False",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "claire:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        "AIRFLOW__API_AUTH__JWT_SECRET": "plugin-test-jwt-secret",
        "AIRFLOW__API__SECRET_KEY": "plugin-test-secret-key",
        "AIRFLOW__API__PORT": str(port),
    }
    subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, check=True, capture_output=True, timeout=240)
    log = (tmp_path / "api-server.log").open("wb")
    server = subprocess.Popen(
        [str(AIRFLOW), "api-server", "--port", str(port), "--host", "127.0.0.1", "--workers", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while _call(f"{base}/api/v2/monitor/health")[0] != 200:
            assert server.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the api-server did not answer"
            time.sleep(0.5)
        # unauthenticated: refused, pages and API alike
        assert _call(f"{base}/dispatch/api/todo")[0] == 401
        status, page = _call(f"{base}/dispatch/todo")
        assert status == 401 and "Log in to Airflow" in page
        assert _call(f"{base}/dispatch/api/todo", token="forged.jwt.token")[0] == 401
        # logged in through the simple auth manager: its JWT lists the to-do rows
        status, body = _call(f"{base}/auth/token", body={"username": "claire", "password": "claire-pw"})
        assert status == 201, body
        token = json.loads(body)["access_token"]
        status, body = _call(f"{base}/dispatch/api/todo", token=token)
        assert status == 200, body
        assert sorted(r["invoice_number"] for r in json.loads(body)) == [
            "F-2026-001", "F-2026-002", "F-2026-003", "F-2026-004", "F-2026-005", "F-2026-006",
        ]  # fmt: skip
        status, body = _call(f"{base}/dispatch/api/todo/ignore", token=token, body={"action_ids": ["act_x"]})
        assert status == 404 and "nothing was changed" in body
        # the Airflow UI's session cookie opens the pages; a change from it needs the CSRF token
        status, page = _call(f"{base}/dispatch/todo", cookie=token)
        assert status == 200 and "Select F-2026-002" in page
        assert "Signed in as <strong>claire</strong>" in page
        action = world.action("i1")["action_id"]  # type: ignore[index]
        status, _ = _call(f"{base}/dispatch/api/todo/ignore", cookie=token, body={"action_ids": [action]})
        assert status == 403 and world.action("i1")["status"] == "manual"  # type: ignore[index]
        status, body = _call(f"{base}/dispatch/api/todo/ignore", token=token, body={"action_ids": [action]})
        assert status == 200, body
        assert [(e["event"], e["actor"]) for e in world.events("i1")][-1] == ("ignored", "claire")
        # the navigation entries are registered
        status, body = _call(f"{base}/api/v2/plugins", token=token)
        assert status == 200, body
        plugin = next(p for p in json.loads(body)["plugins"] if p["name"] == "invoice_dispatch")
        assert [(v["name"], v["href"]) for v in plugin["external_views"]] == [
            ("To do › Invoicing", "dispatch/todo"),
            ("Invoices", "dispatch/invoices"),
            ("Invoice runs", "dispatch/runs"),
        ]
        assert [a["url_prefix"] for a in plugin["fastapi_apps"]] == ["/dispatch"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
