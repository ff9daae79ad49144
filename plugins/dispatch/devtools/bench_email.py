"""E-mail throughput of one worker through the SendGrid channel, against the local SendGrid.

``python -m dispatch.devtools.bench_email [--messages 3000] [--rounds 3] [--latency 0.05] [--in-flight 128]``

The local SendGrid (``tests/fakes``: it validates every request against the project's request
schema of SendGrid's Mail Send, ``tests/fakes/schemas``) runs in a process of its own
(:class:`tests.fakes.sendgrid_server.SendGridProcess`), as the real API shares nothing with the
worker, and adds ``--latency`` seconds before each answer (in that request's own thread),
standing in for the round trip to the real API. Every figure gets a fresh server of the same
kind. The same N invoice e-mails (a small PDF attached) are sent:

* by :class:`dispatch.channels.sendgrid.SendGridChannel` with no added latency: the rate one
  worker's CPU allows, on a machine whose cores it shares with the local server;
* by the same channel with ``--latency``: the window of requests in flight adapts
  (:class:`dispatch.channels.retry.InFlightWindow`) up to ``--in-flight``, so the latency is
  hidden when the bound is at least rate x latency;
* by the Airflow SendGrid provider's ``send_email``, one call per message in a loop (what a
  DAG calling it per invoice does), on the same server with the same latency.

The two channel figures are measured in ``--rounds`` alternated rounds; each is its median
round. A figure at ``--latency`` pays about four round trips more than at 0 ms (a ramp-up of
three, the last answers), so N should be large enough for the steady state to dominate.

Figures only (messages per second and the ratios); nothing is judged. Every run checks that
SendGrid accepted exactly N mails and refused none.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dispatch.channels.base import Attachment, OutgoingMessage, SendResult
from dispatch.channels.sendgrid import SendGridApi, SendGridChannel
from dispatch.paths import repo_root

if TYPE_CHECKING:  # the local SendGrid lives with the tests (imported when the benchmark runs)
    from tests.fakes.sendgrid_server import SendGridProcess


@dataclass(frozen=True)
class Window:
    """What the channel's window of requests in flight did during one figure."""

    peak: int  # the largest number of requests it allowed in flight
    end: int  # what it allowed when the last message was answered
    mean_rtt: float  # seconds, every request's round trip as the channel measured it


@dataclass(frozen=True)
class Figure:
    label: str
    in_flight: int
    messages: int
    seconds: float
    window: Window | None = None
    server_cpu: float | None = None  # CPU seconds of the server process

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds


def invoice_messages(n: int, pdf: bytes) -> list[OutgoingMessage]:
    now = dt.datetime.now(dt.UTC)
    return [
        OutgoingMessage(
            action_id=f"bench_{i:06d}",
            invoice_id=f"inv_{i:06d}",
            org_id="acme",
            channel="email",
            recipients=(f"customer{i}@client.example",),
            deliver_at=now,
            subject=f"Invoice F-2026-{i:06d} from ACME SAS",
            body_text=f"Dear customer, please find invoice F-2026-{i:06d} attached.",
            body_html=f"<p>Dear customer, please find invoice F-2026-{i:06d} attached.</p>",
            sender="billing@acme.example",
            sender_name="ACME SAS",
            attachments=(Attachment(f"invoice-F-2026-{i:06d}.pdf", pdf),),
        )
        for i in range(n)
    ]


#: What a send returns: how many SendGrid accepted, and what the window did (None: no window).
Sent = tuple[int, Window | None]


def timed(
    label: str, in_flight: int, messages: Sequence[OutgoingMessage], send: Callable[[], Sent]
) -> Figure:
    started = time.perf_counter()
    accepted, window = send()
    seconds = time.perf_counter() - started
    if accepted != len(messages):
        raise SystemExit(f"{label}: SendGrid accepted {accepted} of {len(messages)} messages")
    return Figure(label, in_flight, len(messages), seconds, window)


def through_channel(
    server: SendGridProcess, messages: Sequence[OutgoingMessage], in_flight: int, keep_alive: bool
) -> Sent:
    api = SendGridApi(server.api_key, server.url, max_connections=in_flight, keep_alive=keep_alive)
    channel = SendGridChannel(api, max_in_flight=in_flight)
    try:
        results = channel.send_many(messages)
        window = channel.window
        seen = Window(window.peak, window.limit, window.rtt_total / max(1, window.answers))
    finally:
        channel.close()
    return sum(isinstance(r, SendResult) for r in results), seen


def through_airflow_provider(server: SendGridProcess, messages: Sequence[OutgoingMessage]) -> Sent:
    """The Airflow SendGrid provider's ``send_email``, once per message, as a DAG would loop.

    Its client is built per call with SendGrid's default host; only that host is pointed at
    the local server. The attachment is a file path, as the provider takes it (written once,
    before the clock starts)."""
    import sendgrid
    from airflow.providers.sendgrid.utils import emailer

    logging.getLogger(emailer.__name__).setLevel(logging.WARNING)
    os.environ["AIRFLOW_CONN_SENDGRID_DEFAULT"] = json.dumps(
        {"conn_type": "sendgrid", "password": server.api_key}
    )
    real = sendgrid.SendGridAPIClient
    folder = Path(tempfile.mkdtemp(prefix="bench_email_"))
    files = []
    for m in messages:
        path = folder / m.attachments[0].filename
        path.write_bytes(m.attachments[0].content)
        files.append(str(path))
    emailer.sendgrid.SendGridAPIClient = functools.partial(real, host=server.url)
    try:
        for m, attachment in zip(messages, files, strict=True):
            emailer.send_email(
                list(m.recipients),
                m.subject or "",
                m.body_html or "",
                files=[attachment],
                from_email=m.sender,
                from_name=m.sender_name,
                conn_id="sendgrid_default",
            )
    finally:
        emailer.sendgrid.SendGridAPIClient = real
    return len(messages), None


def _serve(
    label: str,
    in_flight: int,
    messages: Sequence[OutgoingMessage],
    latency: float,
    send: Callable[[SendGridProcess], Sent],
) -> Figure:
    """One figure against a fresh local SendGrid in a process of its own (every figure the
    same way, so the 0 ms reference and the others pay the same server)."""
    from tests.fakes.sendgrid_server import SendGridProcess

    with SendGridProcess(latency=latency) as server:
        figure = timed(label, in_flight, messages, lambda: send(server))
    served = server.stop()
    if served.invalid or served.errors or served.accepted != len(messages):
        raise SystemExit(
            f"{label}: {served.invalid} refused, {served.accepted} accepted of {len(messages)} "
            f"({'; '.join(served.problems + served.errors)})"
        )
    return dataclasses.replace(figure, server_cpu=served.cpu_seconds)


@dataclass(frozen=True)
class SendGridFigures:
    latency: float
    at_zero: Figure
    at_latency: Figure
    airflow: Figure
    #: every round of the two channel figures (``at_zero``/``at_latency`` are their medians)
    zero_rounds: Sequence[Figure] = ()
    latency_rounds: Sequence[Figure] = ()

    @property
    def latency_ratio(self) -> float:
        """Rate at ``latency`` over the rate at 0 ms: how much of the latency is hidden."""
        return self.at_latency.per_second / self.at_zero.per_second

    @property
    def airflow_ratio(self) -> float:
        return self.at_latency.per_second / self.airflow.per_second


#: Rounds of the two channel figures, alternated (0 ms, then the latency, then 0 ms…).
ROUNDS = 3


def median_figure(figures: Sequence[Figure]) -> Figure:
    """The round with the median rate (the lower middle one for an even count)."""
    ranked = sorted(figures, key=lambda f: f.per_second)
    return ranked[(len(ranked) - 1) // 2]


def measure(
    n: int, in_flight: int, latency: float, airflow_messages: int = 100, rounds: int = ROUNDS
) -> SendGridFigures:
    """The three figures. The channel's two are measured in ``rounds`` alternated rounds and
    each is its median round: on a shared machine the load changes from one second to the
    next, and alternating exposes both figures to the same changes (the same rule for both,
    so neither the reference nor the figure is favoured)."""
    sys.path.insert(0, str(repo_root()))  # the local SendGrid lives with the tests
    from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf

    messages = invoice_messages(
        n, build_invoice_placeholder_pdf("F-2026-000001", ["Consulting  1 200,00 EUR"])
    )
    channel = lambda s: through_channel(s, messages, in_flight, True)  # noqa: E731
    zeros: list[Figure] = []
    latents: list[Figure] = []
    for _ in range(max(1, rounds)):
        zeros.append(_serve("channel, 0 ms", in_flight, messages, 0.0, channel))
        latents.append(_serve(f"channel, {latency * 1000:.0f} ms", in_flight, messages, latency, channel))
    few = messages[: max(1, min(n, airflow_messages))]
    airflow = _serve(
        f"Airflow provider send_email loop, {latency * 1000:.0f} ms",
        1,
        few,
        latency,
        lambda s: through_airflow_provider(s, few),
    )
    return SendGridFigures(latency, median_figure(zeros), median_figure(latents), airflow, zeros, latents)


def report(fig: SendGridFigures) -> str:
    lines = [
        f"E-mail throughput, one worker, local SendGrid ({fig.latency * 1000:.0f} ms latency where said)",
        "",
        "| how | in flight (bound) | window peak / end | mean round trip | messages | seconds "
        "| messages/s | server CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for f in (fig.at_zero, fig.at_latency, fig.airflow):
        window = f"{f.window.peak} / {f.window.end}" if f.window else ""
        rtt = f"{f.window.mean_rtt * 1000:.1f} ms" if f.window else ""
        cpu = f"{f.server_cpu:.2f} s" if f.server_cpu is not None else ""
        lines.append(
            f"| {f.label} | {f.in_flight} | {window} | {rtt} | {f.messages} | {f.seconds:.2f} "
            f"| {f.per_second:.1f} | {cpu} |"
        )
    if len(fig.zero_rounds) > 1:
        rates = lambda rounds: ", ".join(f"{f.per_second:.0f}" for f in rounds)  # noqa: E731
        lines += [
            "",
            f"{len(fig.zero_rounds)} rounds, alternated; the medians above. Messages/s at 0 ms: "
            f"{rates(fig.zero_rounds)}; at {fig.latency * 1000:.0f} ms: {rates(fig.latency_rounds)}",
        ]
    lines += [
        "",
        f"at {fig.latency * 1000:.0f} ms / at 0 ms: {fig.latency_ratio:.2f}x; "
        f"channel / Airflow provider loop: {fig.airflow_ratio:.1f}x",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    from dispatch.config.settings import DEFAULT_SEND_CONCURRENCY

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000, help="e-mails of each channel figure")
    parser.add_argument(
        "--rounds", type=int, default=ROUNDS, help="alternated rounds of the two channel figures (median)"
    )
    parser.add_argument(
        "--in-flight", type=int, default=DEFAULT_SEND_CONCURRENCY, help="bound of requests in flight"
    )
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every answer")
    parser.add_argument("--airflow-messages", type=int, default=100, help="messages for the provider loop")
    args = parser.parse_args(argv)
    print(report(measure(args.messages, args.in_flight, args.latency, args.airflow_messages, args.rounds)))


if __name__ == "__main__":
    main()
