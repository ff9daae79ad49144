"""``make bench``: time every pipeline stage on N synthetic invoices, on SQLite and PostgreSQL.

Two runs per backend, as the pipeline lives them: a FIRST run as of a weekday 05:00 UTC over
N invoices imported at once, then the FOLLOWING INCREMENTAL DAY (1% new invoices, next
weekday). Each stage is called one by one exactly as :func:`dispatch.pipeline.run_pipeline`
calls it, so what is timed is the library's code and nothing written for the benchmark.

Figures only: nothing here judges them (no thresholds), they are for the README and for
finding hot spots. Memory: the peak RSS of each stage (Linux lets a process reset its RSS
high-water mark, at no cost) and the process's ``getrusage`` maximum. ``--trace-memory`` adds
the ``tracemalloc`` peak of Python allocations per stage (NumPy and pandas buffers included),
off by default because tracing every allocation made the stages 3 to 7 times slower
(measured: dispatch of 1,455 messages 20.6 s untraced, 138.5 s traced), which would make the
timings of the same table meaningless.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import os
import resource
import shutil
import signal
import sys
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dispatch.bench_data import append_new_invoices, generate_bench
from dispatch.config_file import load_config_file
from dispatch.db.engine import make_engine
from dispatch.db.migrate import upgrade
from dispatch.paths import resolve
from dispatch.pipeline import STAGES as STAGES  # the table rows, re-exported
from dispatch.pipeline import Engines, run_pipeline
from dispatch.settings import Settings, load_settings

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
    """The process's peak resident set size (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
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
    5), which costs nothing, unlike tracing allocations. Resetting also resets what
    ``getrusage`` reports, so the process-wide peak is carried across resets here."""

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
    """:func:`dispatch.pipeline.run_pipeline` itself, each stage timed on its own."""
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


# --- one backend -------------------------------------------------------------------------------


def next_weekday(day: dt.date) -> dt.date:
    return pd.Timestamp(np.busday_offset(np.datetime64(day), 1, roll="forward")).date()


def bench_backend(
    backend: str,
    dispatch_url: str,
    accounting_url: str,
    *,
    n_invoices: int,
    first_day: dt.date,
    workdir: Path,
    batch_size: int | None,
    timer: StageTimer,
    say: Callable[[str], None],
) -> BackendFigures:
    """Generate, set up, then time the first run and the following incremental day."""
    outbox = workdir / backend / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)  # action ids are deterministic: old files would be "sent"
    config_path = workdir / backend / "config.yaml"
    environ = {
        "DISPATCH_DB_URL": dispatch_url,
        "ACCOUNTING_DB_URL": accounting_url,
        "DISPATCH_OUTBOX_DIR": str(outbox),
    }
    if batch_size is not None:
        environ["DISPATCH_BATCH_SIZE"] = str(batch_size)
    settings = load_settings(environ=environ)

    say(f"[{backend}] generating {n_invoices:,} invoices …")
    started = time.perf_counter()
    data = generate_bench(accounting_url, n_invoices, start=first_day, config_out=config_path)
    generation = time.perf_counter() - started

    engines = Engines.from_settings(settings)
    try:
        started = time.perf_counter()
        upgrade(engines.dispatch)
        migrate = time.perf_counter() - started
        started = time.perf_counter()
        config_engine = make_engine(accounting_url, readonly=True)
        try:
            load_config_file(
                config_path, engines.dispatch, accounting_engine=config_engine, now=data.enabled_at
            )
        finally:
            config_engine.dispose()
        out = BackendFigures(backend, generation, migrate, time.perf_counter() - started)

        first = dt.datetime.combine(first_day, RUN_TIME, dt.UTC)
        say(f"[{backend}] first run as of {first:%a %Y-%m-%d %H:%MZ} …")
        out.runs.append(
            timed_run(settings, engines, first, timer, RunFigures(backend, "first", first, n_invoices))
        )

        second = dt.datetime.combine(next_weekday(first_day), RUN_TIME, dt.UTC)
        started = time.perf_counter()
        out.appended = append_new_invoices(
            accounting_url,
            NEW_INVOICES_FRACTION,
            updated_at=dt.datetime.combine(second.date(), dt.time(0), dt.UTC),
            base=n_invoices,
        )
        out.append_seconds = time.perf_counter() - started
        say(f"[{backend}] incremental day as of {second:%a %Y-%m-%d %H:%MZ} ({out.appended:,} new) …")
        out.runs.append(
            timed_run(
                settings,
                engines,
                second,
                timer,
                RunFigures(backend, "incremental", second, n_invoices + out.appended),
            )
        )
        return out
    finally:
        engines.dispatch.dispose()
        engines.accounting.dispose()


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
            f"process max RSS (getrusage) at the end of the run: {_mib(run.max_rss_bytes)} MiB; "
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


# --- entry point -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dispatch.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--invoices", type=int, default=100_000, help="synthetic invoices (default 100000)")
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--workdir", default="var/bench", help="SQLite files and outboxes (default var/bench)")
    p.add_argument(
        "--first-day",
        type=dt.date.fromisoformat,
        default=DEFAULT_FIRST_DAY,
        help=f"weekday of the first run, at 05:00 UTC (default {DEFAULT_FIRST_DAY})",
    )
    p.add_argument("--batch-size", type=int, default=None, help="DISPATCH_BATCH_SIZE (default: settings')")
    p.add_argument(
        "--trace-memory",
        action="store_true",
        help="also trace Python allocations per stage (tracemalloc); slows stages down several times",
    )
    p.add_argument("--profile", metavar="DIR", help="write one cProfile file per stage and run into DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.invoices < 1:
        print("--invoices must be at least 1", file=sys.stderr)
        return 2
    if args.first_day.weekday() >= 5:
        print(f"--first-day {args.first_day} is not a weekday", file=sys.stderr)
        return 2
    workdir = resolve(args.workdir)
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    timer = StageTimer(args.trace_memory, resolve(args.profile) if args.profile else None)
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    pg_admin = os.environ.get(PG_URL_ENV) or DEFAULT_PG_ADMIN_URL
    print(
        f"invoice-dispatch benchmark: {args.invoices:,} invoices, backends {', '.join(backends)}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
        f"tracemalloc {'ON: timings are slowed down' if args.trace_memory else 'off'}"
    )
    # `kill` (SIGTERM) must still drop the PostgreSQL databases: turn it into SystemExit.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    if timer.trace_memory:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        for backend in backends:
            databases = sqlite_databases(workdir) if backend == "sqlite" else postgres_databases(pg_admin)
            with databases as (dispatch_url, accounting_url):
                fig = bench_backend(
                    backend,
                    dispatch_url,
                    accounting_url,
                    n_invoices=args.invoices,
                    first_day=args.first_day,
                    workdir=workdir,
                    batch_size=args.batch_size,
                    timer=timer,
                    say=say,
                )
            print()
            print(format_backend(fig, args.invoices), flush=True)
    finally:
        if timer.trace_memory:
            tracemalloc.stop()
    print(
        f"\nbenchmark wall time {time.perf_counter() - started:.1f} s; process max RSS "
        f"{_mib(timer.rss.process())} MiB (high-water mark of the whole process, data generation included)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
