"""A local SendGrid: v3 Mail Send and the bounces / blocks / invalid-e-mails suppression lists.

Why: the e-mail channel must count a message as sent only on SendGrid's 202 with its
``X-Message-Id`` (SPEC B3), and learn bounces later from the suppression lists. This fake answers
in SendGrid's shapes, refuses what our request schemas (``tests/fakes/schemas/sendgrid-*.json``)
and SendGrid's documented rules refuse, and lets a test seed the suppression lists and inject
faults. It also answers the Email Activity look-up the settling of a dead claim uses.

Point the real SDK at it::

    sg = sendgrid.SendGridAPIClient(api_key=server.api_key, host=server.url)
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import resource
import secrets
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, ClassVar, Self

from tests.fakes import FakeHTTPProvider, Problem, RecordedRequest, Refused, Reply
from tests.fakes.openapi import Operation

MAIL_DOCUMENT = "sendgrid-mail-send.json"
SUPPRESSIONS_DOCUMENT = "sendgrid-suppressions.json"
ACTIVITY_DOCUMENT = "sendgrid-email-activity.json"

_ACTIVITY_CONDITION = re.compile(r"unique_args\['(\w+)'\]\s*=\s*\"([^\"]*)\"")

# SendGrid refuses a send_at more than 72 hours ahead (its documentation says so in prose).
SEND_AT_HORIZON = timedelta(hours=72)

_ERROR_MESSAGES = {
    400: "invalid request",
    401: "authorization required",
    403: "access forbidden",
    404: "not found",
    405: "method not allowed",
    413: "content too large",
    429: "too many requests",
    500: "internal server error",
    501: "not implemented",
    502: "bad gateway",
    503: "service unavailable",
}


@dataclass(frozen=True)
class AcceptedMail:
    """A mail SendGrid accepted (answered 202): its id and the request body it accepted."""

    message_id: str
    body: dict[str, Any]
    accepted_at: datetime

    @property
    def recipients(self) -> list[str]:
        """Every to/cc/bcc address of every personalization, in order."""
        return [
            recipient["email"]
            for personalization in self.body.get("personalizations", [])
            for kind in ("to", "cc", "bcc")
            for recipient in personalization.get(kind, [])
        ]

    @property
    def send_at(self) -> int | None:
        """The delivery time asked for (unix seconds), personalization first as SendGrid reads it."""
        for personalization in self.body.get("personalizations", []):
            if "send_at" in personalization:
                return int(personalization["send_at"])
        value = self.body.get("send_at")
        return None if value is None else int(value)


@dataclass(frozen=True)
class SuppressionEntry:
    """One entry of a suppression list (bounces, blocks, invalid e-mails)."""

    email: str
    created: int
    reason: str
    status: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"created": self.created, "email": self.email, "reason": self.reason}
        if self.status is not None:
            data["status"] = self.status
        return data


def _unix(moment: int | float | datetime) -> int:
    return int(moment.timestamp()) if isinstance(moment, datetime) else int(moment)


class FakeSendGrid(FakeHTTPProvider):
    """SendGrid v3: ``POST /v3/mail/send``, ``GET /v3/suppression/{bounces,blocks,invalid_emails}``
    and the Email Activity look-up ``GET /v3/messages?query=unique_args['action_id']="…"``.

    Attributes for tests: ``mails`` (accepted mails), ``requests``, ``invalid``; seed the lists
    with ``add_bounce`` / ``add_block`` / ``add_invalid_email``.
    """

    documents: ClassVar[tuple[str, ...]] = (MAIL_DOCUMENT, SUPPRESSIONS_DOCUMENT, ACTIVITY_DOCUMENT)
    handlers: ClassVar[dict[str, str]] = {
        "SendMail": "_send_mail",
        "ListSuppressionBounces": "_list_bounces",
        "ListSuppressionBlock": "_list_blocks",
        "ListInvalidEmail": "_list_invalid_emails",
        "ListMessages": "_list_messages",
    }

    def __init__(self, api_key: str = "SG.fake-key.for-tests", **options: Any):
        super().__init__(**options)
        self.api_key = api_key
        self._mails: list[AcceptedMail] = []
        self._lists: dict[str, list[SuppressionEntry]] = {"bounces": [], "blocks": [], "invalid_emails": []}

    # -- for tests --------------------------------------------------------------------------
    @property
    def mails(self) -> list[AcceptedMail]:
        """The mails SendGrid accepted (202), in order; sandbox-mode sends are not among them."""
        with self._lock:
            return list(self._mails)

    def env(self) -> dict[str, str]:
        """The project's settings (CONTRACT §1) that point the SendGrid channel at this server."""
        return {"SENDGRID_API_KEY": self.api_key, "SENDGRID_API_HOST": self.url}

    def add_bounce(
        self,
        email: str,
        created: int | float | datetime,
        reason: str = "550 5.1.1 User unknown",
        status: str = "5.1.1",
    ) -> None:
        self._add("bounces", SuppressionEntry(email, _unix(created), reason, status))

    def add_block(
        self,
        email: str,
        created: int | float | datetime,
        reason: str = "blocked by recipient",
        status: str = "4.0.0",
    ) -> None:
        self._add("blocks", SuppressionEntry(email, _unix(created), reason, status))

    def add_invalid_email(
        self,
        email: str,
        created: int | float | datetime,
        reason: str = "Mail domain mentioned in email address is unknown",
    ) -> None:
        self._add("invalid_emails", SuppressionEntry(email, _unix(created), reason))

    def _add(self, kind: str, entry: SuppressionEntry) -> None:
        with self._lock:
            self._lists[kind].append(entry)

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._mails.clear()
            for entries in self._lists.values():
                entries.clear()

    # -- provider shapes ----------------------------------------------------------------------
    def authenticate(self, request: RecordedRequest) -> Reply | None:
        header = request.header("Authorization")
        if not header:
            return self.error_reply(401, "authorization required")
        if header != f"Bearer {self.api_key}":
            return self.error_reply(401, "The provided authorization grant is invalid, expired, or revoked")
        return None

    def error_reply(self, status: int, message: str | None = None) -> Reply:
        text = message or _ERROR_MESSAGES.get(status, "error")
        return Reply(status, {"errors": [{"message": text, "field": None, "help": None}]})

    def refusal_reply(self, problems: list[Problem]) -> Reply:
        errors = [{"message": p.message, "field": p.field, "help": None} for p in problems]
        return Reply(400, {"errors": errors})

    # -- operations -------------------------------------------------------------------------
    def _send_mail(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        body = request.body
        if not isinstance(body, dict):  # a client killed before its body got through
            raise Refused([Problem("body", None, "The request body is required.", "required")])
        problems = list(self._mail_rules(body))
        if problems:
            raise Refused(problems)
        if body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable"):
            return Reply(200)  # SendGrid checks a sandbox send and answers 200, sending nothing
        message_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        with self._lock:
            self._mails.append(AcceptedMail(message_id, body, self.now()))
        return Reply(202, None, {"X-Message-Id": message_id})

    def _mail_rules(self, body: dict[str, Any]) -> Iterable[Problem]:
        """SendGrid's rules the schema cannot say (from its documentation and error messages)."""
        personalizations = body.get("personalizations", [])
        if not personalizations:
            yield Problem(
                "body",
                "personalizations",
                "The personalizations field is required and must have at least one personalization.",
                "minItems",
            )
        template = body.get("template_id")
        contents = body.get("content") or []
        if not template and not contents:
            yield Problem(
                "body",
                "content",
                "Unless a valid template_id is provided, the content parameter is required. "
                "There must be at least one defined content block.",
                "required",
            )
        types = [c.get("type") for c in contents]
        if "text/plain" in types and types.index("text/plain") != 0:
            yield Problem(
                "body",
                "content",
                "If present, text/plain must be first, followed by text/html, followed by any other content.",
                "order",
            )
        every_personalization_has_subject = bool(personalizations) and all(
            p.get("subject") for p in personalizations
        )
        if not template and not body.get("subject") and not every_personalization_has_subject:
            yield Problem(
                "body",
                "subject",
                "The subject is required. You can get around this requirement if you use a template with "
                "a subject defined or if every personalization has a subject defined.",
                "required",
            )
        if "reply_to" in body and "reply_to_list" in body:
            yield Problem(
                "body",
                "reply_to_list",
                "You can use either the reply_to property or reply_to_list property but not both.",
                "exclusive",
            )
        horizon = int((self.now() + SEND_AT_HORIZON).timestamp())
        places = [("send_at", body.get("send_at"))] + [
            (f"personalizations.{i}.send_at", p.get("send_at")) for i, p in enumerate(personalizations)
        ]
        for place, send_at in places:
            if send_at is not None and send_at > horizon:
                yield Problem(
                    "body",
                    place,
                    "The send_at parameter cannot be more than 72 hours in the future.",
                    "send_at",
                )
        for index, personalization in enumerate(personalizations):
            seen: set[str] = set()
            for kind in ("to", "cc", "bcc"):
                for recipient in personalization.get(kind, []):
                    address = recipient["email"].lower()
                    if address in seen:
                        yield Problem(
                            "body",
                            f"personalizations.{index}",
                            "Each email address in the personalization block should be unique between "
                            "to, cc, and bcc. We found the first duplicate instance of "
                            f"[{recipient['email']}] in the personalizations.{index}.{kind} field.",
                            "unique",
                        )
                    seen.add(address)
        for index, attachment in enumerate(body.get("attachments", [])):
            try:
                base64.b64decode(attachment["content"], validate=True)
            except (binascii.Error, ValueError):
                yield Problem(
                    "body",
                    f"attachments.{index}.content",
                    "The attachment content must be base64 encoded.",
                    "base64",
                )

    def _list_messages(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        """``GET /v3/messages?query=unique_args['k']="v"&limit=N``: the accepted mails whose
        custom args match every condition, newest first (SendGrid's Email Activity API)."""
        query = (request.query.get("query") or [""])[0]
        conditions = _ACTIVITY_CONDITION.findall(query)
        if not conditions:
            return Reply(400, {"errors": [{"message": "invalid query", "field": "query"}]})
        limit = int((request.query.get("limit") or ["10"])[0])
        with self._lock:
            mails = list(self._mails)
        matching = [
            m
            for m in reversed(mails)
            if all(
                any(p.get("custom_args", {}).get(k) == v for p in m.body.get("personalizations", []))
                for k, v in conditions
            )
        ]
        return Reply(
            200,
            {
                "messages": [
                    {
                        "from_email": m.body.get("from", {}).get("email"),
                        "msg_id": f"{m.message_id}.filterdrecv-1-1",
                        "subject": m.body.get("subject"),
                        "to_email": (m.recipients or [None])[0],
                        "status": "delivered",
                        "opens_count": 0,
                        "clicks_count": 0,
                        "last_event_time": m.accepted_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    }
                    for m in matching[:limit]
                ]
            },
        )

    def _list_bounces(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        return self._list("bounces", request)

    def _list_blocks(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        return self._list("blocks", request)

    def _list_invalid_emails(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        return self._list("invalid_emails", request)

    def _list(self, kind: str, request: RecordedRequest) -> Reply:
        """Entries created within [start_time, end_time] (inclusive), oldest first, then offset/limit."""

        def number(name: str) -> int | None:
            values = request.query.get(name)
            return int(values[0]) if values else None

        start, end = number("start_time"), number("end_time")
        offset, limit = number("offset") or 0, number("limit")
        pattern = _email_filter(request.query.get("email", [None])[0])
        with self._lock:
            entries = sorted(self._lists[kind], key=lambda e: (e.created, e.email))
        selected = [
            e
            for e in entries
            if (start is None or e.created >= start)
            and (end is None or e.created <= end)
            and (pattern is None or pattern.match(e.email))
        ]
        page = selected[offset:] if limit is None else selected[offset : offset + limit]
        return Reply(200, [e.as_json() for e in page])


def _email_filter(text: str | None) -> re.Pattern[str] | None:
    """SendGrid's ``email`` filter: a prefix, where ``%`` stands for any run of characters."""
    if not text:
        return None
    return re.compile(
        "".join(".*" if part == "%" else re.escape(part) for part in re.split("(%)", text)), re.I
    )


# --- in a process of its own (benchmarks) ------------------------------------------------------


@dataclass(frozen=True)
class ServedSummary:
    """What a :class:`SendGridProcess` did, read when it stops."""

    requests: int
    accepted: int
    invalid: int
    problems: list[str]
    errors: list[str]
    cpu_seconds: float  # the server process's own CPU (user + system)


class SendGridProcess:
    """The local SendGrid served by another Python process, as the real API would be.

    Why: in the client's process the fake's work (HTTP parsing, the request-schema check of
    every mail) shares the client's interpreter and GIL, so a throughput figure measures both
    and the round trip includes the server's queue for the GIL. Here the server has its own
    interpreter; it still validates every request. ``latency`` is waited per request in the
    request's own thread (one per connection), so it never holds back other requests.

    ``url`` and ``api_key`` as :class:`FakeSendGrid`; :meth:`stop` returns the summary.
    """

    def __init__(self, *, latency: float = 0.0, api_key: str = "SG.fake-key.for-tests") -> None:
        self.latency = latency
        self.api_key = api_key
        self.url = ""
        self.summary: ServedSummary | None = None
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> Self:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "tests.fakes.sendgrid_server", "--latency", str(self.latency)]
        self._process = subprocess.Popen(
            [*command, "--api-key", self.api_key],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
            text=True,
        )
        line = _stream(self._process.stdout).readline()
        if not line:
            self._process.wait(timeout=10)
            raise RuntimeError(f"the SendGrid process ended before serving (exit {self._process.returncode})")
        self.url = json.loads(line)["url"]
        return self

    def stop(self) -> ServedSummary:
        """Stop serving (closing its stdin) and read what it served."""
        if self.summary is not None:
            return self.summary
        process, self._process = self._process, None
        if process is None:
            raise RuntimeError("the SendGrid process is not started")
        _stream(process.stdin).close()
        line = _stream(process.stdout).readline()
        process.wait(timeout=30)
        if not line:
            raise RuntimeError(f"the SendGrid process ended without a summary (exit {process.returncode})")
        self.summary = ServedSummary(**json.loads(line))
        return self.summary

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            try:
                self.stop()
            finally:
                if self._process is not None and self._process.poll() is None:
                    self._process.kill()


def _stream(pipe: IO[str] | None) -> IO[str]:
    if pipe is None:
        raise RuntimeError("the SendGrid process has no pipe")
    return pipe


def serve(argv: Sequence[str] | None = None) -> None:
    """The child of :class:`SendGridProcess`: print the URL, serve until stdin closes, then
    print the summary (one JSON line each)."""
    parser = argparse.ArgumentParser(description="the local SendGrid, until stdin closes")
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--api-key", default="SG.fake-key.for-tests")
    args = parser.parse_args(argv)
    server = FakeSendGrid(api_key=args.api_key, latency=args.latency).start()
    print(json.dumps({"url": server.url}), flush=True)
    sys.stdin.read()
    server.stop()
    invalid = server.invalid
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary = {
        "requests": len(server.requests),
        "accepted": len(server.mails),
        "invalid": len(invalid),
        "problems": [str(p) for r in invalid[:3] for p in r.problems],
        "errors": [repr(e) for e in server.errors[:3]],
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    serve()
