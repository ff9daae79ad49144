"""A local Twilio Programmable Messaging API (``/2010-04-01/Accounts/{AccountSid}/Messages.json``).

Why: the SMS channel counts a message as sent on Twilio's 201 with the message ``sid`` and hands
future messages over as *scheduled* messages (SPEC, Time). Twilio refuses a schedule outside its
window or without a Messaging Service; this fake refuses the same, with Twilio's error codes.

Point the real SDK at it (the SDK has no base-URL option; the domain object's ``base_url`` is
the documented-in-source place, ``twilio/base/domain.py``)::

    client = twilio.rest.Client(server.account_sid, server.auth_token)
    client.api.base_url = server.url
    client.messages.create(to="+33612345678", from_="+15005550006", body="…")
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import format_datetime
from typing import Any, ClassVar

from tests.fakes import FakeHTTPProvider, Problem, RecordedRequest, Refused, Reply, basic_credentials
from tests.fakes.openapi import Operation, is_e164

MESSAGES_DOCUMENT = "twilio-messages.json"

MORE_INFO = "https://www.twilio.com/docs/errors/{code}"

# Twilio's error codes for what this fake refuses (https://www.twilio.com/docs/api/errors/<code>).
AUTHENTICATE = 20003
NOT_FOUND = 20404
TOO_MANY_REQUESTS = 20429
INTERNAL_ERROR = 20500
SERVICE_UNAVAILABLE = 20503
INVALID_PARAMETER = 20001  # stand-in: the documents name no generic "invalid parameter" code
INVALID_TO = 21211
BODY_REQUIRED = 21602
FROM_REQUIRED = 21603
TO_REQUIRED = 21604
SEND_AT_MISSING = 35111
SEND_AT_OUT_OF_WINDOW = 35114
SERVICE_REQUIRED_TO_SCHEDULE = 35118

_STATUS_CODES = {
    401: (AUTHENTICATE, "Authenticate"),
    404: (NOT_FOUND, "The requested resource was not found"),
    405: (NOT_FOUND, "Method not allowed"),
    429: (TOO_MANY_REQUESTS, "Too Many Requests"),
    500: (INTERNAL_ERROR, "Internal Server Error"),
    501: (INTERNAL_ERROR, "Not implemented by the fake"),
    503: (SERVICE_UNAVAILABLE, "Service Unavailable"),
}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(frozen=True)
class AcceptedMessage:
    """A message Twilio accepted (201): the resource it answered and the parameters it was sent."""

    sid: str
    params: dict[str, Any]
    resource: dict[str, Any]
    send_at: datetime | None  # when scheduled (ScheduleType=fixed), else None
    accepted_at: datetime

    @property
    def status(self) -> str:
        return str(self.resource["status"])


class FakeTwilio(FakeHTTPProvider):
    """Twilio Messages: create (``POST …/Messages.json``) and fetch (``GET …/Messages/{Sid}.json``).

    Scheduling follows Twilio's rules: ``ScheduleType=fixed`` needs ``SendAt`` (35111) and a
    ``MessagingServiceSid`` (35118), and ``SendAt`` must be between ``schedule_min`` (15 min) and
    ``schedule_max`` (35 days) after the fake's clock (35114).
    """

    documents: ClassVar[tuple[str, ...]] = (MESSAGES_DOCUMENT,)
    handlers: ClassVar[dict[str, str]] = {
        "CreateMessage": "_create_message",
        "FetchMessage": "_fetch_message",
    }

    def __init__(
        self,
        account_sid: str | None = None,
        auth_token: str | None = None,
        messaging_service_sid: str | None = None,
        *,
        schedule_min: timedelta = timedelta(minutes=15),
        schedule_max: timedelta = timedelta(days=35),
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.account_sid = account_sid or _sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.messaging_service_sid = messaging_service_sid or _sid("MG")
        self.schedule_min = schedule_min
        self.schedule_max = schedule_max
        self._messages: list[AcceptedMessage] = []

    # -- for tests --------------------------------------------------------------------------
    @property
    def messages(self) -> list[AcceptedMessage]:
        """The messages Twilio accepted (201), in order."""
        with self._lock:
            return list(self._messages)

    def env(self) -> dict[str, str]:
        """The project's settings (CONTRACT §1) that point the Twilio channel at this server."""
        return {
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_MESSAGING_SERVICE_SID": self.messaging_service_sid,
            "TWILIO_API_BASE": self.url,
        }

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._messages.clear()

    # -- provider shapes ----------------------------------------------------------------------
    def authenticate(self, request: RecordedRequest) -> Reply | None:
        if basic_credentials(request) != (self.account_sid, self.auth_token):
            return self.error_reply(401)
        return None

    @staticmethod
    def _error(status: int, code: int, message: str) -> Reply:
        body = {"code": code, "message": message, "more_info": MORE_INFO.format(code=code), "status": status}
        return Reply(status, body, content_type="application/json; charset=utf-8")

    def error_reply(self, status: int, message: str | None = None) -> Reply:
        """Twilio's error body; a bare injected 400 stands for its commonest refusal, 21211 (bad To)."""
        code, text = _STATUS_CODES.get(status, (INVALID_TO if status == 400 else INTERNAL_ERROR, "Error"))
        if status == 400 and message is None:
            text = "Invalid 'To' Phone Number"
        return self._error(status, code, message or text)

    def refusal_reply(self, problems: list[Problem]) -> Reply:
        """Twilio answers the first fault only, with the code that names it."""
        first = problems[0]
        code = first.code
        if code is None:
            if first.location == "media-type" or (first.field == "To" and first.keyword == "required"):
                code, message = TO_REQUIRED, "A 'To' phone number is required."
            elif first.field == "To":
                code, message = INVALID_TO, f"Invalid 'To' Phone Number: {first.message}"
            else:
                code, message = INVALID_PARAMETER, f"Invalid parameter {first.field}: {first.message}"
        else:
            message = first.message
        return self._error(first.status or 400, int(code), message)

    # -- operations -------------------------------------------------------------------------
    def _create_message(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        if path_params.get("AccountSid") != self.account_sid:
            return self.error_reply(404)
        params: dict[str, Any] = request.body
        problems = list(self._message_rules(params))
        if problems:
            raise Refused(problems)
        scheduled = params.get("ScheduleType") == "fixed"
        send_at = _parse_instant(params["SendAt"]) if scheduled else None
        now = self.now()
        sid = _sid("SM")
        media = params.get("MediaUrl") or []
        service = params.get("MessagingServiceSid")
        resource = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": params.get("Body"),
            "date_created": format_datetime(now),
            "date_sent": None,
            "date_updated": format_datetime(now),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": params.get("From"),
            "messaging_service_sid": service,
            "num_media": str(len(media)),
            "num_segments": "0" if service and not params.get("From") else "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "scheduled" if scheduled else "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}/Media.json"
            },
            "to": params["To"],
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        with self._lock:
            self._messages.append(AcceptedMessage(sid, params, resource, send_at, now))
        return Reply(201, resource, content_type="application/json; charset=utf-8")

    def _message_rules(self, params: dict[str, Any]) -> Iterable[Problem]:
        """Twilio's rules the schema cannot say, in the order Twilio checks them."""
        to = params["To"]
        if not (is_e164(to) or ":" in to):
            yield Problem("body", "To", f"Invalid 'To' Phone Number: {to}", "format", INVALID_TO)
            return
        if not params.get("From") and not params.get("MessagingServiceSid"):
            yield Problem(
                "body",
                "From",
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
                "required",
                FROM_REQUIRED,
            )
            return
        if not (params.get("Body") or params.get("MediaUrl") or params.get("ContentSid")):
            yield Problem("body", "Body", "Message body is required.", "required", BODY_REQUIRED)
            return
        if params.get("ScheduleType") != "fixed":
            return  # Twilio ignores SendAt without ScheduleType=fixed: the message goes now
        if not params.get("MessagingServiceSid"):
            yield Problem(
                "body",
                "MessagingServiceSid",
                "MessagingServiceSid is required to schedule a message",
                "required",
                SERVICE_REQUIRED_TO_SCHEDULE,
            )
            return
        if not params.get("SendAt"):
            yield Problem("body", "SendAt", "SendAt timestamp is missing", "required", SEND_AT_MISSING)
            return
        ahead = _parse_instant(params["SendAt"]) - self.now()
        if not self.schedule_min <= ahead <= self.schedule_max:
            yield Problem(
                "body",
                "SendAt",
                f"SendAt time must be between {int(self.schedule_min.total_seconds())} seconds and "
                f"{self.schedule_max.days} days ({int(self.schedule_max.total_seconds())} seconds) "
                "in the future, inclusive",
                "window",
                SEND_AT_OUT_OF_WINDOW,
            )

    def _fetch_message(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        if path_params.get("AccountSid") != self.account_sid:
            return self.error_reply(404)
        with self._lock:
            found = [m for m in self._messages if m.sid == path_params.get("Sid")]
        if not found:
            return self.error_reply(404)
        return Reply(200, found[0].resource, content_type="application/json; charset=utf-8")


def _parse_instant(text: str) -> datetime:
    """SendAt as Twilio reads it: ISO 8601 with an offset (the schema's date-time format)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
