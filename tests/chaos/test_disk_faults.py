"""Disk faults for the outbox: a full disk (a 256 KiB tmpfs) and a read-only one. No action
is ever recorded sent without its complete file, no file exists for an action not sent, and
once the disk is fixed the next run sends the rest, each once.

Needs to mount a tmpfs (root on Linux); skipped where that is not allowed.
"""

from __future__ import annotations

import email
import email.policy
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.builders import World, open_world
from tests.chaos.harness import add_invoices, first_run, next_weekday_run, record, run_env, run_to_end, set_up


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "outbox"
    mnt.mkdir()
    try:
        cmd = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]
        subprocess.run(cmd, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def remount(mnt: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mnt)], check=True)


def outbox_check(w: World, outbox: Path) -> dict[str, int]:
    """Sent actions against the files: every sent one has its whole file, and only they do."""
    with w.dispatch.connect() as conn:
        rows = conn.execute(sa.text("SELECT action_id, status FROM invoice_actions")).all()
    sent = {r.action_id for r in rows if r.status == "sent"}
    files = {p.stem: p for p in (outbox / "email").glob("act_*.eml")}
    complete = 0
    for action_id in sent & files.keys():
        msg = email.message_from_bytes(files[action_id].read_bytes(), policy=email.policy.default)
        complete += bool(msg["Subject"]) and msg.get_body(("plain",)) is not None
    return {
        "actions": len(rows),
        "sent": len(sent),
        "sent without its file": len(sent - files.keys()),
        "sent with a complete file": complete,
        "files of actions not sent": len(files.keys() - sent),
        "temporary files left": len([p for p in (outbox / "email").glob(".tmp-*")]),
    }


def test_a_full_outbox_disk_records_nothing_sent_without_its_file(tmp_path: Path, tmpfs: Path) -> None:
    with open_world("sqlite", tmp_path) as w:
        set_up(w)
        at = first_run()
        add_invoices(w, 250, issued=at.date(), updated=at.replace(hour=0), prefix="d")
        env = run_env(w, None, DISPATCH_OUTBOX_DIR=str(tmpfs))
        log = tmp_path / "runs.log"
        code_full = run_to_end(env, at, log)
        full = outbox_check(w, tmpfs)
        assert code_full == 0, log.read_text()[-3000:]
        assert 0 < full["sent"] < 250  # the disk filled up on the way
        assert full["sent without its file"] == 0 and full["files of actions not sent"] == 0
        assert full["sent with a complete file"] == full["sent"] and full["temporary files left"] == 0

        remount(tmpfs, "size=16m")  # room again: the next run sends the rest
        assert run_to_end(env, next_weekday_run(at), log) == 0, log.read_text()[-3000:]
        fixed = outbox_check(w, tmpfs)
    record("outbox disk full (256 KiB tmpfs)", {"while full": full, "after": fixed})
    assert fixed["sent"] == 250 and fixed["sent with a complete file"] == 250
    assert fixed["sent without its file"] == 0 and fixed["files of actions not sent"] == 0


def test_a_read_only_outbox_stops_the_run_and_touches_no_action(tmp_path: Path, tmpfs: Path) -> None:
    with open_world("sqlite", tmp_path) as w:
        set_up(w)
        at = first_run()
        add_invoices(w, 50, issued=at.date(), updated=at.replace(hour=0), prefix="r")
        env = run_env(w, None, DISPATCH_OUTBOX_DIR=str(tmpfs))
        log = tmp_path / "runs.log"
        remount(tmpfs, "ro")
        code = run_to_end(env, at, log)
        read_only = outbox_check(w, tmpfs)
        with w.dispatch.connect() as conn:
            by_status = sa.text("SELECT status, count(*) FROM invoice_actions GROUP BY status")
            statuses = dict(conn.execute(by_status).all())
        assert code == 1, log.read_text()[-3000:]
        assert "not usable" in log.read_text()  # loud, with the cause
        assert statuses == {"scheduled": 50} and read_only["sent"] == 0

        remount(tmpfs, "rw")
        assert run_to_end(env, at, log) == 0, log.read_text()[-3000:]
        fixed = outbox_check(w, tmpfs)
    record("outbox read-only", {"exit code": code, "statuses while read-only": statuses, "after": fixed})
    assert fixed["sent"] == 50 == fixed["sent with a complete file"]
    assert fixed["sent without its file"] == 0 and fixed["files of actions not sent"] == 0
