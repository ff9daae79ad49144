"""The ``dispatch`` command line (CONTRACT §5).

Exit codes: 0 success; 2 bad usage or bad input, with a one-line reason on stderr and
nothing changed; 1 an unexpected failure. Listings print a table by default and one JSON
array with ``--json`` whose keys are the columns of the table or view they read.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click
import pandas as pd

from dispatch.errors import DispatchError
from dispatch.vocabulary import ActionStatus, EventName

if TYPE_CHECKING:  # the commands import the library when they run, for a quick --help
    from sqlalchemy import Engine

    from dispatch.config.settings import Settings
    from dispatch.runtime.pipeline import RunReport
    from dispatch.storage.session import Database

log = logging.getLogger("dispatch")


class Fail(click.ClickException):
    """A refusal: one line on stderr, exit 2."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"dispatch: {self.format_message()}", err=True)


class Unexpected(click.ClickException):
    """An unexpected failure: one line on stderr, exit 1 (``--debug`` shows the traceback)."""

    exit_code = 1

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"dispatch: {self.format_message()}", err=True)


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def handle_errors(fn: Callable) -> Callable:
    """Whatever goes wrong is one line: exit 2 for what the user can fix (bad input, a
    database that cannot be reached or lacks a table), exit 1 for anything else; with
    ``--debug`` the traceback follows."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dispatch.storage.errors import explain

        try:
            return fn(*args, **kwargs)
        except DispatchError as exc:
            if _debug():
                raise
            lines = str(exc).splitlines() or [type(exc).__name__]
            if len(lines) > 1:  # the first line is the one-line reason; the rest follow it
                click.echo("\n".join(lines[1:]), err=True)
            raise Fail(lines[0]) from exc
        except (click.ClickException, click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if _debug():
                raise
            known = explain(exc)
            if known is not None:
                raise Fail(known) from exc
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise Unexpected(
                f"unexpected error: {type(exc).__name__}: {first} (run with --debug for the traceback)"
            ) from exc

    return wrapper


def _quoted(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:39] + "…")


def parse_instant(value: str | None, option: str = "--at") -> dt.datetime:
    """ISO 8601; a value without offset is UTC; a bare date means 00:00 UTC that day.

    The instant must lie in the range the scheduler computes with (1970-01-01 to
    2200-01-01 UTC, :data:`dispatch.rules.scheduling.SUPPORTED_FROM` / ``SUPPORTED_UNTIL``):
    outside it, date arithmetic would overflow instead of answering.
    """
    from dispatch.rules.scheduling import SUPPORTED_RANGE_TEXT, in_supported_range

    if value is None:
        return dt.datetime.now(dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Fail(
            f"{option} {_quoted(value)}: not an ISO 8601 instant (e.g. 2026-12-02T05:00:00Z)"
        ) from None
    try:
        instant = parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        instant = None
    if instant is None or not in_supported_range(instant):
        raise Fail(f"{option} {_quoted(value)}: outside {SUPPORTED_RANGE_TEXT}")
    return instant


def parse_day(value: str, option: str) -> dt.date:
    """An ISO date (``2026-12-02``) inside the scheduler's range, or a one-line exit 2."""
    from dispatch.rules.scheduling import SUPPORTED_RANGE_TEXT, in_supported_range

    try:
        day = dt.date.fromisoformat(value.strip())
    except ValueError:
        raise Fail(f"{option} {_quoted(value)}: not an ISO date (e.g. 2026-12-02)") from None
    if not in_supported_range(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)):
        raise Fail(f"{option} {_quoted(value)}: outside {SUPPORTED_RANGE_TEXT}")
    return day


def _settings() -> Settings:
    from dispatch.config.settings import load_settings

    return load_settings()


def _jsonable(value: Any) -> Any:
    if value is None or (not isinstance(value, (str, list, tuple, dict)) and pd.isna(value)):
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        ts = pd.Timestamp(value)
        return (
            (ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")).isoformat().replace("+00:00", "Z")
        )
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)


def emit(
    df: pd.DataFrame,
    as_json: bool,
    columns: list[str] | None = None,
    *,
    as_csv: bool = False,
    table_columns: list[str] | None = None,
) -> None:
    """One JSON array of objects, CSV, or a table within 120 columns (``table_columns``, in
    order of importance, are the ones shown while they fit)."""
    from dispatch.people import listing

    if columns:
        df = df[[c for c in columns if c in df.columns]]
    if as_json and as_csv:
        raise Fail("--json and --csv: choose one")
    if as_json:
        click.echo(listing.as_json(df))
    elif as_csv:
        click.echo(listing.as_csv(df), nl=False)
    else:
        click.echo(listing.as_table(df, table_columns))


def csv_option(fn: Callable) -> Callable:
    return click.option("--csv", "as_csv", is_flag=True, help="CSV with every column.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", is_flag=True, help="More detail: each stage's figures and the library's log."
)
@click.option("--debug", is_flag=True, help="On an error, show the Python traceback.")
@click.version_option(package_name="invoice-dispatch")
def main(verbose: bool, debug: bool) -> None:
    """invoice-dispatch: send invoices by e-mail, letter or SMS, exactly once."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- db -----------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The dispatch database."""


@db.command("init")
@handle_errors
def db_init() -> None:
    """Create or upgrade the dispatch schema (idempotent)."""
    from dispatch.storage.engine import make_engine
    from dispatch.storage.migrate import upgrade

    settings = _settings()
    before, after = upgrade(make_engine(settings.dispatch_db_url))
    if before == after:
        click.echo(f"dispatch database is up to date (revision {after})")
    else:
        click.echo(f"dispatch database upgraded from {before or 'empty'} to revision {after}")


# --- config -------------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Organizations, users, plans and assignments."""


@config.command("load")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def config_load(file: Path) -> None:
    """Load FILE.yaml (all-or-nothing; see docs/configuration.md)."""
    from dispatch.config.load import load_config_file
    from dispatch.runtime.pipeline import ensure_schema
    from dispatch.storage.engine import make_engine

    if not file.exists():
        raise Fail(f"{file}: no such file")
    settings = _settings()
    engine = make_engine(settings.dispatch_db_url)
    ensure_schema(engine)
    accounting = _accounting_if_present(settings.accounting_db_url)
    summary = load_config_file(file, engine, accounting_engine=accounting, now=dt.datetime.now(dt.UTC))
    click.echo(str(summary))


@config.command("dump")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
@handle_errors
def config_dump(output: Path | None) -> None:
    """Print the stored configuration in the format `config load` reads (loading it back
    changes nothing)."""
    from dispatch.config.dump import dump_config_yaml
    from dispatch.people.operations import require_schema
    from dispatch.storage.engine import make_engine

    engine = make_engine(_settings().dispatch_db_url, readonly=True, name="DISPATCH_DB_URL")
    require_schema(engine)
    text = dump_config_yaml(engine)
    if output is None:
        click.echo(text, nl=False)
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"configuration written to {output}")


def _accounting_if_present(url: str) -> Engine | None:
    """The accounting engine when it can be reached (to check assignments across orgs)."""
    from sqlalchemy import inspect

    from dispatch.storage.engine import make_engine

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return None
    try:
        engine = make_engine(url, readonly=True)
        return engine if inspect(engine).has_table("customers") else None
    except Exception:  # an unreachable source only disables that one check
        log.warning("accounting database not reachable: cross-organization assignments not checked")
        return None


# --- run / preview ------------------------------------------------------------------------


@main.command()
@click.option("--at", "at", metavar="INSTANT", help="As-of instant, ISO 8601 (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the run report as JSON.")
@handle_errors
def run(at: str | None, as_json: bool) -> None:
    """The whole daily pipeline as of INSTANT: extract, tag, resolve templates, compute due
    sends, dispatch, write back; prints counts."""
    from dispatch.runtime.pipeline import run_pipeline
    from dispatch.runtime.run_progress import progress_printer

    as_of = parse_instant(at)
    verbose = bool(click.get_current_context().find_root().params.get("verbose"))
    measure = None if as_json else progress_printer(lambda m: click.echo(m, err=True), verbose=verbose)
    report = run_pipeline(_settings(), as_of, progress=log.info, measure=measure)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "run_id": report.run_id,
                    "as_of": report.as_of.isoformat(),
                    "horizon": report.horizon.isoformat(),
                    "stages": report.stages,
                    "counts": report.counts,
                },
                default=str,
            )
        )
        return
    click.echo(format_report(report))


def format_report(report: RunReport) -> str:
    run_c = report.counts.get("run", {})
    totals = report.counts.get("totals", {})

    def events(name: EventName) -> Any:
        return run_c.get(f"events.{name}", 0)

    lines = [
        f"run {report.run_id} as of {report.as_of:%Y-%m-%d %H:%M}Z "
        f"(covers until {report.horizon:%Y-%m-%d %H:%M}Z)",
        f"  imported {run_c.get('imported', 0)}, rejected {run_c.get('rejected', 0)}, "
        f"actions created {events(EventName.CREATED)}",
        f"  sent {events(EventName.SENT)}, to do {events(EventName.MANUAL)}, "
        f"cancelled {events(EventName.CANCELLED)}, retry later {events(EventName.RETRY_LATER)}",
    ]
    reasons = {k.split(".", 1)[1]: v for k, v in run_c.items() if k.startswith("manual.") and v}
    if reasons:
        lines.append("  to do by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())))
    from dispatch.stages.write_back import OUTCOMES

    lines.append(
        "  all invoices: "
        + ", ".join(f"{k} {totals.get(k, 0)}" for k in OUTCOMES)
        + f" = {totals.get('imported', 0)} imported; {totals.get('rejected', 0)} rejected"
    )
    return "\n".join(lines)


@main.command()
@click.option("--at", "at", metavar="INSTANT", help="As-of instant, ISO 8601 (default: now).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
@csv_option
@handle_errors
def preview(at: str | None, as_json: bool, as_csv: bool) -> None:
    """What `run` would do as of INSTANT, and why not — changing nothing."""
    from dispatch.runtime.preview import COLUMNS
    from dispatch.runtime.preview import preview as do_preview

    as_of = parse_instant(at)
    df = do_preview(_settings(), as_of)
    emit(df, as_json, COLUMNS, as_csv=as_csv)


@main.command()
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000), help="How many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects (with all counts).")
@csv_option
@handle_errors
def runs(limit: int, as_json: bool, as_csv: bool) -> None:
    """The recorded runs, newest first: as-of, status, duration and counts."""
    from dispatch.people.operations import require_schema
    from dispatch.runtime.run_history import COLUMNS, list_runs
    from dispatch.storage.engine import make_engine

    engine = make_engine(_settings().dispatch_db_url, readonly=True, name="DISPATCH_DB_URL")
    require_schema(engine)
    df = list_runs(engine, limit)
    emit(df, as_json, COLUMNS if as_json or as_csv else COLUMNS[:-3], as_csv=as_csv)


# --- todo ---------------------------------------------------------------------------------

TODO_COLUMNS = [
    "action_id",
    "invoice_id",
    "invoice_number",
    "org_id",
    "customer_id",
    "customer_name",
    "channel",
    "owner_user_id",
    "manual_reason",
    "created_at",
    "detail",
    "recipient",
    "manual_since",
]


@main.group(invoke_without_command=True)
@click.option("--owner", metavar="USER", help="Only this owner's actions (a known user).")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
@csv_option
@click.pass_context
@handle_errors
def todo(ctx: click.Context, owner: str | None, as_json: bool, as_csv: bool) -> None:
    """Open manual invoicing actions (the to-do list)."""
    if ctx.invoked_subcommand is not None:
        return
    from dispatch.people.operations import todo_list
    from dispatch.storage.engine import make_engine

    engine = make_engine(_settings().dispatch_db_url, readonly=True, name="DISPATCH_DB_URL")
    emit(todo_list(engine, owner), as_json, TODO_COLUMNS, as_csv=as_csv, table_columns=TODO_TABLE)


# what the table shows first when 120 columns cannot hold everything (--json/--csv: all)
TODO_TABLE = [
    "action_id",
    "invoice_id",
    "invoice_number",
    "customer_name",
    "channel",
    "owner_user_id",
    "manual_reason",
    "detail",
    "manual_since",
]
BY_OPTION = click.option(
    "--by",
    "by",
    metavar="USER",
    help="Who does it, for the audit log (default: $DISPATCH_ACTOR, else your OS user).",
)


def _db_and_settings() -> tuple[Database, Settings]:
    from dispatch.runtime.pipeline import ensure_schema
    from dispatch.storage.engine import make_engine
    from dispatch.storage.session import Database

    settings = _settings()
    engine = make_engine(settings.dispatch_db_url)
    ensure_schema(engine)
    return Database(engine), settings


@todo.command("send")
@click.argument("action_id")
@click.option("--at", "at", metavar="INSTANT", help="When (default: now).")
@BY_OPTION
@handle_errors
def todo_send(action_id: str, at: str | None, by: str | None) -> None:
    """Send a manual action now through its channel."""
    from dispatch.channels.factory import open_channels
    from dispatch.people.operations import send_action_now
    from dispatch.storage.engine import make_engine

    when = parse_instant(at)
    db, settings = _db_and_settings()
    with open_channels(settings) as channels:
        result = send_action_now(
            db,
            make_engine(settings.accounting_db_url, readonly=True, name="ACCOUNTING_DB_URL"),
            action_id,
            when,
            channels,
            settings,
            actor=by,
        )
    if result["status"] == ActionStatus.CANCELLED:  # the re-check found the invoice void or deleted (B5)
        raise Fail(f"action {action_id} not sent and cancelled: {result['detail']}")
    if result["status"] != ActionStatus.SENT:
        raise Fail(
            f"action {action_id} not sent: {result['manual_reason']} ({result['detail']}); "
            "it stays in the to-do list"
        )
    click.echo(
        f"sent {action_id} to {result['recipient']} ({result['provider_message_id']}), "
        f"template {result['template_id']}"
    )


@todo.command("ignore")
@click.argument("action_ids", nargs=-1, required=True)
@click.option("--at", "at", metavar="INSTANT", help="When (default: now).")
@BY_OPTION
@handle_errors
def todo_ignore(action_ids: tuple[str, ...], at: str | None, by: str | None) -> None:
    """Ignore one or many actions (each invoice then counts as sent)."""
    from dispatch.people.operations import ignore_actions

    when = parse_instant(at)
    db, _ = _db_and_settings()
    result = ignore_actions(db, action_ids, when, actor=by)
    click.echo(f"ignored: {result}")


# --- invoices -----------------------------------------------------------------------------


@main.group(invoke_without_command=True)
@click.option("--status", "status", metavar="S", help="e.g. to_send, overdue, paid, not_due, void, sent.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of objects.")
@csv_option
@click.pass_context
@handle_errors
def invoices(ctx: click.Context, status: str | None, as_json: bool, as_csv: bool) -> None:
    """List invoices with their status."""
    if ctx.invoked_subcommand is not None:
        return
    from dispatch.people.operations import invoice_list
    from dispatch.storage.engine import make_engine

    df = invoice_list(make_engine(_settings().dispatch_db_url, readonly=True, name="DISPATCH_DB_URL"), status)
    cols = (
        None
        if as_json or as_csv
        else [
            "invoice_id",
            "org_id",
            "customer_id",
            "number",
            "issue_date",
            "due_date",
            "currency",
            "total_amount",
            "sending_status",
            "sent_how",
            "status",
        ]
    )
    emit(df, as_json, cols, as_csv=as_csv)


@invoices.command("mark-sent")
@click.argument("invoice_ids", nargs=-1, required=True)
@click.option("--at", "at", metavar="INSTANT", help="When (default: now).")
@BY_OPTION
@handle_errors
def invoices_mark_sent(invoice_ids: tuple[str, ...], at: str | None, by: str | None) -> None:
    """Mark invoices as sent without sending anything (one or many)."""
    from dispatch.people.operations import mark_sent

    when = parse_instant(at)
    db, _ = _db_and_settings()
    result = mark_sent(db, invoice_ids, when, actor=by)
    click.echo(f"marked sent: {result}")


# --- bounces ------------------------------------------------------------------------------


@main.group()
def bounces() -> None:
    """E-mails the provider reported as bounced, blocked or invalid (SendGrid)."""


@bounces.command("pull")
@click.option("--at", "at", metavar="INSTANT", help="Pull entries up to this instant (default: now).")
@handle_errors
def bounces_pull(at: str | None) -> None:
    """Turn the sent e-mails SendGrid reported since the last pull into manual `bounced` actions."""
    from dispatch.channels.base import ChannelError
    from dispatch.runtime.runs import RunContext
    from dispatch.stages.pull_bounces import pull_bounces

    as_of = parse_instant(at)
    db, settings = _db_and_settings()
    ctx = RunContext.new(as_of, run_id=f"bounces__{as_of:%Y%m%dT%H%M%SZ}")
    try:
        summary = pull_bounces(db, settings, ctx)
    except ChannelError as exc:  # the provider failed us: nothing was changed
        click.echo(f"dispatch: bounces not pulled, nothing changed: {exc}", err=True)
        sys.exit(1)
    if summary.skipped:
        click.echo(f"bounces: skipped ({summary.skipped})")
        return
    listed = ", ".join(f"{k} {v}" for k, v in sorted(summary.entries.items())) or "none"
    click.echo(f"bounces: entries {listed}; {summary.bounced} sent e-mails became manual (bounced)")


# --- web ---------------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65_535), help="TCP port.")
@click.option(
    "--user",
    "user",
    metavar="NAME",
    help="Who the pages act as, for the audit log (default: $DISPATCH_ACTOR, else your OS user).",
)
@handle_errors
def web(host: str, port: int, user: str | None) -> None:
    """Serve the pages (to-do list, invoices, runs) and their JSON API standalone.

    Prints the URL with the token that opens a session (DISPATCH_WEB_TOKEN when set)."""
    import socket

    import uvicorn

    from dispatch.people.actor import resolve_actor
    from dispatch.web import server

    settings = _settings()
    token = server.web_token(settings)
    app = server.build(settings, token, resolve_actor(user))
    # bind first, so the printed URL names the port really listened on (--port 0: a free one)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise Fail(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    click.echo(f"dispatch web: {server.url(host, sock.getsockname()[1], token)}")
    sys.stdout.flush()
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


# --- demo ---------------------------------------------------------------------------------


@main.command()
@click.option("--today", metavar="DATE", help="The demo's today (default: today, UTC).")
@click.option("--seed", default=7, show_default=True)
@handle_errors
def demo(today: str | None, seed: int) -> None:
    """Write the demo accounting database and load the demo configuration (no run)."""
    from dispatch.config.load import load_config_file
    from dispatch.devtools.demo_data import build_demo
    from dispatch.paths import resolve
    from dispatch.storage.engine import make_engine
    from dispatch.storage.migrate import upgrade

    settings = _settings()
    day = parse_day(today, "--today") if today else dt.datetime.now(dt.UTC).date()
    summary = build_demo(
        settings.accounting_db_url,
        settings.pdf_root,  # the demo's invoice PDFs live where runs read them
        day,
        seed,
        config_out=resolve("var/demo/config.yaml"),
    )
    engine = make_engine(settings.dispatch_db_url)
    upgrade(engine)
    loaded = load_config_file(
        summary.config_path,
        engine,
        accounting_engine=make_engine(settings.accounting_db_url),
        now=dt.datetime.now(dt.UTC),
    )
    click.echo(
        f"demo accounting database: {summary.invoices} invoices ({summary.malformed} malformed), "
        f"{summary.customers} customers, {summary.pdfs} PDFs"
    )
    click.echo(f"demo configuration: {summary.config_path}")
    click.echo(str(loaded))


if __name__ == "__main__":  # pragma: no cover
    main()
