"""Fixtures of the web tests: a REAL ``dispatch web`` process on a database of the test's.

``web_server`` is the fixture other test packages build on (the providers' webhooks too):
keep its name and its call stable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
URL_LINE = re.compile(r"dispatch web: (?P<url>http://\S+/dispatch/todo\?token=(?P<token>\S+))")
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class WebServer:
    """A running ``dispatch web``: ``base_url`` is ``http://127.0.0.1:PORT`` (no trailing
    slash; pages are under ``/dispatch``), ``token`` the one it printed (``url`` is the whole
    printed link), ``user`` the actor its events are recorded as, ``env`` its environment."""

    base_url: str
    token: str
    url: str
    user: str
    env: Mapping[str, str]
    process: subprocess.Popen

    def output(self) -> str:
        """What the process wrote to stderr so far (for a failing test's message)."""
        return Path(self.env["_WEB_LOG"]).read_text(errors="replace")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def start_web(env: Mapping[str, str], tmp: Path, user: str = "web-tester") -> WebServer:
    """Start ``dispatch web --port 0 --user USER`` with ``env`` over the test's environment
    and wait until it answers HTTP; the caller stops it with :func:`stop_web`."""
    log = tmp / f"dispatch-web-{time.monotonic_ns()}.log"
    full = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "plugins"), str(ROOT)]),
        **env,
        "_WEB_LOG": str(log),
    }
    cmd = [sys.executable, "-m", "dispatch.cli", "web", "--host", "127.0.0.1", "--port", "0", "--user", user]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = proc.stdout.readline()  # the process prints its URL once its socket listens
    match = URL_LINE.search(line)
    if match is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"dispatch web printed {line!r}, not its URL; stderr:\n{log.read_text()}")
    url = match["url"]
    base = url.split("/dispatch/", 1)[0]
    while not _answers(f"{base}/dispatch/todo"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"dispatch web did not answer at {base}; stderr:\n{log.read_text()}")
        time.sleep(0.1)
    return WebServer(base, match["token"], url, user, full, proc)


def stop_web(server: WebServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[Callable[..., WebServer]]:
    """A factory: ``web_server(env, user="web-tester") -> WebServer``.

    ``env`` holds the process's settings over the test's own environment — at least
    ``DISPATCH_DB_URL`` (an initialised dispatch database), usually ``ACCOUNTING_DB_URL``,
    ``DISPATCH_OUTBOX_DIR`` and ``DISPATCH_PDF_ROOT``; ``DISPATCH_WEB_TOKEN`` fixes the token
    (else the process picks one and the fixture reads it from the printed URL). ``user`` is
    the ``--user`` its events are recorded as. The call returns once the server answers HTTP;
    every server started is stopped at the end of the test.
    """
    started: list[WebServer] = []

    def start(env: Mapping[str, str], user: str = "web-tester") -> WebServer:
        server = start_web(env, tmp_path, user)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_web(server)


# --- a small world with a to-do list ---------------------------------------------------------

T1 = "2026-12-02T05:00Z"


def build_todo_world(w) -> None:  # type: ignore[no-untyped-def]
    """Two owners' manual actions (a manual plan each), one customer without e-mail
    (no_contact, owned by alice), one automatic e-mail that goes out: run on T1."""
    from tests.builders import World

    assert isinstance(w, World)
    w.org().user("u_bob")
    w.plan("p_alice", automatic=False, owner="u_alice").plan("p_bob", automatic=False, owner="u_bob")
    w.plan("p_mail")
    w.customer("c_a1", plan="p_alice", name="Alpha <b>One</b>").customer("c_a2", plan="p_alice")
    w.customer("c_a3", plan="p_alice").customer("c_b1", plan="p_bob").customer("c_b2", plan="p_bob")
    w.customer("c_nomail", email=None, plan="p_mail").customer("c_ok", plan="p_mail")
    w.load_config()
    for n, cust in enumerate(("c_a1", "c_a2", "c_a3", "c_b1", "c_b2", "c_nomail", "c_ok"), start=1):
        w.invoice(f"i{n}", cust, number=f"F-2026-{n:03d}")
    w.run(T1)


@pytest.fixture
def todo_world(backend: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    from tests.builders import open_world

    with open_world(backend, tmp_path) as world:
        build_todo_world(world)
        yield world


# --- the browser ------------------------------------------------------------------------------

SCREENSHOTS = ROOT / "var" / "test-screenshots"


def chromium_path() -> str | None:
    import shutil

    return (
        os.environ.get("DISPATCH_TEST_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="package")
def browser():  # type: ignore[no-untyped-def]
    """Debian's headless chromium driven by Playwright (its own browser download cannot reach
    the network). Missing: skipped on a developer's machine, a failure when CI=true.

    Package-scoped: Playwright's sync API keeps an event loop running in the main thread while
    it is open, and tests of other packages (the webhooks' burst) run their own ``asyncio.run``."""
    path = chromium_path()
    if path is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is required when CI=true (.ci/run installs it with apt)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright  # requirements-dev.txt: never skipped

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture
def page(browser, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A fresh browser tab; on failure its screenshot goes to var/test-screenshots/."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    yield tab
    failed = getattr(request.node, "report_call", None)
    if failed is not None and failed.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    context.close()
