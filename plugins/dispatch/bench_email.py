"""E-mail throughput of one worker through the SendGrid channel, against the local SendGrid.

``python -m dispatch.bench_email [--messages 500] [--in-flight 16] [--latency 0.05]``

The local SendGrid (``tests/fakes``: it validates every request against SendGrid's OpenAPI
document) adds ``--latency`` seconds before each answer, standing in for the round trip to
the real API. The same N invoice e-mails (a small PDF attached) are sent by
:class:`dispatch.channels.sendgrid.SendGridChannel`:

* concurrently, ``--in-flight`` requests at a time over kept-alive connections (the default);
* one request after the other (``DISPATCH_SEND_CONCURRENCY=1``) on the same server;
* concurrently without keep-alive (a new connection per request), to isolate keep-alive;
* and, for comparison, concurrently through the SDK's own transport (``python_http_client``,
  urllib, a new connection per request), which the channel does not use.

Figures only (messages per second, and the ratio concurrent / one-at-a-time); nothing is
judged. Every run checks that SendGrid accepted exactly N mails and refused none. On
loopback a new connection costs almost nothing, so keep-alive shows little here; against the
real API each new connection also costs a TLS handshake over the network.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from dispatch.channels.base import Attachment, OutgoingMessage, SendResult
from dispatch.channels.sendgrid import SendGridApi, SendGridChannel, build_mail_body
from dispatch.paths import repo_root


@dataclass(frozen=True)
class Figure:
    label: str
    in_flight: int
    messages: int
    seconds: float

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


def timed(label: str, in_flight: int, messages: Sequence[OutgoingMessage], send: Callable[[], int]) -> Figure:
    started = time.perf_counter()
    accepted = send()
    seconds = time.perf_counter() - started
    if accepted != len(messages):
        raise SystemExit(f"{label}: SendGrid accepted {accepted} of {len(messages)} messages")
    return Figure(label, in_flight, len(messages), seconds)


def through_channel(server, messages: Sequence[OutgoingMessage], in_flight: int, keep_alive: bool) -> int:  # type: ignore[no-untyped-def]
    api = SendGridApi(server.api_key, server.url, max_connections=in_flight, keep_alive=keep_alive)
    channel = SendGridChannel(api, max_in_flight=in_flight)
    try:
        results = channel.send_many(messages)
    finally:
        channel.close()
    return sum(isinstance(r, SendResult) for r in results)


def through_sdk(server, messages: Sequence[OutgoingMessage], in_flight: int) -> int:  # type: ignore[no-untyped-def]
    import sendgrid

    client = sendgrid.SendGridAPIClient(api_key=server.api_key, host=server.url)
    bodies = [build_mail_body(m, default_sender=None, send_at=None) for m in messages]

    def post(body: dict) -> int:
        return int(client.client.mail.send.post(request_body=body).status_code)

    with ThreadPoolExecutor(max_workers=in_flight) as pool:
        return sum(status == 202 for status in pool.map(post, bodies))


def measure(n: int, in_flight: int, latency: float, with_sdk: bool = True) -> list[Figure]:
    sys.path.insert(0, str(repo_root()))  # the local SendGrid lives with the tests
    from dispatch.letters import build_invoice_placeholder_pdf
    from tests.fakes.sendgrid_server import FakeSendGrid

    messages = invoice_messages(
        n, build_invoice_placeholder_pdf("F-2026-000001", ["Consulting  1 200,00 EUR"])
    )
    runs: list[tuple[str, int, Callable]] = [
        (
            "channel, concurrent, keep-alive",
            in_flight,
            lambda s: through_channel(s, messages, in_flight, True),
        ),
        ("channel, one at a time, keep-alive", 1, lambda s: through_channel(s, messages, 1, True)),
        (
            "channel, concurrent, new connection each",
            in_flight,
            lambda s: through_channel(s, messages, in_flight, False),
        ),
    ]
    if with_sdk:
        runs.append(
            ("SDK transport (urllib), concurrent", in_flight, lambda s: through_sdk(s, messages, in_flight))
        )
    figures = []
    with FakeSendGrid(latency=latency) as server:
        for label, k, send in runs:
            server.clear()
            figures.append(timed(label, k, messages, lambda send=send: send(server)))
            if server.invalid or len(server.mails) != n:
                raise SystemExit(
                    f"{label}: {len(server.invalid)} refused, {len(server.mails)} accepted of {n}"
                )
    return figures


def report(figures: Sequence[Figure], latency: float) -> str:
    lines = [
        f"E-mail throughput, one worker, local SendGrid with {latency * 1000:.0f} ms latency per request",
        "",
        "| how | in flight | messages | seconds | messages/s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {f.label} | {f.in_flight} | {f.messages} | {f.seconds:.2f} | {f.per_second:.1f} |"
        for f in figures
    ]
    concurrent, sequential = figures[0], figures[1]
    lines += ["", f"concurrent / one at a time: {concurrent.per_second / sequential.per_second:.1f}x"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every answer")
    parser.add_argument("--no-sdk", action="store_true", help="skip the SDK-transport comparison")
    args = parser.parse_args(argv)
    print(report(measure(args.messages, args.in_flight, args.latency, not args.no_sdk), args.latency))


if __name__ == "__main__":
    main()
