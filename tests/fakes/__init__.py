"""Local stand-ins for the REMOTE providers (SendGrid, Twilio, Lob, an SMTP relay), for tests only.

Why: exactly-once sending (SPEC B1/B3) is decided by what happens at the provider's door — a 429
with ``Retry-After``, a 5xx, an answer that never comes although the provider got the request.
These servers reproduce those cases on 127.0.0.1, on demand and in order, and refuse every request
the project's request schemas for that provider refuse (``tests/fakes/schemas``, read by
``tests/fakes/openapi.py``), so the code under test meets the provider's rules, not a mock's.

This module holds what the three HTTP fakes share: the threaded server, the request log, the fault
queue and the lifecycle. Each provider module (``sendgrid_server``, ``twilio_server``,
``lob_server``) adds its request schemas, authentication, error shapes and operations.

Use (each fake is a context manager and works as a pytest fixture)::

    with FakeSendGrid() as server:              # started on 127.0.0.1:<free port>
        server.inject(status=429, headers={"Retry-After": "1"}, times=2)
        ...                                      # drive the code under test at server.url
        assert server.invalid == []              # nothing the provider would refuse was sent
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import gzip
import json
import re
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import PurePosixPath
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.fakes.openapi import OpenApiDocument, Operation, Problem, load_document

__all__ = [
    "FakeHTTPProvider",
    "Fault",
    "Problem",
    "RecordedRequest",
    "Refused",
    "Reply",
    "UploadedFile",
    "utc_now",
]


def utc_now() -> datetime:
    """The default clock of the fakes (a test may pass another, e.g. the run's as-of instant)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class UploadedFile:
    """A file part of a multipart request (Lob's letter PDF)."""

    filename: str
    content_type: str
    content: bytes


@dataclass
class RecordedRequest:
    """One request as the provider received it, with what the fake made of it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    raw_body: bytes
    body: Any  # decoded JSON / form (nested dict) / None
    files: dict[str, UploadedFile]
    received_at: datetime  # wall clock (UTC), for throughput measurements
    operation_id: str | None = None
    problems: list[Problem] = field(default_factory=list)  # why the provider refused it, if it did
    status: int | None = None  # status answered; None while pending or when no answer was given
    fault: Fault | None = None  # the injected fault that applied to it

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header by case-insensitive name."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return value
        return default

    @property
    def answered(self) -> bool:
        return self.status is not None


@dataclass
class Fault:
    """What the provider does to the next matching request instead of (or besides) answering it.

    - ``status`` (with optional ``headers``/``body``): answer that status; the request is NOT
      processed (a 429/5xx/4xx creates nothing). Without ``body`` the provider's own error shape
      for that status is sent.
    - ``hang``: after reading the request, wait that many seconds before answering (past the
      client's timeout). With ``accepted`` (default) the provider processed the request first —
      the message exists although the client saw no answer; ``close_after_hang`` then closes the
      connection instead of answering late. Without ``accepted`` nothing is created and the
      connection is closed after the wait.
    - ``reset_after_read``: after reading the request, reset the connection (TCP RST) without any
      answer; ``accepted`` says whether the provider processed it first (default True).
    - ``method``/``path`` (a regular expression searched in the path) restrict which requests the
      fault applies to; ``times`` is how many such requests it applies to.
    """

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    hang: float | None = None
    close_after_hang: bool = False
    reset_after_read: bool = False
    accepted: bool = True
    times: int = 1
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or re.search(self.path, path) is not None


@dataclass
class Reply:
    """An answer of a fake: ``body`` dict/list is sent as JSON, bytes as is, None as empty."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> tuple[bytes, dict[str, str]]:
        headers = dict(self.headers)
        if self.body is None:
            payload = b""
        elif isinstance(self.body, bytes):
            payload = self.body
        elif isinstance(self.body, str):
            payload = self.body.encode("utf-8")
            headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        else:
            payload = json.dumps(self.body).encode("utf-8")
            headers.setdefault("Content-Type", self.content_type)
        return payload, headers


class Refused(Exception):
    """Raised by an operation for a request the provider refuses (recorded in ``server.invalid``)."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


class _Handler(BaseHTTPRequestHandler):
    """Reads one HTTP request and hands it to the fake; knows how to answer, drop or reset."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs' sessions expect
    server_version = "fake-provider/1"
    fake: ClassVar[FakeHTTPProvider]

    def do_GET(self) -> None:
        self._serve()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr lines; the fake keeps its own log."""

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        raw = self._read_body()
        self.fake._serve(self, raw)

    def answer(self, reply: Reply) -> None:
        payload, headers = reply.encode()
        try:
            self.send_response(reply.status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.close_connection = True  # the client gave up (e.g. after a hang): nothing to do

    def drop(self) -> None:
        """Close the connection without answering (the client reads end-of-stream)."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), without answering."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # throughput benchmarks open many connections at once


class FakeHTTPProvider:
    """Base of the HTTP fakes: lifecycle, request log, fault queue, OpenAPI checks, dispatch.

    Subclasses set ``documents`` and ``handlers`` (operationId -> method name) and implement
    ``authenticate``, ``error_reply`` and ``refusal_reply`` in the provider's own shapes.
    """

    documents: ClassVar[tuple[str, ...]] = ()
    handlers: ClassVar[Mapping[str, str]] = {}

    def __init__(
        self,
        *,
        latency: float = 0.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.latency = latency  # seconds added before every answer (throughput benchmarks)
        self.clock: Callable[[], datetime] = clock or utc_now
        self.docs: list[OpenApiDocument] = [load_document(name) for name in self.documents]
        self._lock = threading.RLock()
        self._requests: list[RecordedRequest] = []
        self._faults: deque[Fault] = deque()
        self.errors: list[BaseException] = []  # the fake's own failures (a bug in it, not the provider)
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        """Listen on 127.0.0.1 at a free port, serving from a daemon thread."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        handler = type(f"{type(self).__name__}Handler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}@{self._httpd.server_address[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; requests still hanging are cut short."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise AssertionError(f"the fake {type(self).__name__} failed while serving: {self.errors[0]!r}")

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the fake server is not started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The origin, ``http://127.0.0.1:<port>`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        """The origin plus the schema's server path (Lob: ``…/v1``), i.e. the API base URL."""
        base = self.docs[0].base_path if self.docs else ""
        return self.url + base

    # -- what was received ----------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order (a snapshot)."""
        with self._lock:
            return list(self._requests)

    @property
    def invalid(self) -> list[RecordedRequest]:
        """The requests the provider refused as invalid (our request schema or its rules)."""
        return [r for r in self.requests if r.problems]

    def clear(self) -> None:
        """Forget requests, pending faults and (in subclasses) created resources."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self.errors.clear()

    # -- faults -----------------------------------------------------------------------------
    def inject(
        self,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        hang: float | None = None,
        close_after_hang: bool = False,
        reset_after_read: bool = False,
        accepted: bool = True,
        times: int = 1,
        method: str | None = None,
        path: str | None = None,
    ) -> Fault:
        """Queue a fault for the next ``times`` matching requests (faults apply in queue order)."""
        if status is None and hang is None and not reset_after_read:
            raise ValueError("a fault needs status=, hang= or reset_after_read=True")
        if times < 1:
            raise ValueError("times must be >= 1")
        fault = Fault(
            status=status,
            headers=dict(headers or {}),
            body=body,
            hang=hang,
            close_after_hang=close_after_hang,
            reset_after_read=reset_after_read,
            accepted=accepted,
            times=times,
            method=method,
            path=path,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # -- provider hooks (subclasses) ----------------------------------------------------------
    def authenticate(self, request: RecordedRequest) -> Reply | None:
        """None when the credentials are right, else the provider's 401 answer."""
        raise NotImplementedError

    def error_reply(self, status: int, message: str | None = None) -> Reply:
        """The provider's error answer for ``status`` (also the body of injected faults)."""
        raise NotImplementedError

    def refusal_reply(self, problems: list[Problem]) -> Reply:
        """The provider's answer to an invalid request."""
        raise NotImplementedError

    def now(self) -> datetime:
        """The provider's clock (``clock=`` of the constructor), always aware UTC."""
        moment = self.clock()
        if moment.tzinfo is None:
            raise ValueError("the fake's clock must return an aware datetime")
        return moment.astimezone(UTC)

    # -- serving ----------------------------------------------------------------------------
    def _find(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | str | None:
        verdict: str | None = None
        for document in self.docs:
            found = document.find(method, path)
            if isinstance(found, tuple):
                return found
            verdict = verdict or found
        return verdict

    def _decode(
        self, request: RecordedRequest, operation: Operation | None
    ) -> tuple[str | None, Any, list[Problem]]:
        """Decode the body by its content type; returns (media type, body, problems)."""
        content_type = request.header("Content-Type") or ""
        media_type = content_type.split(";")[0].strip().lower() or None
        raw = request.raw_body
        if (request.header("Content-Encoding") or "").lower() == "gzip":
            try:
                raw = gzip.decompress(raw)
            except OSError:
                return media_type, None, [Problem("body", None, "body is not valid gzip", "encoding")]
        if not raw:
            return media_type, None, []
        if media_type == "application/json":
            try:
                return media_type, json.loads(raw), []
            except ValueError as error:
                return media_type, None, [Problem("body", None, f"body is not valid JSON: {error}", "json")]
        if media_type == "application/x-www-form-urlencoded":
            pairs = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
            body = operation.decode_form_body(media_type, pairs) if operation else dict(pairs)
            return media_type, body, []
        if media_type == "multipart/form-data":
            pairs, files = _parse_multipart(content_type, raw)
            request.files = files
            body = operation.decode_form_body(media_type, pairs) if operation else dict(pairs)
            return media_type, body, []
        return media_type, raw.decode("utf-8", "replace"), []

    def _serve(self, handler: _Handler, raw: bytes) -> None:
        split = urlsplit(handler.path)
        request = RecordedRequest(
            method=handler.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=dict(handler.headers.items()),
            raw_body=raw,
            body=None,
            files={},
            received_at=utc_now(),
        )
        found = self._find(request.method, request.path)
        operation = found[0] if isinstance(found, tuple) else None
        request.operation_id = operation.operation_id if operation else None
        media_type, request.body, decode_problems = self._decode(request, operation)
        with self._lock:
            self._requests.append(request)  # received: whatever happens next, the provider got it
        fault = self._take_fault(request.method, request.path)
        request.fault = fault

        if fault is not None and not fault.accepted and (fault.reset_after_read or fault.hang):
            if fault.hang:
                self._stopping.wait(fault.hang)
                handler.drop()
            else:
                handler.reset()
            return
        if fault is not None and fault.status is not None:
            reply = self._fault_reply(fault)
        else:
            reply = self._process(request, found, media_type, decode_problems)
        if fault is not None and fault.hang:
            self._stopping.wait(fault.hang)
            if fault.close_after_hang or self._stopping.is_set():
                handler.drop()
                return
        if fault is not None and fault.reset_after_read:
            handler.reset()
            return
        if self.latency:
            self._stopping.wait(self.latency)
        request.status = reply.status
        handler.answer(reply)

    def _fault_reply(self, fault: Fault) -> Reply:
        if fault.body is None:
            reply = self.error_reply(fault.status or 500)
        else:
            reply = Reply(fault.status or 500, fault.body)
        reply.headers.update(fault.headers)
        return reply

    def _process(
        self,
        request: RecordedRequest,
        found: tuple[Operation, dict[str, str]] | str | None,
        media_type: str | None,
        decode_problems: list[Problem],
    ) -> Reply:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        if found is None:
            return self.error_reply(404)
        if found == "method":
            return self.error_reply(405)
        assert isinstance(found, tuple)
        operation, path_params = found
        method_name = self.handlers.get(operation.operation_id)
        if method_name is None:
            return self.error_reply(501, f"{operation.operation_id} is not implemented by the fake")
        problems = decode_problems or [
            *operation.check_parameters(path_params, request.query, request.headers),
            *operation.check_body(media_type, request.body),
        ]
        try:
            if problems:
                raise Refused(problems)
            reply: Reply = getattr(self, method_name)(request, operation, path_params)
        except Refused as refusal:
            request.problems = list(refusal.problems)
            return self.refusal_reply(refusal.problems)
        except Exception as error:  # a bug of the fake: answer, and fail the test at __exit__
            self.errors.append(error)
            return Reply(500, {"fake_server_error": repr(error)})
        return reply


def _parse_multipart(content_type: str, raw: bytes) -> tuple[list[tuple[str, Any]], dict[str, UploadedFile]]:
    """Fields and files of a multipart/form-data body; a file field's value is ``upload.<ext>``.

    Lob takes an uploaded file by its kind (``….pdf``/``….html``): the name's extension is kept,
    so our schema checks the kind of file, and the rest replaced, so a real name like
    ``F-2026-0001.pdf`` is neither refused for its characters nor needed by any check.
    """
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    pairs: list[tuple[str, Any]] = []
    files: dict[str, UploadedFile] = {}
    if not message.is_multipart():
        return pairs, files
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        payload = part.get_payload(decode=True) or b""
        filename = part.get_filename()
        if filename is not None:
            files[str(name)] = UploadedFile(filename, part.get_content_type(), payload)
            pairs.append((str(name), "upload" + PurePosixPath(filename).suffix.lower()))
        else:
            pairs.append((str(name), payload.decode(part.get_content_charset() or "utf-8", "replace")))
    return pairs, files


def basic_credentials(request: RecordedRequest) -> tuple[str, str] | None:
    """The (user, password) of an HTTP Basic ``Authorization`` header, or None."""
    value = request.header("Authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        user, _, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except ValueError:
        return None
    return user, password
