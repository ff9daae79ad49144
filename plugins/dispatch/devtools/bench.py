"""``make bench``: every performance target of the pipeline, side by side, in one run.

For each backend (PostgreSQL by default), on synthetic invoices (every customer on an e-mail
plan with a 3-day delay, so the first two days measure the data stages and nothing is sent):

* FIRST RUN over N invoices imported at once, against the COPY limit of the same rows
  (:func:`dispatch.devtools.bench_floor.copy_limit`, PostgreSQL only);
* the INCREMENTAL DAY (``--new`` invoices over that history, the next weekday) against the
  same rows in databases with no history;
* the PEAK RSS of the run at N and at 2N (each run is ``run_pipeline`` in a process of its
  own, so the high-water mark is the run's, not the data generator's);
* DISPATCH of e-mails into the outbox against its floor (the same e-mails rendered, built
  with the standard library and written durably, no database), and letters likewise;
* SENDGRID at 0 ms and 50 ms latency, and the Airflow SendGrid provider's ``send_email`` loop
  (:mod:`dispatch.devtools.bench_email`).

Then a chart (``var/bench/scaling-<backend>.png``) of first-run time and peak memory against
N. Each run is :func:`dispatch.runtime.pipeline.run_pipeline` itself with a ``measure`` hook timing
every stage, so what is timed is the library's code and nothing written for the benchmark.
The ratios are measured in the same run on the same machine, which is what makes them
comparable on a shared, noisy machine; the table says which targets they meet.

Memory: the peak RSS of each stage (Linux lets a process reset its RSS high-water mark, at no
cost) and the run process's high-water mark (``VmHWM``).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dispatch.config.load import load_config_file
from dispatch.config.settings import DEFAULT_SEND_CONCURRENCY, Settings, load_settings
from dispatch.devtools import bench_email
from dispatch.devtools.bench_data import (
    EMAIL_NOW_PLANS,
    LETTER_NOW_PLANS,
    SCALE_CUSTOMER_RATIO,
    SCALE_PLANS,
    append_new_invoices,
    copy_accounting,
    generate_bench,
)
from dispatch.devtools.bench_email import SendGridFigures
from dispatch.devtools.bench_floor import (
    CopyLimit,
    Floor,
    copy_limit,
    email_floor,
    letter_floor,
    sent_messages,
)
from dispatch.paths import resolve
from dispatch.runtime.pipeline import STAGES as STAGES  # the table rows, re-exported
from dispatch.runtime.pipeline import Engines, run_pipeline
from dispatch.storage.engine import make_engine
from dispatch.storage.migrate import upgrade

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PG_URL_ENV = "DISPATCH_BENCH_PG_URL"
#: The first run's day: a Tuesday with no public holiday in FR, US or JP that day or the next,
#: fixed so that two benchmarks of the same N handle the same rows.
DEFAULT_FIRST_DAY = dt.date(2025, 3, 11)
RUN_TIME = dt.time(5, 0)
NEW_INVOICES_FRACTION = 0.01
OUTBOX_CHANNELS = {"email": "e-mails", "sms": "SMS", "letter": "letters"}
MIB = 1024 * 1024


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class StageFigures:
    stage: str
    rows: int
    seconds: float
    cpu_seconds: float  # this process's CPU time: the wall time minus waits (disk, database, other load)
    py_peak_bytes: int | None  # tracemalloc peak above the stage's start; None when not traced
    peak_rss_bytes: int | None  # the process's RSS high-water mark during the stage

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class RunFigures:
    backend: str
    label: str
    as_of: dt.datetime
    invoices_in_source: int
    stages: list[StageFigures] = field(default_factory=list)
    dispatch_events: Counter = field(default_factory=Counter)
    batches: int = 0
    outbox_written: dict[str, int] = field(default_factory=dict)
    max_rss_bytes: int = 0
    load_before: float | None = None  # 1-minute load average when the run started
    load_after: float | None = None

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def invoices_read(self) -> int:
        return self.stages[0].rows if self.stages else 0


@dataclass
class BackendFigures:
    backend: str
    generation_seconds: float
    migrate_seconds: float
    config_seconds: float
    append_seconds: float = 0.0
    appended: int = 0
    runs: list[RunFigures] = field(default_factory=list)


def max_rss_bytes() -> int:
    """The process's peak resident set size.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's memory.
    Not ``getrusage``: Linux carries ``ru_maxrss`` across ``exec``, so a run started by the
    benchmark reported the benchmark's own peak at the fork — the generator's data, which
    grows with N — as the run's. Elsewhere ``ru_maxrss`` (bytes on macOS)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def load_average() -> float | None:
    """The 1-minute load average: figures taken while other processes compete for the CPUs
    are slower, and the table says so."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


class RssPeak:
    """Peak RSS of one stage: Linux lets a process reset its high-water mark (``clear_refs``
    5), which costs nothing, unlike tracing allocations. Resetting also resets ``VmHWM``,
    so the process-wide peak is carried across resets here."""

    CLEAR_REFS = Path("/proc/self/clear_refs")
    STATUS = Path("/proc/self/status")

    def __init__(self) -> None:
        self.process_peak = max_rss_bytes()
        self.available = self._reset()

    def _reset(self) -> bool:
        try:
            self.CLEAR_REFS.write_text("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        self.process_peak = max(self.process_peak, max_rss_bytes())
        if self.available:
            self._reset()

    def stage_peak(self) -> int | None:
        """The high-water mark since :meth:`start`; None where it cannot be reset."""
        peak = max_rss_bytes()
        self.process_peak = max(self.process_peak, peak)
        return peak if self.available else None

    def process(self) -> int:
        return max(self.process_peak, max_rss_bytes())


class StageTimer:
    """Times a stage (wall clock) and measures its memory; optionally profiles it."""

    def __init__(self, trace_memory: bool, profile_dir: Path | None) -> None:
        self.trace_memory = trace_memory
        self.profile_dir = profile_dir
        self.rss = RssPeak()

    def measure(self, name: str, tag: str, fn: Callable[[], Any]) -> tuple[Any, StageFigures]:
        """Run ``fn``; returns its result and the stage's figures (rows still 0)."""
        profiler = cProfile.Profile() if self.profile_dir is not None else None
        base = 0
        if self.trace_memory:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        self.rss.start()
        cpu_started = time.process_time()
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            result = fn()
        finally:
            if profiler is not None:
                profiler.disable()
        seconds = time.perf_counter() - started
        figures = StageFigures(
            name,
            0,
            seconds,
            time.process_time() - cpu_started,
            tracemalloc.get_traced_memory()[1] - base if self.trace_memory else None,
            self.rss.stage_peak(),
        )
        if profiler is not None and self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(self.profile_dir / f"{tag}-{name.replace(' ', '_')}.prof")
        return result, figures


# --- one run: the stages of run_pipeline, one by one -------------------------------------------


def count_outbox(outbox_dir: Path) -> dict[str, int]:
    """Message files per channel (temporary files of an interrupted write excluded)."""
    return {
        ch: sum(1 for p in (outbox_dir / ch).iterdir() if p.is_file() and not p.name.startswith("."))
        if (outbox_dir / ch).is_dir()
        else 0
        for ch in OUTBOX_CHANNELS
    }


#: What each stage "handled", for the rows column (see docs/benchmark.md).
ROWS: dict[str, Callable[[Any], int]] = {
    "extract": lambda s: s.read,
    "tag": lambda s: s.to_send + s.not_required + s.cancelled,
    "resolve templates": lambda s: s.created,
    "compute due": lambda s: s.due + s.not_due + s.entered_todo,
    "dispatch": lambda batches: sum(b.claimed for b in batches),
    "write back": lambda counts: int(counts["synced"]),
    "pull bounces": lambda summary: int(summary.get("bounced") or 0),
}


def timed_run(
    settings: Settings, engines: Engines, as_of: dt.datetime, timer: StageTimer, figures: RunFigures
) -> RunFigures:
    """:func:`dispatch.runtime.pipeline.run_pipeline` itself, each stage timed on its own."""
    tag = f"{figures.backend}-{figures.label}"
    before = count_outbox(settings.outbox_dir)
    results: dict[str, Any] = {}

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        result, stage_figures = timer.measure(name, tag, fn)
        stage_figures.rows = ROWS[name](result)
        figures.stages.append(stage_figures)
        results[name] = result
        return result

    figures.load_before = load_average()
    run_pipeline(
        settings,
        as_of,
        run_id=f"bench__{figures.label}__{as_of:%Y%m%dT%H%M%SZ}",
        engines=engines,
        measure=measure,
    )
    figures.batches = results["compute due"].batches
    for b in results["dispatch"]:
        figures.dispatch_events.update(b.events)
    after = count_outbox(settings.outbox_dir)
    figures.outbox_written = {ch: after[ch] - before[ch] for ch in OUTBOX_CHANNELS}
    figures.max_rss_bytes = timer.rss.process()
    figures.load_after = load_average()
    return figures


# --- databases ---------------------------------------------------------------------------------


@contextmanager
def sqlite_databases(workdir: Path) -> Iterator[tuple[str, str]]:
    """Fresh SQLite files under ``workdir/sqlite`` (left there afterwards, for inspection)."""
    folder = workdir / "sqlite"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dispatch.db", "accounting.db"):
        for suffix in ("", "-wal", "-shm", "-journal"):
            (folder / (name + suffix)).unlink(missing_ok=True)
    yield f"sqlite:///{folder / 'dispatch.db'}", f"sqlite:///{folder / 'accounting.db'}"


@contextmanager
def postgres_databases(admin_url: str) -> Iterator[tuple[str, str]]:
    """Two throwaway databases, dropped on the way out whatever happened."""
    suffix = uuid.uuid4().hex[:10]
    names = [f"bench_dispatch_{suffix}", f"bench_accounting_{suffix}"]
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5})
    created: list[str] = []
    try:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        base = make_url(admin_url)
        yield tuple(base.set(database=n).render_as_string(hide_password=False) for n in names)  # type: ignore[misc]
    finally:
        with admin.connect() as conn:
            for name in created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# --- one run in a process of its own ------------------------------------------------------------


@dataclass
class RunSpec:
    backend: str
    label: str
    dispatch_url: str
    accounting_url: str
    outbox: str
    as_of: str
    invoices_in_source: int
    batch_size: int | None = None


def _figures_to_json(fig: RunFigures) -> dict:
    return {
        "stages": [s.__dict__ for s in fig.stages],
        "dispatch_events": dict(fig.dispatch_events),
        "batches": fig.batches,
        "outbox_written": fig.outbox_written,
        "max_rss_bytes": fig.max_rss_bytes,
        "load_before": fig.load_before,
        "load_after": fig.load_after,
    }


def child_main(spec_json: str) -> int:
    """``--child-run SPEC``: one timed run; prints its figures as one JSON line."""
    logging.disable(logging.INFO)  # the stages' progress lines would mix with the JSON
    spec = RunSpec(**json.loads(spec_json))
    environ = {
        "DISPATCH_DB_URL": spec.dispatch_url,
        "ACCOUNTING_DB_URL": spec.accounting_url,
        "DISPATCH_OUTBOX_DIR": spec.outbox,
    }
    if spec.batch_size:
        environ["DISPATCH_BATCH_SIZE"] = str(spec.batch_size)
    settings = load_settings(environ=environ)
    engines = Engines.from_settings(settings)
    as_of = dt.datetime.fromisoformat(spec.as_of)
    try:
        fig = timed_run(
            settings,
            engines,
            as_of,
            StageTimer(False, None),
            RunFigures(spec.backend, spec.label, as_of, spec.invoices_in_source),
        )
    finally:
        engines.dispatch.dispose()
        engines.accounting.dispose()
    # timed_run set the process's peak across the stages' resets of the high-water mark
    print(json.dumps(_figures_to_json(fig)))
    return 0


def checkpoint(backend: str, url: str) -> None:
    """PostgreSQL: write every dirty page out before a timed part, so that no part pays for
    a checkpoint the previous part's writes triggered (the first run's index builds write
    gigabytes of WAL). Every timed part starts the same way. (Measured: the COPY limit after
    a first run took 17.7 s without it and 16.4 s with it, so that was not what made the
    limit slower than in earlier rounds.)"""
    if backend != "postgres":
        return
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("CHECKPOINT")
    finally:
        engine.dispose()


def run_in_child(spec: RunSpec) -> RunFigures:
    """``run_pipeline`` in a fresh interpreter: its peak RSS is the run's alone."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(resolve("plugins")), str(resolve(".")), env.get("PYTHONPATH", "")) if p
    )
    done = subprocess.run(
        [sys.executable, "-m", "dispatch.devtools.bench", "--child-run", json.dumps(spec.__dict__)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{spec.label} run failed:\n{done.stderr[-4000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    fig = RunFigures(spec.backend, spec.label, dt.datetime.fromisoformat(spec.as_of), spec.invoices_in_source)
    fig.stages = [StageFigures(**s) for s in data["stages"]]
    fig.dispatch_events = Counter(data["dispatch_events"])
    fig.batches = data["batches"]
    fig.outbox_written = data["outbox_written"]
    fig.max_rss_bytes = data["max_rss_bytes"]
    fig.load_before, fig.load_after = data["load_before"], data["load_after"]
    return fig


# --- the scale scenario: first run, COPY limit, incremental day, no history --------------------


@dataclass
class ScalePoint:
    backend: str
    invoices: int
    generation_seconds: float = 0.0
    first: RunFigures | None = None
    limit: CopyLimit | None = None
    new: int = 0
    incremental: RunFigures | None = None
    no_history: RunFigures | None = None

    @property
    def peak_rss(self) -> int:
        return self.first.max_rss_bytes if self.first else 0


def overnight(*urls: str) -> None:
    """What autovacuum does between two weekday runs: ``VACUUM ANALYZE`` (dead index entries
    of the rows the first run moved are cleaned, statistics know the new volume). Without
    it the next day would be timed seconds after a bulk import of N rows, which no daily job
    lives through."""
    for url in urls:
        engine = sa.create_engine(make_url(url), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
        finally:
            engine.dispose()


def next_weekday(day: dt.date) -> dt.date:
    return pd.Timestamp(np.busday_offset(np.datetime64(day), 1, roll="forward")).date()


def _databases(backend: str, folder: Path, pg_admin: str) -> AbstractContextManager[tuple[str, str]]:
    return sqlite_databases(folder) if backend == "sqlite" else postgres_databases(pg_admin)


def _prepare(dispatch_url: str, accounting_url: str, config_path: Path, enabled_at: dt.datetime) -> None:
    engine = make_engine(dispatch_url)
    try:
        upgrade(engine)
        config_engine = make_engine(accounting_url, readonly=True)
        try:
            load_config_file(config_path, engine, accounting_engine=config_engine, now=enabled_at)
        finally:
            config_engine.dispose()
    finally:
        engine.dispose()


def scale_point(
    backend: str,
    n: int,
    *,
    new: int,
    first_day: dt.date,
    workdir: Path,
    pg_admin: str,
    full: bool,
    say: Callable[[str], None],
) -> ScalePoint:
    """Generate N invoices, time the first run (and, when ``full``, the COPY limit, the
    incremental day and the same day with no history)."""
    point = ScalePoint(backend, n)
    base = workdir / backend / f"n{n}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    first = dt.datetime.combine(first_day, RUN_TIME, dt.UTC)
    second = dt.datetime.combine(next_weekday(first_day), RUN_TIME, dt.UTC)
    with _databases(backend, base / "history", pg_admin) as (dispatch_url, accounting_url):
        say(f"[{backend}] generating {n:,} invoices …")
        started = time.perf_counter()
        data = generate_bench(
            accounting_url,
            n,
            start=first_day,
            config_out=base / "config.yaml",
            plans=SCALE_PLANS,
            customer_ratio=SCALE_CUSTOMER_RATIO,
            issue_from_days=0,
            issue_days=5,
        )
        point.generation_seconds = time.perf_counter() - started
        _prepare(dispatch_url, accounting_url, base / "config.yaml", data.enabled_at)
        checkpoint(backend, dispatch_url)
        say(f"[{backend}] N={n:,}: first run as of {first:%a %Y-%m-%d %H:%MZ} …")
        point.first = run_in_child(
            RunSpec(
                backend, "first", dispatch_url, accounting_url, str(base / "outbox"), first.isoformat(), n
            )
        )
        if backend == "postgres" and full:
            say(f"[{backend}] N={n:,}: COPY limit …")
            checkpoint(backend, dispatch_url)
            point.limit = copy_limit(dispatch_url, accounting_url)
        if not full:
            return point
        if backend == "postgres":
            overnight(dispatch_url, accounting_url)
        new_at = dt.datetime.combine(second.date(), dt.time(0), dt.UTC)
        point.new = append_new_invoices(accounting_url, new / n, updated_at=new_at, base=n)
        checkpoint(backend, dispatch_url)
        say(f"[{backend}] N={n:,}: incremental day ({point.new:,} new) as of {second:%a %Y-%m-%d %H:%MZ} …")
        point.incremental = run_in_child(
            RunSpec(backend, "incremental", dispatch_url, accounting_url, str(base / "outbox"),
                    second.isoformat(), n + point.new)
        )  # fmt: skip
        with _databases(backend, base / "alone", pg_admin) as (alone_dispatch, alone_accounting):
            copy_accounting(accounting_url, alone_accounting, new_at - dt.timedelta(hours=1))
            _prepare(alone_dispatch, alone_accounting, base / "config.yaml", data.enabled_at)
            checkpoint(backend, alone_dispatch)
            say(f"[{backend}] N={n:,}: the same {point.new:,} invoices with no history …")
            point.no_history = run_in_child(
                RunSpec(backend, "no history", alone_dispatch, alone_accounting, str(base / "outbox-alone"),
                        second.isoformat(), point.new)
            )  # fmt: skip
    return point


# --- dispatch against its floor -------------------------------------------------------------------


@dataclass
class DispatchPoint:
    channel: str
    sent: int
    seconds: float
    floor: Floor
    direct_floor: Floor | None = None  # e-mails: the same floor built with the outbox's writer

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else float("nan")


def dispatch_point(
    backend: str,
    channel: str,
    n: int,
    *,
    first_day: dt.date,
    workdir: Path,
    pg_admin: str,
    say: Callable[[str], None],
) -> DispatchPoint:
    """N invoices all due at once on one channel: the dispatch stage's rate, then the floor
    of the same messages (``bench_floor``)."""
    base = workdir / backend / f"dispatch-{channel}"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    plans = EMAIL_NOW_PLANS if channel == "email" else LETTER_NOW_PLANS
    first = dt.datetime.combine(first_day, RUN_TIME, dt.UTC)
    with _databases(backend, base / "db", pg_admin) as (dispatch_url, accounting_url):
        data = generate_bench(
            accounting_url, n, start=first_day, config_out=base / "config.yaml", plans=plans,
            issue_from_days=-5, issue_days=5,
        )  # fmt: skip
        _prepare(dispatch_url, accounting_url, base / "config.yaml", data.enabled_at)
        settings = load_settings(
            environ={
                "DISPATCH_DB_URL": dispatch_url,
                "ACCOUNTING_DB_URL": accounting_url,
                "DISPATCH_OUTBOX_DIR": str(base / "outbox"),
            }
        )
        engines = Engines.from_settings(settings)
        say(f"[{backend}] dispatching {n:,} {OUTBOX_CHANNELS[channel]} into the outbox …")
        try:
            fig = timed_run(settings, engines, first, StageTimer(False, None),
                            RunFigures(backend, f"dispatch {channel}", first, n))  # fmt: skip
        finally:
            engines.dispatch.dispose()
            engines.accounting.dispose()
        stage = next(s for s in fig.stages if s.stage == "dispatch")
        sent = sent_messages(dispatch_url, channel)
        say(f"[{backend}] the floor of the same {len(sent):,} {OUTBOX_CHANNELS[channel]} …")
        floor = (email_floor if channel == "email" else letter_floor)(sent, base / "floor")
        direct = email_floor(sent, base / "floor-direct", direct=True) if channel == "email" else None
    return DispatchPoint(channel, fig.outbox_written.get(channel, 0), stage.seconds, floor, direct)


# --- printing ----------------------------------------------------------------------------------


def _mib(n: int | None, missing: str = "n/a") -> str:
    return missing if n is None else f"{n / MIB:,.1f}"


def _load(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    body = [fmt(r) for r in rows]
    return "\n".join([fmt(headers), line, *body[:-1], line, body[-1]])


def format_run(run: RunFigures) -> str:
    headers = ["stage", "rows", "seconds", "cpu s", "invoices/s", "peak RSS MiB", "py peak MiB"]
    rows = [
        [s.stage, f"{s.rows:,}", f"{s.seconds:.2f}", f"{s.cpu_seconds:.2f}", f"{s.per_second:,.0f}",
         _mib(s.peak_rss_bytes), _mib(s.py_peak_bytes, "off")]
        for s in run.stages
    ]  # fmt: skip
    py_peaks = [s.py_peak_bytes for s in run.stages if s.py_peak_bytes is not None]
    rss_peaks = [s.peak_rss_bytes for s in run.stages if s.peak_rss_bytes is not None]
    total_rate = run.invoices_read / run.seconds if run.seconds > 0 else float("nan")
    cpu = sum(s.cpu_seconds for s in run.stages)
    rows.append(
        ["total", f"{run.invoices_read:,}", f"{run.seconds:.2f}", f"{cpu:.2f}", f"{total_rate:,.0f}",
         _mib(max(rss_peaks) if rss_peaks else None), _mib(max(py_peaks) if py_peaks else None, "off")]
    )  # fmt: skip
    written = sum(run.outbox_written.values())
    detail = ", ".join(f"{name} {run.outbox_written[ch]:,}" for ch, name in OUTBOX_CHANNELS.items())
    events = ", ".join(f"{k} {v:,}" for k, v in sorted(run.dispatch_events.items())) or "none"
    return "\n".join(
        [
            f"{run.backend} · {run.label} run as of {run.as_of:%a %Y-%m-%d %H:%MZ} "
            f"({run.invoices_in_source:,} invoices in the source)",
            _table(headers, rows),
            f"dispatch: {run.batches} batches; events {events}",
            f"outbox: {written:,} messages written ({detail}); dispatch reported "
            f"{run.dispatch_events.get('sent', 0):,} sent",
            f"process max RSS (VmHWM) at the end of the run: {_mib(run.max_rss_bytes)} MiB; "
            f"load average {_load(run.load_before)} at the start, {_load(run.load_after)} at the end "
            f"({os.cpu_count()} CPUs)",
            "  (the dispatch stage is dominated by rendering and writing one outbox file per message)",
        ]
    )


def format_backend(fig: BackendFigures, n_invoices: int) -> str:
    return "\n\n".join(
        [
            f"== {fig.backend}: data generation {fig.generation_seconds:.2f} s for {n_invoices:,} invoices "
            f"({n_invoices / fig.generation_seconds:,.0f}/s); dispatch schema {fig.migrate_seconds:.2f} s; "
            f"config load {fig.config_seconds:.2f} s; next day's {fig.appended:,} new invoices "
            f"{fig.append_seconds:.2f} s",
            *(format_run(r) for r in fig.runs),
        ]
    )


# --- the targets, side by side --------------------------------------------------------------------

GIB = 1024 * MIB


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def target_rows(
    point: ScalePoint | None,
    double: ScalePoint | None,
    emails: DispatchPoint | None,
    letters: DispatchPoint | None,
    sendgrid: SendGridFigures | None,
) -> list[list[str]]:
    """(what, figure, reference, ratio, target, met) for every target."""
    rows: list[list[str]] = []

    def add(what: str, fig: str, ref: str, ratio: float | None, target: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("yes" if ok else "NO")
        rows.append([what, fig, ref, "n/a" if ratio is None else f"{ratio:.2f}x", target, verdict])

    data_stages = ("extract", "tag", "resolve templates", "compute due", "write back")
    n = point.invoices if point else 0
    if point and point.first:
        first_s = point.first.seconds
        limit_s = point.limit.seconds if point.limit else None
        r = _ratio(first_s, limit_s)
        add(f"first run, {n:,} invoices", f"{first_s:.1f} s", "n/a" if limit_s is None else
            f"COPY limit {limit_s:.1f} s", r, "<= 5x", None if r is None else r <= 5)  # fmt: skip
    if point and point.incremental and point.no_history:
        inc, alone = point.incremental.seconds, point.no_history.seconds
        r = _ratio(inc, alone)
        add(f"incremental day, {point.new:,} new over {n:,}", f"{inc:.2f} s",
            f"same rows, no history {alone:.2f} s", r, "<= 1.5x", r is not None and r <= 1.5)  # fmt: skip
        stages_inc = sum(s.seconds for s in point.incremental.stages if s.stage in data_stages[1:])
        stages_alone = sum(s.seconds for s in point.no_history.stages if s.stage in data_stages[1:])
        r = _ratio(stages_inc, stages_alone)
        add("  of which tag .. write back (not extract)", f"{stages_inc:.2f} s", f"{stages_alone:.2f} s", r,
            "<= 1.5x", r is not None and r <= 1.5)  # fmt: skip
    if point and point.first:
        rss = point.peak_rss
        add(f"peak RSS of the run at {n:,}", f"{rss / MIB:,.0f} MiB", "1 GiB", rss / GIB, "<= 1 GiB",
            rss <= GIB)  # fmt: skip
    if point and double and double.first and point.first:
        r = _ratio(double.peak_rss, point.peak_rss)
        add(f"peak RSS at {double.invoices:,} vs {n:,}", f"{double.peak_rss / MIB:,.0f} MiB",
            f"{point.peak_rss / MIB:,.0f} MiB", r, "<= 1.10x", r is not None and r <= 1.10)  # fmt: skip
    if emails:
        r = _ratio(emails.per_second, emails.floor.per_second)
        add(f"dispatch, {emails.sent:,} e-mails into the outbox", f"{emails.per_second:,.0f}/s",
            f"floor {emails.floor.per_second:,.0f}/s", r, ">= 0.8x", r is not None and r >= 0.8)  # fmt: skip
        if emails.direct_floor:
            r = _ratio(emails.per_second, emails.direct_floor.per_second)
            add("  the same vs a floor built with the outbox's writer", f"{emails.per_second:,.0f}/s",
                f"direct floor {emails.direct_floor.per_second:,.0f}/s", r, "(measured)", None)  # fmt: skip
    if letters:
        r = _ratio(letters.per_second, letters.floor.per_second)
        add(f"dispatch, {letters.sent:,} letters into the outbox", f"{letters.per_second:,.0f}/s",
            f"PDF floor {letters.floor.per_second:,.0f}/s", r, "(measured)", None)  # fmt: skip
    if sendgrid:
        ms = f"{sendgrid.latency * 1000:.0f} ms"
        add(f"SendGrid at {ms}", f"{sendgrid.at_latency.per_second:,.0f}/s",
            f"at 0 ms {sendgrid.at_zero.per_second:,.0f}/s", sendgrid.latency_ratio, ">= 0.9x",
            sendgrid.latency_ratio >= 0.9)  # fmt: skip
        add(f"SendGrid at {ms} vs Airflow's provider loop", f"{sendgrid.at_latency.per_second:,.0f}/s",
            f"send_email loop {sendgrid.airflow.per_second:,.1f}/s", sendgrid.airflow_ratio, ">= 15x",
            sendgrid.airflow_ratio >= 15)  # fmt: skip
    return rows


def format_targets(backend: str, rows: list[list[str]]) -> str:
    headers = ["target", "figure", "reference", "ratio", "target", "met"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([f"== {backend}: targets, measured in this run", fmt(headers),
                      "  ".join("-" * w for w in widths), *(fmt(r) for r in rows)])  # fmt: skip


def cost_per_million(point: ScalePoint) -> str:
    if not point.first:
        return ""
    per_million = point.first.seconds / point.invoices * 1_000_000
    heaviest = max(point.first.stages, key=lambda s: s.seconds)
    line = (f"first run: {per_million:,.0f} s per million invoices; heaviest stage {heaviest.stage} "
            f"({heaviest.seconds:.1f} s of {point.first.seconds:.1f} s)")  # fmt: skip
    if point.incremental:
        h = max(point.incremental.stages, key=lambda s: s.seconds)
        total = point.incremental.seconds
        line += f"; incremental day's heaviest: {h.stage} ({h.seconds:.2f} s of {total:.2f} s)"
    return line


# --- entry point ---------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError("every size must be at least 1")
    return sizes


PARTS = ("scale", "dispatch", "sendgrid")


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(PARTS)}, got {text!r}")
    return parts


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dispatch.devtools.bench", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--invoices", type=int, default=100_000, help="N, invoices of the first run (default 100000)"
    )
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="postgres")
    p.add_argument(
        "--new", type=int, default=10_000, help="new invoices of the incremental day (default 10000)"
    )
    p.add_argument(
        "--chart",
        type=_sizes,
        default=[100_000, 250_000, 500_000, 1_000_000],
        help="sizes of the chart, comma-separated (default 100000,250000,500000,1000000)",
    )
    p.add_argument("--no-chart", action="store_true", help="skip the chart and its sizes")
    p.add_argument("--dispatch-messages", type=int, default=2000, help="e-mails of the dispatch figure")
    p.add_argument("--letters", type=int, default=200, help="letters of the dispatch figure")
    p.add_argument("--sendgrid-messages", type=int, default=3000, help="e-mails of the SendGrid figures")
    p.add_argument(
        "--workdir", default="var/bench", help="SQLite files, outboxes and the chart (default var/bench)"
    )
    p.add_argument("--first-day", type=dt.date.fromisoformat, default=DEFAULT_FIRST_DAY,
                   help=f"weekday of the first run, at 05:00 UTC (default {DEFAULT_FIRST_DAY})")  # fmt: skip
    p.add_argument(
        "--only",
        type=_parts,
        default=PARTS,
        help="measure only these parts, comma-separated: scale (first run, COPY limit, incremental "
        "day, 2N), dispatch (outbox e-mails and letters), sendgrid (default: all)",
    )
    p.add_argument("--child-run", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.child_run:
        return child_main(args.child_run)
    logging.disable(logging.INFO)  # progress lines of the stages (and alembic's) would drown the tables
    if args.invoices < 1 or args.new < 1 or args.dispatch_messages < 1 or args.letters < 0:
        print("--invoices, --new and --dispatch-messages must be at least 1", file=sys.stderr)
        return 2
    if args.first_day.weekday() >= 5:
        print(f"--first-day {args.first_day} is not a weekday", file=sys.stderr)
        return 2
    new = min(args.new, max(1, args.invoices // 10))
    workdir = resolve(args.workdir)
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    pg_admin = os.environ.get(PG_URL_ENV) or DEFAULT_PG_ADMIN_URL
    print(
        f"invoice-dispatch benchmark: N={args.invoices:,} invoices, {new:,} new on the next day, "
        f"backends {', '.join(backends)}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"load average {_load(load_average())}"
    )
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    started = time.perf_counter()
    common = {"first_day": args.first_day, "workdir": workdir, "pg_admin": pg_admin, "say": say}
    sendgrid = None
    if "sendgrid" in args.only:
        say("SendGrid figures …")
        sendgrid = measure_sendgrid(args.sendgrid_messages, DEFAULT_SEND_CONCURRENCY, 0.05)
    for backend in backends:
        point: ScalePoint | None = None
        double: ScalePoint | None = None
        emails: DispatchPoint | None = None
        letters: DispatchPoint | None = None
        if "scale" in args.only:
            point = scale_point(backend, args.invoices, new=new, full=True, **common)
            double = scale_point(backend, 2 * args.invoices, new=new, full=False, **common)
        if "dispatch" in args.only:
            emails = dispatch_point(backend, "email", args.dispatch_messages, **common)
            letters = dispatch_point(backend, "letter", args.letters, **common) if args.letters else None
        print()
        runs = (point.first, point.incremental, point.no_history, double.first) if point and double else ()
        for run in runs:
            if run is not None:
                print(format_run(run), end="\n\n")
        if point and point.limit:
            print(f"COPY limit of the first run's {point.limit.rows:,} rows: {point.limit.out_seconds:.2f} s "
                  f"out of the source + {point.limit.in_seconds:.2f} s into three logged tables "
                  f"with a primary key = {point.limit.seconds:.2f} s\n")  # fmt: skip
        print(format_targets(backend, target_rows(point, double, emails, letters, sendgrid)))
        if point:
            print(cost_per_million(point))
        if point and double and not args.no_chart:
            measured: dict[int, ScalePoint] = {point.invoices: point, double.invoices: double}
            for n in args.chart:
                if n not in measured:
                    measured[n] = scale_point(backend, n, new=new, full=False, **common)
            chart = draw_chart(backend, sorted(measured.values(), key=lambda p: p.invoices), workdir)
            print(f"chart: {chart}")
    print(
        f"\nbenchmark wall time {time.perf_counter() - started:.1f} s; load average {_load(load_average())}"
    )
    return 0


def measure_sendgrid(n: int, bound: int, latency: float) -> SendGridFigures | None:
    """The SendGrid figures; None where the local SendGrid's API documents are missing."""
    try:
        return bench_email.measure(n, bound, latency)
    except FileNotFoundError as exc:
        print(f"SendGrid figures skipped: {exc}", file=sys.stderr)
        return None


def draw_chart(backend: str, points: list[ScalePoint], workdir: Path) -> Path:
    """First-run time and peak RSS against N, as a PNG under ``workdir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p.invoices for p in points if p.first]
    seconds = [p.first.seconds for p in points if p.first]
    rss = [p.peak_rss / MIB for p in points if p.first]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(xs, seconds, "o-", color="tab:blue", label="first run (s)")
    ax.set_xlabel("invoices (N)")
    ax.set_ylabel("first run, seconds", color="tab:blue")
    ax.set_xscale("log")
    ax2 = ax.twinx()
    ax2.plot(xs, rss, "s--", color="tab:red", label="peak RSS (MiB)")
    ax2.set_ylabel("peak RSS of the run, MiB", color="tab:red")
    ax2.set_ylim(bottom=0)
    ax.set_title(f"invoice-dispatch {backend}: first run time and peak memory against N")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    out = workdir / f"scaling-{backend}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
