"""A local stand-in for the providers' webhook senders: it signs each request exactly as the
provider documents, then posts it over real HTTP.

* SendGrid Event Webhook: ECDSA P-256 / SHA-256 over ``<timestamp><body>``, base64 DER
  signature in ``X-Twilio-Email-Event-Webhook-Signature``, the Unix timestamp in ``…-Timestamp``;
  the verification key SendGrid shows is the base64 DER SubjectPublicKeyInfo.
* Twilio status callbacks: HMAC-SHA1 under the auth token of the full URL followed by every
  POST parameter sorted by name (name, then value), base64, in ``X-Twilio-Signature``.
* The print API (Lob's scheme): hex HMAC-SHA256 under the webhook secret of
  ``"<timestamp>.<body>"`` in ``Lob-Signature``, the timestamp in ``Lob-Signature-Timestamp``.

The signatures are computed here from the documents' descriptions with ``cryptography`` and
``hmac``, not with the provider libraries the receiver uses, so the two can disagree.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec


class SendGridSender:
    """Signs and posts Event Webhook batches with its own P-256 key pair."""

    def __init__(self) -> None:
        self.private_key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> str:
        """The verification key as SendGrid's Mail Settings show it (``SENDGRID_WEBHOOK_PUBLIC_KEY``)."""
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode("ascii")

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.private_key.sign(stamp.encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode("ascii"),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }

    def post(
        self, client: httpx.Client, url: str, events: list[dict[str, Any]], **sign: Any
    ) -> httpx.Response:
        body = json.dumps(events).encode("utf-8")
        return client.post(url, content=body, headers=self.headers(body, **sign))


def sendgrid_event(
    event: str, message_id: str, email: str, *, at: dt.datetime | None = None, **fields: Any
) -> dict[str, Any]:
    """One Event Webhook event as SendGrid writes it (``sg_message_id`` is the X-Message-Id
    followed by SendGrid's filter suffix)."""
    return {
        "email": email,
        "timestamp": int((at or dt.datetime.now(dt.UTC)).timestamp()),
        "event": event,
        "sg_event_id": secrets.token_urlsafe(16),
        "sg_message_id": f"{message_id}.filterdrecv-5645d9c87f-2x7nm-1-61A4-19.0",
        "smtp-id": f"<{message_id}@ismtpd0001p1lon1.sendgrid.net>",
        "category": ["invoice"],
        **fields,
    }


class TwilioSender:
    """Signs and posts status callbacks with an account's auth token."""

    def __init__(self, auth_token: str) -> None:
        self.auth_token = auth_token

    def signature(self, url: str, params: dict[str, str]) -> str:
        text = url + "".join(name + params[name] for name in sorted(params))
        digest = hmac.new(self.auth_token.encode("utf-8"), text.encode("utf-8"), hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")

    def post(self, client: httpx.Client, url: str, params: dict[str, str], *, signed_url: str | None = None):  # type: ignore[no-untyped-def]
        return client.post(
            url,
            content=urlencode(params).encode("ascii"),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": self.signature(signed_url or url, params),
            },
        )


def twilio_status(
    sid: str, status: str, to: str, account_sid: str = "AC" + "0" * 32, **extra: str
) -> dict[str, str]:
    """The parameters of a Messages status callback."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "From": "+33700000000",
        "MessageSid": sid,
        "MessageStatus": status,
        "SmsSid": sid,
        "SmsStatus": status,
        "To": to,
        **extra,
    }


class PrintApiSender:
    """Signs and posts letter tracking events with a webhook secret (Lob's scheme)."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret or secrets.token_hex(24)

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time() * 1000) if timestamp is None else timestamp)
        mac = hmac.new(self.secret.encode("utf-8"), stamp.encode("ascii") + b"." + body, hashlib.sha256)
        return {
            "Content-Type": "application/json",
            "Lob-Signature": mac.hexdigest(),
            "Lob-Signature-Timestamp": stamp,
        }

    def post(self, client: httpx.Client, url: str, event: dict[str, Any], **sign: Any) -> httpx.Response:
        body = json.dumps(event).encode("utf-8")
        return client.post(url, content=body, headers=self.headers(body, **sign))


def letter_event(
    event_type: str,
    letter_id: str,
    *,
    at: dt.datetime | None = None,
    to_name: str = "Leroy Paysage",
    **letter: Any,
) -> dict[str, Any]:
    """A Lob event object about a letter (``event_type`` e.g. ``letter.delivered``)."""
    when = (at or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {
        "id": "evt_" + secrets.token_hex(12),
        "object": "event",
        "date_created": when,
        "reference_id": letter_id,
        "event_type": {
            "id": event_type,
            "resource": "letters",
            "enabled_for_test": True,
            "object": "event_type",
        },
        "body": {
            "id": letter_id,
            "object": "letter",
            "to": {"name": to_name, "address_line1": "12 RUE DES LILAS", "address_city": "LYON"},
            "metadata": {},
            **letter,
        },
    }
