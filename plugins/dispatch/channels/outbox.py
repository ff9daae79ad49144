"""The embedded outbox: the default backend, which hands messages over by writing files.

``<root>/email/<action_id>.eml``, ``<root>/sms/<action_id>.json`` and
``<root>/letter/<action_id>.pdf`` (CONTRACT §6). A file appears whole or not at all (temp
file, fsync, then a hard link to the final name), and an existing file is never replaced:
``os.link`` fails when the name exists, so two workers handing over the same action at the
same instant produce one file, and both learn it was handed over. Because the file is the
hand-over, the outbox can always answer :meth:`OutboxChannel.was_handed_over` (SPEC "Time",
settling actions a dead run left ``sending``). Each letter is also listed in its day's
print manifest, ``<root>/letter-manifests/manifest-YYYY-MM-DD.csv``
(:mod:`dispatch.channels.formats.letter_manifest`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path

from dispatch.channels.base import (
    ChannelError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.formats.mime import deliver_at_iso, email_bytes, parse_deliver_at
from dispatch.vocabulary import ChannelName

log = logging.getLogger(__name__)

#: File name suffix per channel.
SUFFIXES: dict[str, str] = {ChannelName.EMAIL: ".eml", ChannelName.SMS: ".json", ChannelName.LETTER: ".pdf"}

#: "Can hold any future delivery time", kept small enough that ``now + ahead`` never overflows.
FAR_AHEAD = dt.timedelta(days=365 * 100)

# An action id becomes a file name and a Message-ID: no path separators, no leading dot
# (temp files start with one), no empty atoms.
_SAFE_ACTION_ID = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
_MAX_ACTION_ID = 128

_TMP_PREFIX = ".tmp-"
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def is_safe_action_id(action_id: str) -> bool:
    """Whether ``action_id`` can name an outbox file without escaping its directory."""
    return len(action_id) <= _MAX_ACTION_ID and _SAFE_ACTION_ID.fullmatch(action_id) is not None


def _fsync_directory(directory: Path) -> None:
    """Make the new name durable: a crash must not lose a file whose action was recorded sent."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms that cannot open a directory (Windows): nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_once(path: Path, content: bytes, *, sync_directory: bool = True) -> bool:
    """Write ``content`` to ``path`` atomically unless ``path`` exists; True if this call wrote it.

    ``sync_directory=False`` leaves the directory's fsync (which makes the new name durable)
    to the caller, who writes many files and syncs their directory once before saying any
    of them was handed over. Raises ``OSError`` when nothing could be written (disk full,
    permissions).
    """
    tmp = path.with_name(f"{_TMP_PREFIX}{path.stem}-{secrets.token_hex(8)}")
    fd = os.open(tmp, _OPEN_FLAGS, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        if sync_directory:
            _fsync_directory(path.parent)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


#: fsyncs in flight at once in :func:`write_all`: the file system commits concurrent fsyncs
#: together (one journal commit for many files), so a chunk's files are made durable in a
#: few commits instead of one per file
FSYNC_CONCURRENCY = 16
#: bytes :meth:`OutboxChannel.send_many` holds rendered before writing them (a chunk of
#: letters or e-mails with large PDFs is written in several rounds)
MAX_PENDING_BYTES = 32 * 1024 * 1024


def write_all(items: Sequence[tuple[Path, bytes]]) -> list[bool | OSError]:
    """:func:`write_once` for many files at once, with the same guarantee for each.

    Every file is written whole to its own temporary file, all of them are fsynced
    concurrently (``FSYNC_CONCURRENCY`` at a time: the file system groups them into a few
    commits), and only then is each one whose fsync succeeded linked to its name, unless the
    name exists. Per item: True if this call wrote it, False if the name already existed,
    the ``OSError`` if it could not be written (nothing is left under its name then). The
    directories' fsync is the caller's, once, before saying any was handed over.
    """
    if not items:
        return []
    results: list[bool | OSError] = [False] * len(items)
    temps: list[Path | None] = [None] * len(items)
    fds: dict[int, int] = {}  # item -> open descriptor of its temporary file
    try:
        for i, (path, content) in enumerate(items):
            tmp = path.with_name(f"{_TMP_PREFIX}{path.stem}-{secrets.token_hex(8)}")
            try:
                fd = os.open(tmp, _OPEN_FLAGS, 0o644)
            except OSError as exc:
                results[i] = exc
                continue
            temps[i] = tmp
            fds[i] = fd
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                results[i] = exc
        to_sync = [i for i in fds if not isinstance(results[i], OSError)]
        synced = list(_fsync_pool().map(_fsync_or_error, [fds[i] for i in to_sync]))
        for i, error in zip(to_sync, synced, strict=True):
            if error is not None:
                results[i] = error
        for i, fd in list(fds.items()):
            del fds[i]
            try:
                os.close(fd)
            except OSError as exc:
                if not isinstance(results[i], OSError):
                    results[i] = exc
        for i, (path, _content) in enumerate(items):
            written = temps[i]
            if written is None or isinstance(results[i], OSError):
                continue
            try:
                os.link(written, path)
                results[i] = True
            except FileExistsError:
                results[i] = False
            except OSError as exc:
                results[i] = exc
        return results
    finally:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        for leftover in temps:
            if leftover is not None:
                with contextlib.suppress(OSError):
                    os.unlink(leftover)


_POOL_LOCK = threading.Lock()
_POOLS: dict[int, ThreadPoolExecutor] = {}  # per process id


def _fsync_pool() -> ThreadPoolExecutor:
    """The threads that fsync: idle between chunks, started once per process, not per chunk.
    Keyed by process id: a process forked after using it (a prefork worker) has none of its
    threads, and would wait forever on a pool it inherited."""
    pid = os.getpid()
    with _POOL_LOCK:
        pool = _POOLS.get(pid)
        if pool is None:
            _POOLS.clear()  # an inherited pool's threads are not in this process
            pool = _POOLS[pid] = ThreadPoolExecutor(
                max_workers=FSYNC_CONCURRENCY, thread_name_prefix="outbox-fsync"
            )
        return pool


def _forget_pools_after_fork() -> None:
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()  # it may have been held by a thread the child does not have
    _POOLS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _fsync_or_error(fd: int) -> OSError | None:
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc
    return None


class OutboxChannel:
    """One outbox directory for one channel; implements :class:`dispatch.channels.base.Channel`."""

    provider = "outbox"

    def __init__(self, root_dir: Path, channel: str, default_sender: str | None = None) -> None:
        if channel not in SUFFIXES:
            raise ValueError(f"the outbox has no channel {channel!r} (known: {', '.join(SUFFIXES)})")
        self.root_dir = Path(root_dir)
        self.channel = ChannelName(channel)
        self.default_sender = default_sender
        self.directory = self.root_dir / channel
        self._directory_ready = False

    # --- Channel protocol -------------------------------------------------------------

    def max_schedule_ahead(self) -> dt.timedelta | None:
        """Every file records its delivery time, so any future one can be held; whether a
        channel may go ahead of its day is the due rule's decision (letters never do:
        :data:`dispatch.rules.scheduling.UNSCHEDULABLE_CHANNELS`)."""
        return FAR_AHEAD

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """Write one file per message, in order; a message already in the outbox is not rewritten.

        Raises :class:`FatalChannelError`, before writing anything, when a message is for
        another channel or the outbox directory is unusable.
        """
        misrouted = [m.action_id for m in messages if m.channel != self.channel]
        if misrouted:
            raise FatalChannelError(
                f"{self.channel} outbox was given messages of another channel: {', '.join(misrouted[:5])}"
            )
        if not messages:
            return []
        self._prepare_directory()
        results: list[SendResult | ChannelError | None] = [None] * len(messages)
        pending: list[tuple[int, Path, bytes]] = []
        pending_bytes = 0
        for i, message in enumerate(messages):
            prepared = self._prepare_one(message)
            if not isinstance(prepared, tuple):
                results[i] = prepared
                continue
            pending.append((i, *prepared))
            pending_bytes += len(prepared[1])
            if pending_bytes >= MAX_PENDING_BYTES:
                self._write_pending(messages, pending, results)
                pending_bytes = 0
        self._write_pending(messages, pending, results)
        # One directory fsync for the whole chunk, before any result says "handed over": the
        # names are durable when the outcomes are recorded, at one fsync instead of one per file.
        _fsync_directory(self.directory)
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Nothing to let go of: every file is closed once written."""

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        """The file is the hand-over: its result if it exists, ``False`` if it does not
        (``None``: a letter exists but its print manifest cannot be written)."""
        if not is_safe_action_id(action_id):
            return False  # no file can ever have been written under this id
        path = self.path_for(action_id)
        if not path.exists():
            return False
        if self._list_letter(path) is not None:  # a dead run may have died before listing it
            return None
        return self._existing_result(action_id, path)

    # --- helpers ----------------------------------------------------------------------

    def path_for(self, action_id: str) -> Path:
        """Where this action's file is (or would be)."""
        return self.directory / f"{action_id}{SUFFIXES[self.channel]}"

    def provider_message_id(self, action_id: str) -> str:
        """The file's path relative to the outbox root, e.g. ``email/act_1.eml``."""
        return f"{self.channel}/{action_id}{SUFFIXES[self.channel]}"

    def _prepare_directory(self) -> None:
        """Create the directory and prove hard links work there, once per instance.

        A read-only or link-less file system is a configuration error: stopping the batch
        before anything is written beats turning every action into a retry.
        """
        if self._directory_ready:
            return
        probe = self.directory / f"{_TMP_PREFIX}probe-{secrets.token_hex(8)}"
        linked = probe.with_name(probe.name + "-link")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            os.close(os.open(probe, _OPEN_FLAGS, 0o644))
            os.link(probe, linked)
        except OSError as exc:
            raise FatalChannelError(f"outbox directory {self.directory} is not usable: {exc}") from exc
        finally:
            for leftover in (probe, linked):
                with contextlib.suppress(OSError):
                    os.unlink(leftover)
        self._directory_ready = True

    def _prepare_one(self, message: OutgoingMessage) -> SendResult | ChannelError | tuple[Path, bytes]:
        """The message's result if it needs no writing (refused, or handed over before),
        else its path and the content to write there."""
        if not is_safe_action_id(message.action_id):
            return PermanentError(f"action id {message.action_id!r} cannot name an outbox file")
        path = self.path_for(message.action_id)
        if path.exists():  # handed over before: exactly once, and no need to render again
            if problem := self._list_letter(path):
                return TransientError(problem)
            return self._existing_result(message.action_id, path)
        try:
            return path, self._render(message)
        except ValueError as exc:
            return PermanentError(f"{self.channel} message refused: {exc}")
        except Exception as exc:
            # A renderer bug on one odd message (fpdf2 on some text) must not abort the batch
            # and lose the results of the messages already written.
            log.exception("outbox could not render action %s", message.action_id)
            return PermanentError(f"{self.channel} message could not be rendered: {exc!r}")

    def _write_pending(
        self,
        messages: Sequence[OutgoingMessage],
        pending: list[tuple[int, Path, bytes]],
        results: list[SendResult | ChannelError | None],
    ) -> None:
        """Write the rendered files of ``pending`` (:func:`write_all`) and set their results;
        empties ``pending``."""
        written = write_all([(path, content) for _i, path, content in pending])
        for (i, path, content), outcome in zip(pending, written, strict=True):
            message = messages[i]
            if isinstance(outcome, OSError):
                results[i] = TransientError(f"cannot write {path}: {outcome}")
            elif not outcome:  # another worker (or this very chunk) won the race for this action
                results[i] = self._existing_result(message.action_id, path)
            elif problem := self._list_letter(path, content):
                results[i] = TransientError(problem)  # the next try finds the file and lists it
            else:
                results[i] = SendResult(
                    action_id=message.action_id,
                    provider=self.provider,
                    provider_message_id=self.provider_message_id(message.action_id),
                    deliver_at=message.deliver_at.astimezone(dt.UTC),
                )
        pending.clear()

    def _list_letter(self, path: Path, content: bytes | None = None) -> str | None:
        """Add a letter to its day's print manifest (:mod:`~dispatch.channels.formats.letter_manifest`);
        returns the problem when the manifest cannot be written. ``content``: the bytes of a file this
        call has just written (listed without a look); an existing file is listed if missing."""
        if self.channel != ChannelName.LETTER:
            return None
        from dispatch.channels.formats import letter_manifest

        try:
            if content is not None:
                letter_manifest.record_letter(self.root_dir, path, content)
            else:
                letter_manifest.ensure_listed(self.root_dir, path)
        except OSError as exc:
            log.exception("letter %s cannot be listed in its print manifest", path)
            return f"letter {path.name} is written but its print manifest cannot be: {exc}"
        except Exception:  # a letter edited by hand: still handed over, just not listable
            log.exception("letter %s cannot be read for its print manifest", path)
        return None

    def _render(self, message: OutgoingMessage) -> bytes:
        """The file content; ``ValueError`` for a message that can never be handed over."""
        if message.deliver_at.tzinfo is None:
            raise ValueError("deliver_at must be timezone-aware")
        if self.channel == ChannelName.EMAIL:
            return _render_email(message, self.default_sender)
        if self.channel == ChannelName.SMS:
            return _render_sms(message)
        from dispatch.channels.formats.letter_pdf import (
            letter_for_message,  # fpdf2 and pypdf: only letters need them
        )

        return letter_for_message(message)

    def _existing_result(self, action_id: str, path: Path) -> SendResult:
        try:
            deliver_at = _read_deliver_at(self.channel, path)
        except Exception as exc:  # any unreadable file still means "handed over"
            # Files are written whole, so this means someone edited it; it was handed over all the same.
            log.warning("outbox file %s has no readable delivery time (%s); using its mtime", path, exc)
            deliver_at = dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.UTC)
        return SendResult(
            action_id=action_id,
            provider=self.provider,
            provider_message_id=self.provider_message_id(action_id),
            deliver_at=deliver_at,
        )


def _render_email(message: OutgoingMessage, default_sender: str | None) -> bytes:
    """What :func:`~dispatch.channels.formats.mime.build_email` makes of ``message``, as bytes
    (written directly when its headers are plain: :func:`~dispatch.channels.formats.mime.email_bytes`)."""
    try:
        return email_bytes(message, default_sender=default_sender)
    except UnicodeError as exc:  # a value the non-SMTPUTF8 policy cannot encode
        raise ValueError(str(exc)) from exc


def _render_sms(message: OutgoingMessage) -> bytes:
    if len(message.recipients) != 1:
        raise ValueError(f"an SMS needs exactly one recipient number, got {len(message.recipients)}")
    from dispatch.channels.formats.sms_text import sms_safe, sms_safe_line

    record = {
        "action_id": message.action_id,
        "invoice_id": message.invoice_id,
        "org_id": message.org_id,
        "to": sms_safe_line(message.recipients[0]),
        "body": sms_safe(message.body_text),  # no control character, as Twilio would get it
        "deliver_at": deliver_at_iso(message.deliver_at),
    }
    return (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _read_deliver_at(channel: str, path: Path) -> dt.datetime:
    if channel == ChannelName.EMAIL:
        with path.open("rb") as handle:
            headers = BytesHeaderParser(policy=default_policy).parse(handle)
        value = headers["X-Deliver-At"]
        if value is None:
            raise ValueError("no X-Deliver-At header")
        return parse_deliver_at(str(value))
    if channel == ChannelName.SMS:
        return parse_deliver_at(json.loads(path.read_text(encoding="utf-8"))["deliver_at"])
    from dispatch.channels.formats.letter_pdf import read_letter_metadata

    return parse_deliver_at(read_letter_metadata(path)["DeliverAt"])
