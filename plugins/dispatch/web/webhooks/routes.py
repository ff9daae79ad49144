"""``POST /dispatch/webhooks/{sendgrid,twilio,printapi}``: the providers' delivery events.

Each route reads the raw body, checks the provider's signature with the key from the
settings (:mod:`dispatch.delivery`), and only then parses and stores. A request that fails
the check — or reaches a receiver whose key is not configured — answers 403 and records
nothing; a signed body that is not what the provider documents answers 400. A 2xx tells the
provider to stop retrying, so it is sent only once the events are committed.

The routes answer JSON whatever the ``Accept`` header (a provider reads no HTML page), and
run the database work in the thread pool, off the event loop.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dispatch.config.settings import reveal
from dispatch.delivery import printapi, sendgrid, twilio
from dispatch.delivery.event import DeliveryEvent, PayloadError, SignatureError
from dispatch.delivery.receive import Sweeper, receive
from dispatch.web.deps import Context

log = logging.getLogger(__name__)

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
#: a larger body is refused before it is read to the end (413): the signature can only be
#: checked over the whole body, so an unsigned sender could otherwise fill the memory
MAX_BODY = 10 * 1024 * 1024
#: one sweep of the recent unmatched events per few seconds of this process's requests
SWEEPER = Sweeper()


@functools.lru_cache(maxsize=4)
def _sendgrid_key(text: str) -> EllipticCurvePublicKey:
    return sendgrid.load_public_key(text)


class _TooLarge(Exception):
    pass


async def _body(request: Request) -> bytes:
    """The raw body (the signature covers these exact bytes), at most :data:`MAX_BODY`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _refused(status: int, detail: str) -> JSONResponse:
    log.warning("webhook refused (%d): %s", status, detail)
    return JSONResponse({"detail": detail}, status_code=status)


async def _accept(
    request: Request, web: Context, check: Callable[[bytes], Sequence[DeliveryEvent]]
) -> JSONResponse:
    """Read the body (bounded), run ``check`` on it (verify, then parse), then store and act on
    its events — in the thread pool: verifying, parsing a large batch and the database are all
    blocking work."""
    try:
        body = await _body(request)
    except _TooLarge:
        return _refused(413, f"the body is larger than {MAX_BODY} bytes — nothing was recorded")

    def handle() -> JSONResponse:
        try:
            events = check(body)
        except SignatureError as exc:
            return _refused(403, f"{exc} — nothing was recorded")
        except PayloadError as exc:
            return _refused(400, f"{exc} — nothing was recorded")
        return JSONResponse(receive(web.db, events, sweep=SWEEPER.due()).as_dict())

    return await run_in_threadpool(handle)


def _configured(value: str | None, provider: str, setting: str) -> str:
    """The key a provider's signature is checked with; without it nothing can be verified."""
    if not value:
        raise SignatureError(f"{provider}: {setting} is not set, nothing can be verified")
    return value


@router.post("/sendgrid", summary="SendGrid Event Webhook (ECDSA-signed)")
async def sendgrid_events(request: Request, web: Context) -> JSONResponse:
    def check(body: bytes) -> Sequence[DeliveryEvent]:
        text = _configured(
            web.settings.sendgrid_webhook_public_key, "sendgrid", "SENDGRID_WEBHOOK_PUBLIC_KEY"
        )
        try:
            key = _sendgrid_key(text)
        except ValueError as exc:
            raise SignatureError(str(exc)) from None
        sendgrid.verify(
            key,
            body,
            request.headers.get(sendgrid.SIGNATURE_HEADER),
            request.headers.get(sendgrid.TIMESTAMP_HEADER),
            dt.datetime.now(dt.UTC),
        )
        return sendgrid.parse(body)

    return await _accept(request, web, check)


@router.post("/twilio", summary="Twilio message status callbacks (X-Twilio-Signature)")
async def twilio_status(request: Request, web: Context) -> JSONResponse:
    def check(body: bytes) -> Sequence[DeliveryEvent]:
        token = _configured(reveal(web.settings.twilio_auth_token), "twilio", "TWILIO_AUTH_TOKEN")
        params = twilio.read_form(body)
        # the URL Twilio was told to call, else the one the request came to
        urls = [web.settings.twilio_status_callback or "", str(request.url)]
        twilio.verify(token, urls, params, request.headers.get(twilio.SIGNATURE_HEADER))
        return twilio.parse(params)

    return await _accept(request, web, check)


@router.post("/printapi", summary="Print-and-mail letter tracking events (Lob-Signature)")
async def printapi_events(request: Request, web: Context) -> JSONResponse:
    def check(body: bytes) -> Sequence[DeliveryEvent]:
        secret = _configured(
            reveal(web.settings.printapi_webhook_secret), "printapi", "PRINTAPI_WEBHOOK_SECRET"
        )
        printapi.verify(
            secret,
            body,
            request.headers.get(printapi.SIGNATURE_HEADER),
            request.headers.get(printapi.TIMESTAMP_HEADER),
            dt.datetime.now(dt.UTC),
        )
        return printapi.parse(body)

    return await _accept(request, web, check)
