"""``dispatch web`` as a process: the token opens a session, nothing opens without it, and a
state-changing request without its CSRF token is refused and changes nothing."""

from __future__ import annotations

import http.cookiejar
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.web.conftest import ROOT


def _init_db(tmp: Path) -> dict[str, str]:
    env = {
        "DISPATCH_DB_URL": f"sqlite:///{tmp / 'dispatch.db'}",
        "ACCOUNTING_DB_URL": f"sqlite:///{tmp / 'accounting.db'}",
        "DISPATCH_OUTBOX_DIR": str(tmp / "outbox"),
        "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}",
    }
    subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "db", "init"], env={**env, "PATH": ""}, check=True, cwd=ROOT
    )
    return env


def _status(opener, url: str, data: dict | None = None) -> int:  # type: ignore[no-untyped-def]
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    try:
        with opener.open(urllib.request.Request(url, data=body), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_token_opens_a_session_and_post_without_csrf_is_refused(web_server, tmp_path: Path) -> None:
    server = web_server({**_init_db(tmp_path), "DISPATCH_WEB_TOKEN": "s3cret-token-for-test"})
    assert server.token == "s3cret-token-for-test"
    anonymous = urllib.request.build_opener()
    assert _status(anonymous, f"{server.base_url}/dispatch/todo") == 401
    assert _status(anonymous, f"{server.base_url}/dispatch/todo?token=wrong") == 401
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    assert _status(browser, server.url) == 200  # 303 to the same page without the token
    assert [c.name for c in jar] == ["dispatch_session"]
    assert _status(browser, f"{server.base_url}/dispatch/todo") == 200
    assert _status(browser, f"{server.base_url}/dispatch/todo/ignore", {"selected": "a1"}) == 403


@pytest.mark.parametrize("port", ["70000", "x"])
def test_bad_port_is_one_line_exit_2(port: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dispatch.cli", "web", "--port", port],
        env={"PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}", "PATH": ""},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2


def test_make_demo_ends_with_the_url_that_opens_the_pages(capsys: pytest.CaptureFixture[str]) -> None:
    from dispatch.config.settings import load_settings
    from dispatch.devtools.airflow_demo import print_pages

    print_pages(load_settings({"DISPATCH_WEB_TOKEN": "demo-token"}))
    out = capsys.readouterr().out
    assert "DISPATCH_WEB_TOKEN=demo-token .venv/bin/dispatch web" in out
    assert "http://127.0.0.1:8765/dispatch/todo?token=demo-token" in out
