"""Letters through an HTTP print-and-mail API in the style of Lob's ``POST /v1/letters``.

One request per letter: ``multipart/form-data`` with the PDF (the outbox's cover letter with
the postal address block, then the invoice), the recipient's address as fields, HTTP Basic
with the API key as user name, and ``Idempotency-Key: <action_id>``.

**The idempotency key is what makes a retry safe.** The provider answers a repeated request
carrying the same key with the letter it already created, so a request whose answer was lost
(read timeout, connection cut after the request was written) is simply sent again within the
run, with the same key: at most one letter is printed. If every attempt ends without an
answer, the channel *asks* the provider (``GET /letters?metadata[action_id]=…``) before
giving up: a letter found is "sent"; none found is a plain transient failure (a later run
sends it, again with the key); no answer at all is ``delivery_unknown``.

:meth:`PrintApiChannel.was_handed_over` (an action a dead run left ``sending``) asks the same
question rather than answering "send again, the key dedups": a provider keeps idempotency
keys for a limited time (Lob: 24 hours) and a dead run is settled at the next run, which
after a weekend is 72 hours later — a re-POST then could print a second letter. The
look-up is reliable whatever the delay; the key still covers the short window in which a
just-created letter might not be listed yet.

Letters are never scheduled (SPEC "Time": a letter never goes ahead of its local day):
:meth:`PrintApiChannel.max_schedule_ahead` is None and no ``send_date`` is sent.

Lob's rules this module follows: every PDF page must be US Letter (8.5 x 11 in), so the A4
pages are scaled to fit (:func:`fit_to_us_letter`); the address is printed by Lob on an extra
first page (``address_placement=insert_blank_page``) so that it never covers our own cover
page; a US address is sent with city, state and ZIP and ``address_country=US``, a foreign
one with city and postcode only (Lob's schema refuses city + state + postcode abroad).
"""

from __future__ import annotations

import datetime as dt
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from dispatch.channels.base import (
    ChannelError,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.formats.postal_address import AddressError, PostalAddress, parse_postal_address
from dispatch.channels.provider_http import error_for_status, is_name_resolution_failure, retry_after_seconds
from dispatch.channels.retry import ConcurrentSender, RetryPolicy, call_with_retry
from dispatch.config.settings import Settings, reveal
from dispatch.errors import DispatchError
from dispatch.rules.control_chars import clean_line
from dispatch.vocabulary import ChannelName

PROVIDER = "printapi"
US_LETTER = (612.0, 792.0)  # points: 8.5 x 11 in
ADDRESS_PLACEMENT = "insert_blank_page"
USE_TYPE = "operational"  # an invoice is operational mail, not marketing
_METADATA_MAX = 500


@dataclass
class _Attempts:
    """What the attempts for one letter have seen; ``ambiguous``: a request may have arrived
    and been accepted although no answer came back."""

    ambiguous: bool = False


class PrintApiChannel:
    """Implements :class:`dispatch.channels.base.Channel` for letters through the print API."""

    provider = PROVIDER
    channel = ChannelName.LETTER

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        from_address: str,
        default_country: str | None = None,
        timeout: float = 30.0,
        max_in_flight: int = 4,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.from_address = from_address
        self.default_country = default_country
        self.max_in_flight = max(1, max_in_flight)
        self.policy = policy or RetryPolicy()
        self.sleep = sleep
        self.http = httpx.Client(
            auth=(api_key, ""),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
            ),
            follow_redirects=False,  # a redirected POST could be repeated; a redirect is a wrong URL
            headers={"User-Agent": "invoice-dispatch"},
            transport=transport,
        )
        # _send_one retries itself (it must look the letter up after ambiguous failures), so
        # the shared pool makes one call per message.
        self._requests = ConcurrentSender(
            lambda m: self._send_one(m, self._sender_fields()),
            max_in_flight=self.max_in_flight,
            policy=RetryPolicy(attempts=1),
            sleep=self.sleep,
        )

    def close(self) -> None:
        """Stop the worker threads, then close the HTTP connections."""
        self._requests.close()
        self.http.close()

    # --- Channel protocol -------------------------------------------------------------

    def max_schedule_ahead(self) -> dt.timedelta | None:
        """Letters are printed when handed over: never ahead of their day."""
        return None

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[SendResult | ChannelError]:
        """One request per letter, ``max_in_flight`` at a time; retries inside :meth:`_send_one`."""
        misrouted = [m.action_id for m in messages if m.channel != self.channel]
        if misrouted:
            raise FatalChannelError(
                f"print API was given messages of another channel: {', '.join(misrouted[:5])}"
            )
        if not messages:
            return []
        self._sender_fields()  # refuses a bad sender before any request
        return self._requests.send_many(messages)

    def was_handed_over(self, action_id: str) -> SendResult | bool | None:
        """Ask the provider for a letter carrying this action id (see the module docstring)."""
        return self._find_letter(action_id)

    # --- one letter -------------------------------------------------------------------

    def _send_one(self, message: OutgoingMessage, sender: dict[str, str]) -> SendResult:
        fields = {**self._recipient_fields(message), **sender, **self._letter_fields(message)}
        pdf = self._pdf(message)
        seen = _Attempts()
        try:
            return call_with_retry(lambda: self._post(message, fields, pdf, seen), self.policy, self.sleep)
        except TransientError as exc:
            if not seen.ambiguous:
                raise
            found = self._find_letter(message.action_id)
            if isinstance(found, SendResult):
                return SendResult(message.action_id, self.provider, found.provider_message_id, _utc(message))
            if found is False:
                raise TransientError(
                    f"{exc}; the provider has no letter for it, a later run sends it"
                ) from exc
            raise DeliveryUnknownError(
                f"{exc}; the provider could not be asked whether it created the letter"
            ) from exc

    def _post(
        self, message: OutgoingMessage, fields: dict[str, str], pdf: bytes, seen: _Attempts
    ) -> SendResult:
        try:
            response = self.http.post(
                f"{self.base_url}/letters",
                headers={"Idempotency-Key": message.action_id},
                data=fields,
                files={"file": (f"{message.action_id}.pdf", pdf, "application/pdf")},
            )
        except httpx.HTTPError as exc:
            error = _transport_error(exc)
            seen.ambiguous = seen.ambiguous or isinstance(error, _AnswerLost)
            raise error from exc
        if response.is_success:
            try:
                letter_id = str(response.json()["id"])
            except (ValueError, KeyError, TypeError) as exc:
                raise DeliveryUnknownError(
                    f"print API answered {response.status_code} without a letter id: {response.text[:200]!r}"
                ) from exc
            return SendResult(message.action_id, self.provider, letter_id, _utc(message))
        raise error_for_status(
            response.status_code,
            f"print API {response.status_code}: {_error_text(response)}",
            _retry_after(response),
        )

    def _recipient_fields(self, message: OutgoingMessage) -> dict[str, str]:
        if len(message.recipients) != 1:
            raise PermanentError(f"a letter needs exactly one postal address, got {len(message.recipients)}")
        try:
            address = parse_postal_address(message.recipients[0], self.default_country)
        except AddressError as exc:
            raise PermanentError(f"postal address cannot be used: {exc}") from exc
        return address_fields("to", address)

    def _sender_fields(self) -> dict[str, str]:
        """The return address: a saved address id (``adr_…``) or a block like a recipient's."""
        text = self.from_address.strip()
        if text.startswith("adr_") and "\n" not in text:
            return {"from": text}
        try:
            return address_fields("from", parse_postal_address(text, self.default_country or "US"))
        except (AddressError, PermanentError) as exc:
            raise FatalChannelError(f"PRINTAPI_FROM_ADDRESS cannot be used: {exc}") from exc

    @staticmethod
    def _letter_fields(message: OutgoingMessage) -> dict[str, str]:
        number = message.metadata.get("invoice_number") or message.invoice_id
        return {
            "description": clean_line(f"Invoice {number}")[:255],
            "color": "false",
            "use_type": USE_TYPE,
            "address_placement": ADDRESS_PLACEMENT,
            "metadata[action_id]": _metadata_value(message.action_id),
            "metadata[invoice_id]": _metadata_value(message.invoice_id),
            "metadata[org_id]": _metadata_value(message.org_id),
        }

    @staticmethod
    def _pdf(message: OutgoingMessage) -> bytes:
        # The very letter the outbox writes, so both backends print the same thing.
        from dispatch.channels.formats.letter_pdf import letter_for_message

        try:
            return fit_to_us_letter(letter_for_message(message))
        except ValueError as exc:
            raise PermanentError(f"letter could not be built: {exc}") from exc

    def _find_letter(self, action_id: str) -> SendResult | bool | None:
        """The provider's letter for ``action_id``; False if it has none; None if it cannot say."""
        try:
            response = self.http.get(
                f"{self.base_url}/letters", params={"metadata[action_id]": action_id, "limit": "10"}
            )
            response.raise_for_status()
            letters = response.json()["data"]
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
        for letter in letters if isinstance(letters, list) else []:
            metadata = letter.get("metadata") or {}
            if metadata.get("action_id") == _metadata_value(action_id):
                when = _parse_lob_time(letter.get("send_date") or letter.get("date_created"))
                return SendResult(action_id, PROVIDER, str(letter["id"]), when or dt.datetime.now(dt.UTC))
        return False


def address_fields(prefix: str, address: PostalAddress) -> dict[str, str]:
    """Lob's inline address fields (``to[name]`` …) for ``address``."""
    fields = {"name": address.name, "address_line1": address.line1, "address_city": address.city}
    if address.company:
        fields["company"] = address.company
    if address.line2:
        fields["address_line2"] = address.line2
    if address.country == "US":
        if not (address.state and address.zip):
            raise PermanentError("postal address cannot be used: a US address needs 'City, ST ZIP'")
        fields.update(address_state=address.state, address_zip=address.zip, address_country="US")
    else:
        if address.zip:
            fields["address_zip"] = address.zip  # never with a state abroad: Lob's oneOf refuses both
        fields["address_country"] = address.country
    return {f"{prefix}[{key}]": value for key, value in fields.items()}


def fit_to_us_letter(pdf: bytes) -> bytes:
    """Every page scaled (keeping proportions) and centred onto a US Letter page."""
    from pypdf import PdfWriter, Transformation
    from pypdf.errors import PyPdfError
    from pypdf.generic import RectangleObject

    width, height = US_LETTER
    try:
        writer = PdfWriter(clone_from=io.BytesIO(pdf))
        for page in writer.pages:
            if page.rotation:
                page.transfer_rotation_to_content()
            box = page.mediabox
            w, h = float(box.width), float(box.height)
            if abs(w - width) < 1 and abs(h - height) < 1:
                continue
            scale = min(width / w, height / h)
            page.add_transformation(
                Transformation()
                .translate(-float(box.left), -float(box.bottom))
                .scale(scale)
                .translate((width - w * scale) / 2, (height - h * scale) / 2)
            )
            sheet = RectangleObject((0, 0, width, height))
            page.mediabox = page.cropbox = page.trimbox = page.bleedbox = page.artbox = sheet
        out = io.BytesIO()
        writer.write(out)
    except (PyPdfError, KeyError, TypeError) as exc:
        raise ValueError(f"the letter PDF cannot be laid out on US Letter pages: {exc}") from exc
    return out.getvalue()


class _AnswerLost(TransientError):
    """The request may have arrived but no answer came back. With the idempotency key it may
    be repeated, so it is transient here; after the last try the letter is looked up."""


def _transport_error(exc: httpx.HTTPError) -> ChannelError:
    """The typed error for a request that got no answer (see :mod:`provider_http`)."""
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return FatalChannelError(f"print API URL is not usable: {exc}")
    if is_name_resolution_failure(exc):
        return FatalChannelError(f"print API host cannot be resolved: {exc}")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TransientError(f"cannot connect to the print API: {exc!r}")
    return _AnswerLost(
        f"print API got the request but no answer came back ({type(exc).__name__}); retried with the same "
        "Idempotency-Key"
    )


def _error_text(response: httpx.Response) -> str:
    """Lob's ``{"error": {"message": …}}``, else the start of the body."""
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("message")
        if message:
            return str(message)
    except (ValueError, AttributeError, KeyError, TypeError):
        pass
    return response.text[:300] or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    """``Retry-After``, else Lob's ``ratelimit-reset`` (epoch seconds) on a 429."""
    seconds = retry_after_seconds(response.headers.get("Retry-After"))
    if seconds is None and response.status_code == 429 and response.headers.get("ratelimit-reset"):
        try:
            seconds = max(0.0, float(response.headers["ratelimit-reset"]) - time.time())
        except ValueError:
            return None
    return seconds


def _metadata_value(value: str) -> str:
    """Lob metadata values: at most 500 characters, without ``"`` or ``\\``."""
    return clean_line(value).replace('"', "").replace("\\", "")[:_METADATA_MAX]


def _parse_lob_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _utc(message: OutgoingMessage) -> dt.datetime:
    return message.deliver_at.astimezone(dt.UTC)


def from_settings(settings: Settings, channel: str) -> PrintApiChannel:
    """The channel of ``DISPATCH_LETTER_BACKEND=printapi`` (CONTRACT §1)."""
    if channel != ChannelName.LETTER:
        raise DispatchError(f"the printapi backend serves letters, not {channel}")
    missing = [
        name
        for name, value in (
            ("PRINTAPI_URL", settings.printapi_url),
            ("PRINTAPI_KEY", settings.printapi_key),
            ("PRINTAPI_FROM_ADDRESS", settings.printapi_from_address),
        )
        if not value
    ]
    if missing:
        raise DispatchError(f"DISPATCH_LETTER_BACKEND=printapi needs {', '.join(missing)}")
    return PrintApiChannel(
        base_url=str(settings.printapi_url),
        api_key=reveal(settings.printapi_key) or "",
        from_address=str(settings.printapi_from_address),
        default_country=settings.printapi_default_country,
        timeout=settings.http_timeout,
        max_in_flight=settings.send_concurrency,
    )
