"""A local Lob print-and-mail API: ``POST /v1/letters`` (multipart with the PDF, or JSON).

Why: a letter cannot be recalled, so the letter channel relies on Lob's ``Idempotency-Key``:
after a request whose answer was lost, sending it again with the same key must return the same
letter and print nothing twice (SPEC B1). This fake keeps that promise and lets a test count
the letters actually created (``server.letters``).

Client side (no SDK is installed; any HTTP client)::

    httpx.post(f"{server.api_base}/letters", auth=(server.api_key, ""),
               headers={"Idempotency-Key": key}, data={...}, files={"file": ("invoice.pdf", pdf)})
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from tests.fakes import (
    FakeHTTPProvider,
    Problem,
    RecordedRequest,
    Refused,
    Reply,
    UploadedFile,
    basic_credentials,
)
from tests.fakes.openapi import Operation

LETTERS_DOCUMENT = "lob-letters.json"

# Lob's error codes (the `code` values of its error object) for each status.
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    404: "not_found",
    405: "unrecognized_endpoint",
    409: "conflict",
    413: "file_size_exceeds_limit",
    422: "invalid",
    429: "rate_limit_exceeded",
    500: "internal_server_error",
    501: "unrecognized_endpoint",
    503: "service_unavailable",
}
_MESSAGES = {
    401: "Your API key is not valid. Please sign up on lob.com to get a valid api key.",
    404: "not found",
    405: "method not allowed",
    429: "rate limit exceeded",
    500: "internal server error",
    503: "service unavailable",
}


@dataclass(frozen=True)
class CreatedLetter:
    """A letter Lob created: the answered object, the parameters, the uploaded file, the key used."""

    id: str
    params: dict[str, Any]
    resource: dict[str, Any]
    file: UploadedFile | None
    idempotency_key: str | None
    created_at: datetime


def _country_name(code: str) -> str:
    """Lob answers countries by upper-case English name ("FR" -> "FRANCE")."""
    if code.upper() == "US":
        return "UNITED STATES"
    try:
        from babel import Locale

        name = Locale("en").territories.get(code.upper())
    except ImportError:  # pragma: no cover - babel is a project dependency
        name = None
    return name.upper().replace("&", "AND") if name else code.upper()


class FakeLob(FakeHTTPProvider):
    """Lob letters: create (``POST /v1/letters``) with ``Idempotency-Key``, and retrieve.

    ``letters`` holds each letter created once, whatever the number of requests that carried
    the same idempotency key. ``add_address`` seeds saved addresses for ``to=adr_…`` requests.
    """

    documents: ClassVar[tuple[str, ...]] = (LETTERS_DOCUMENT,)
    handlers: ClassVar[dict[str, str]] = {
        "letter_create": "_create_letter",
        "letter_retrieve": "_retrieve_letter",
    }

    def __init__(self, api_key: str = "test_fake_lob_key", **options: Any):
        super().__init__(**options)
        self.api_key = api_key
        self._letters: list[CreatedLetter] = []
        self._by_key: dict[str, CreatedLetter] = {}
        self._addresses: dict[str, dict[str, Any]] = {}

    # -- for tests --------------------------------------------------------------------------
    @property
    def letters(self) -> list[CreatedLetter]:
        """The letters created, once each, in order."""
        with self._lock:
            return list(self._letters)

    def add_address(self, address_id: str, **fields: Any) -> None:
        """Seed a saved address (``adr_…``) that requests may name instead of an inline one."""
        with self._lock:
            self._addresses[address_id] = dict(fields)

    def env(self) -> dict[str, str]:
        """The project's settings (CONTRACT §1) that point the print API channel at this server."""
        return {"PRINTAPI_URL": self.api_base, "PRINTAPI_KEY": self.api_key}

    def clear(self) -> None:
        super().clear()
        with self._lock:
            self._letters.clear()
            self._by_key.clear()

    # -- provider shapes ----------------------------------------------------------------------
    def authenticate(self, request: RecordedRequest) -> Reply | None:
        credentials = basic_credentials(request)
        if credentials is None or credentials[0] != self.api_key:
            return self.error_reply(401)
        return None

    def error_reply(self, status: int, message: str | None = None) -> Reply:
        code = _CODES.get(status, "internal_server_error" if status >= 500 else "bad_request")
        text = message or _MESSAGES.get(status, code.replace("_", " "))
        return Reply(status, {"error": {"message": text, "status_code": status, "code": code}})

    def refusal_reply(self, problems: list[Problem]) -> Reply:
        """Lob names the first fault, as ``"<field>" <what is wrong>``, with status 422."""
        first = problems[0]
        if first.field and first.keyword == "required":
            message = f'"{first.field}" is required'
        elif first.field:
            message = f'"{first.field}" {first.message}'
        else:
            message = first.message
        status = first.status or 422
        code = str(first.code or "invalid")
        return Reply(status, {"error": {"message": message, "status_code": status, "code": code}})

    # -- operations -------------------------------------------------------------------------
    def _create_letter(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        key = request.header("Idempotency-Key") or (request.query.get("idempotency_key") or [None])[0]
        params: dict[str, Any] = request.body
        upload = request.files.get("file")
        problems = list(self._letter_rules(params, upload))
        if problems:
            raise Refused(problems)
        with self._lock:  # check and create under one lock: two racing retries make one letter
            if key is not None and key in self._by_key:
                return self._letter_reply(self._by_key[key].resource)
            to, sender = self._address(params["to"], "to"), self._address(params["from"], "from")
            if isinstance(to, Reply):
                return to
            if isinstance(sender, Reply):
                return sender
            letter = self._new_letter(params, to, sender, upload, key)
            self._letters.append(letter)
            if key is not None:
                self._by_key[key] = letter
        return self._letter_reply(letter.resource)

    def _letter_reply(self, resource: dict[str, Any]) -> Reply:
        reset = int((self.now() + timedelta(seconds=5)).timestamp())
        headers = {"ratelimit-limit": "150", "ratelimit-remaining": "149", "ratelimit-reset": str(reset)}
        return Reply(200, resource, headers, content_type="application/json; charset=utf-8")

    def _letter_rules(self, params: dict[str, Any], upload: UploadedFile | None) -> Iterable[Problem]:
        """Lob's rules the schema cannot say."""
        if (
            upload is not None
            and upload.filename.lower().endswith(".pdf")
            and not upload.content.startswith(b"%PDF-")
        ):
            yield Problem("body", "file", "is not a valid PDF file", "pdf", "invalid_file", 422)
        if params.get("return_envelope") in (True, "true") and not params.get("perforated_page"):
            yield Problem(
                "body",
                "perforated_page",
                "is required when return_envelope is true",
                "required",
                "invalid_perforation_return_envelope",
                422,
            )

    def _address(self, value: Any, role: str) -> dict[str, Any] | Reply:
        """The address object Lob answers for an inline address or a saved ``adr_…`` id."""
        now = _lob_time(self.now())
        if isinstance(value, str):
            saved = self._addresses.get(value)
            if saved is None:
                return self.error_reply(404, f"{role} address not found")
            fields, address_id = dict(saved), value
        else:
            fields, address_id = dict(value), "adr_" + secrets.token_hex(8)
        country = str(fields.pop("address_country", "US"))
        return {
            "id": address_id,
            "description": fields.pop("description", None),
            "name": fields.pop("name", None),
            "company": fields.pop("company", None),
            "phone": fields.pop("phone", None),
            "email": fields.pop("email", None),
            "address_line1": str(fields.pop("address_line1", "")).upper(),
            "address_line2": (str(fields["address_line2"]).upper() if fields.get("address_line2") else None),
            "address_city": (str(fields["address_city"]).upper() if fields.get("address_city") else None),
            "address_state": (str(fields["address_state"]).upper() if fields.get("address_state") else None),
            "address_zip": fields.get("address_zip"),
            "address_country": _country_name(country),
            "metadata": fields.get("metadata", {}),
            "date_created": now,
            "date_modified": now,
            "object": "address",
        }

    def _new_letter(
        self,
        params: dict[str, Any],
        to: dict[str, Any],
        sender: dict[str, Any],
        upload: UploadedFile | None,
        key: str | None,
    ) -> CreatedLetter:
        now = self.now()
        letter_id = "ltr_" + secrets.token_hex(8)
        send_date = params.get("send_date") or _lob_time(now)
        resource = {
            "id": letter_id,
            "description": params.get("description"),
            "metadata": params.get("metadata", {}),
            "to": to,
            "from": sender,
            "color": params["color"],
            "double_sided": params.get("double_sided", True),
            "address_placement": params.get("address_placement", "top_first_page"),
            "return_envelope": params.get("return_envelope", False),
            "perforated_page": params.get("perforated_page"),
            "custom_envelope": None,
            "extra_service": params.get("extra_service"),
            "mail_type": params.get("mail_type", "usps_first_class"),
            "merge_variables": params.get("merge_variables"),
            "carrier": "USPS",
            "tracking_number": None,
            "tracking_events": [],
            "thumbnails": [],
            "expected_delivery_date": (now + timedelta(days=5)).date().isoformat(),
            "date_created": _lob_time(now),
            "date_modified": _lob_time(now),
            "send_date": send_date,
            "use_type": params["use_type"],
            "fsc": params.get("fsc", False),
            "object": "letter",
        }
        return CreatedLetter(letter_id, params, resource, upload, key, now)

    def _retrieve_letter(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        with self._lock:
            found = [letter for letter in self._letters if letter.id == path_params.get("ltr_id")]
        if not found:
            return self.error_reply(404, "letter not found")
        return self._letter_reply(found[0].resource)


def _lob_time(moment: datetime) -> str:
    """Lob's timestamps: ISO 8601 UTC with milliseconds and ``Z``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
