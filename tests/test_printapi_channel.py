"""Letters through the print-and-mail API: httpx against the local Lob (tests/fakes), first the
channel alone (send_many), then the whole pipeline with ``DISPATCH_LETTER_BACKEND=printapi``.

What is asserted is what the provider received (address fields, a valid PDF with the cover and
the invoice pages, ``Idempotency-Key`` equal to the action id), what each failure does to the
action (SPEC B1, B3), and above all that one action never prints two letters.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from dispatch.channels.base import (
    Attachment,
    DeliveryUnknownError,
    FatalChannelError,
    OutgoingMessage,
    PermanentError,
    SendResult,
    TransientError,
)
from dispatch.channels.factory import build_channels
from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf, build_letter_pdf
from dispatch.channels.formats.postal_address import AddressError, PostalAddress, parse_postal_address
from dispatch.channels.printapi import PrintApiChannel, fit_to_us_letter, from_settings
from dispatch.channels.retry import RetryPolicy
from dispatch.config.settings import Settings, load_settings
from dispatch.errors import DispatchError
from pypdf import PdfReader

from tests.builders import World, instant
from tests.fakes import RecordedRequest, Reply
from tests.fakes.lob_server import FakeLob
from tests.fakes.openapi import Operation

UTC = dt.UTC
AS_OF = dt.datetime(2026, 12, 2, 5, 0, tzinfo=UTC)
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=5)
RETURN_ADDRESS = "ACME Corp\n210 King St\nSan Francisco, CA 94107"
LYON = "Leroy Paysage\nService comptabilité\n12 rue des Lilas\n69003 Lyon\nFrance"
QUEENS = "Atlas Queens LLC\nAttn: Accounts Payable\n31-10 Thomson Avenue\nLong Island City, NY 11101"
US_LETTER = (612.0, 792.0)


class FakeLobWithListing(FakeLob):
    """The local Lob plus ``GET /v1/letters?metadata[key]=value`` (Lob's documented list
    operation ``letters_list``), which the channel uses to ask whether a letter exists."""

    handlers: ClassVar[dict[str, str]] = {**FakeLob.handlers, "letters_list": "_list_letters"}

    def _list_letters(
        self, request: RecordedRequest, operation: Operation, path_params: dict[str, str]
    ) -> Reply:
        wanted = {
            key[len("metadata[") : -1]: values[0]
            for key, values in request.query.items()
            if key.startswith("metadata[")
        }
        found = [
            letter.resource
            for letter in self.letters
            if all(letter.resource["metadata"].get(key) == value for key, value in wanted.items())
        ]
        body = {"data": found, "object": "list", "count": len(found), "next_url": None, "previous_url": None}
        return Reply(200, body, content_type="application/json; charset=utf-8")


def fixed_clock() -> dt.datetime:
    return AS_OF


@pytest.fixture
def lob() -> Iterator[FakeLobWithListing]:
    with FakeLobWithListing(clock=fixed_clock) as server:
        yield server


@pytest.fixture(scope="module")
def invoice_pdf() -> bytes:
    return build_invoice_placeholder_pdf("F-2026-0001", ["1 x Hedge trimming", "Total 720.50 EUR"])


def make_channel(server: FakeLob, **options: Any) -> tuple[PrintApiChannel, list[float]]:
    pauses: list[float] = []
    settings: dict[str, Any] = {
        "base_url": server.api_base,
        "api_key": server.api_key,
        "from_address": RETURN_ADDRESS,
        "timeout": 2.0,
        "policy": FAST,
        "sleep": pauses.append,
    }
    settings.update(options)
    return PrintApiChannel(**settings), pauses


def letter(action_id: str = "act_1", pdf: bytes | None = None, **changes: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "action_id": action_id,
        "invoice_id": f"inv_{action_id}",
        "org_id": "acme",
        "channel": "letter",
        "recipients": (LYON,),
        "deliver_at": AS_OF,
        "body_text": "Madame, Monsieur,\nveuillez trouver ci-joint la facture F-2026-0001.",
        "sender_name": "ACME SAS",
        "attachments": (Attachment("invoice-F-2026-0001.pdf", pdf),) if pdf else (),
        "metadata": {"invoice_number": "F-2026-0001", "date_line": "2 décembre 2026"},
    }
    fields.update(changes)
    return OutgoingMessage(**fields)


def post_requests(server: FakeLob) -> list[RecordedRequest]:
    return [r for r in server.requests if r.method == "POST"]


# --- reading a postal address block ------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "default", "expected"),
    [
        (
            LYON,
            None,
            PostalAddress(
                "Leroy Paysage", "12 rue des Lilas", "Lyon", "FR", "Service comptabilité", None, None, "69003"
            ),
        ),
        (
            "Guérin Logistique\nZI des Trois Fontaines\n5 allée des Transporteurs\n59000 Lille",
            "FR",
            PostalAddress(
                "Guérin Logistique",
                "5 allée des Transporteurs",
                "Lille",
                "FR",
                "ZI des Trois Fontaines",
                zip="59000",
            ),
        ),
        (
            QUEENS,
            None,
            PostalAddress(
                "Atlas Queens LLC",
                "31-10 Thomson Avenue",
                "Long Island City",
                "US",
                "Attn: Accounts Payable",
                None,
                "NY",
                "11101",
            ),
        ),
        (
            "Ellis Hardware\n450 Fulton Street\nSuite 12\nTroy, NY 12180-1234\nUSA",
            None,
            PostalAddress(
                "Ellis Hardware", "450 Fulton Street", "Troy", "US", None, "Suite 12", "NY", "12180-1234"
            ),
        ),
        (
            "Müller GmbH\nHauptstraße 5\nD-10115 Berlin\nDeutschland",
            None,
            PostalAddress("Müller GmbH", "Hauptstraße 5", "Berlin", "DE", zip="D-10115"),
        ),
        (
            "Maple Ltd\n100 King St W\nToronto, ON M5X 1A9\nCanada",
            None,
            PostalAddress("Maple Ltd", "100 King St W", "Toronto", "CA", state="ON", zip="M5X 1A9"),
        ),
        (
            "Nordic AB\nA\nB\nC\nD\n111 22 Stockholm\nSE",
            None,
            PostalAddress("Nordic AB", "B", "Stockholm", "SE", "A", "C, D", None, "111 22"),
        ),
    ],
)
def test_a_postal_block_is_split_into_the_fields_a_print_api_wants(
    block: str, default: str | None, expected: PostalAddress
) -> None:
    assert parse_postal_address(block, default) == expected


@pytest.mark.parametrize(
    ("block", "default", "words"),
    [
        ("Kenji Sato\n1-1 Chiyoda\nTokyo", "JP", "neither 'ZIP City'"),
        ("Jean Dupont\n75002 Paris", "FR", "at least 3 lines"),
        ("Jean Dupont\n75002 Paris\nFrance", None, "a name line and a street line"),
        ("Jean Dupont\n1 rue de la Paix\n75002 Paris", None, "no country line"),
    ],
)
def test_a_block_that_does_not_fit_is_refused_with_the_rule_it_breaks(
    block: str, default: str | None, words: str
) -> None:
    with pytest.raises(AddressError, match=words):
        parse_postal_address(block, default)


# --- the channel alone ------------------------------------------------------------------------


def test_a_letter_is_posted_with_its_address_the_pdf_and_the_action_as_idempotency_key(
    lob: FakeLobWithListing, invoice_pdf: bytes
) -> None:
    channel, _ = make_channel(lob)
    [result] = channel.send_many([letter(pdf=invoice_pdf)])

    [created] = lob.letters
    assert result == SendResult("act_1", "printapi", created.id, AS_OF)
    assert created.idempotency_key == "act_1"
    params = created.params
    assert params["to"] == {
        "name": "Leroy Paysage",
        "company": "Service comptabilité",
        "address_line1": "12 rue des Lilas",
        "address_city": "Lyon",
        "address_zip": "69003",
        "address_country": "FR",
    }
    assert params["from"] == {
        "name": "ACME Corp",
        "address_line1": "210 King St",
        "address_city": "San Francisco",
        "address_state": "CA",
        "address_zip": "94107",
        "address_country": "US",
    }
    assert params["metadata"] == {"action_id": "act_1", "invoice_id": "inv_act_1", "org_id": "acme"}
    assert (params["use_type"], params["color"], params["address_placement"]) == (
        "operational",
        False,
        "insert_blank_page",
    )
    assert "send_date" not in params  # letters are never scheduled
    assert created.file is not None and created.file.content_type == "application/pdf"
    pdf = PdfReader(io.BytesIO(created.file.content))
    invoice_pages = len(PdfReader(io.BytesIO(invoice_pdf)).pages)
    assert len(pdf.pages) == 1 + invoice_pages  # the cover letter, then the invoice
    assert {(float(p.mediabox.width), float(p.mediabox.height)) for p in pdf.pages} == {US_LETTER}
    cover = pdf.pages[0].extract_text()
    assert "Leroy Paysage" in cover and "69003 Lyon" in cover and "2 décembre 2026" in cover
    assert "F-2026-0001" in pdf.pages[1].extract_text()
    assert lob.invalid == []
    assert channel.max_schedule_ahead() is None


def test_a_us_recipient_is_sent_with_state_zip_and_country_us(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob)
    [result] = channel.send_many([letter(recipients=(QUEENS,))])

    assert isinstance(result, SendResult)
    assert lob.letters[0].params["to"] == {
        "name": "Atlas Queens LLC",
        "company": "Attn: Accounts Payable",
        "address_line1": "31-10 Thomson Avenue",
        "address_city": "Long Island City",
        "address_state": "NY",
        "address_zip": "11101",
        "address_country": "US",
    }


def test_an_address_that_cannot_be_read_is_refused_before_any_request(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob)
    [result] = channel.send_many([letter(recipients=("Kenji Sato\n1-1 Chiyoda\nTokyo",))])

    assert isinstance(result, PermanentError)
    assert result.reason == "provider_rejected"
    assert "postal address cannot be used" in str(result) and "'Tokyo'" in str(result)
    assert lob.requests == []


def test_a_saved_return_address_is_named_by_its_id(lob: FakeLobWithListing) -> None:
    lob.add_address(
        "adr_acme",
        company="ACME",
        address_line1="210 King St",
        address_city="San Francisco",
        address_state="CA",
        address_zip="94107",
    )
    channel, _ = make_channel(lob, from_address="adr_acme")
    [result] = channel.send_many([letter()])

    assert isinstance(result, SendResult)
    assert lob.letters[0].resource["from"]["id"] == "adr_acme"


def test_an_unusable_return_address_stops_the_batch_before_any_request(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob, from_address="ACME\nsomewhere")
    with pytest.raises(FatalChannelError, match="PRINTAPI_FROM_ADDRESS"):
        channel.send_many([letter()])

    assert lob.requests == []


def test_a_429_waits_as_retry_after_says_and_prints_once(lob: FakeLobWithListing) -> None:
    channel, pauses = make_channel(lob)
    lob.inject(status=429, headers={"Retry-After": "1"})
    [result] = channel.send_many([letter()])

    assert isinstance(result, SendResult)
    assert pauses == [1.0]
    assert [r.status for r in lob.requests] == [429, 200]
    assert len(lob.letters) == 1


def test_a_500_is_retried_with_the_same_key(lob: FakeLobWithListing) -> None:
    channel, pauses = make_channel(lob)
    lob.inject(status=500, times=2)
    [result] = channel.send_many([letter()])

    assert isinstance(result, SendResult)
    assert [r.status for r in lob.requests] == [500, 500, 200]
    assert {r.header("Idempotency-Key") for r in lob.requests} == {"act_1"}
    assert len(pauses) == 2
    assert len(lob.letters) == 1


def test_a_hang_after_lob_created_the_letter_is_retried_with_the_same_key_and_prints_once(
    lob: FakeLobWithListing,
) -> None:
    channel, _ = make_channel(lob, timeout=0.4)
    lob.inject(hang=2.0)  # Lob creates the letter, the answer never comes
    [result] = channel.send_many([letter()])

    [created] = lob.letters
    assert isinstance(result, SendResult) and result.provider_message_id == created.id
    assert [(r.status, r.header("Idempotency-Key")) for r in post_requests(lob)] == [
        (None, "act_1"),
        (200, "act_1"),
    ]


def test_no_answer_to_any_attempt_then_the_letter_found_by_asking_is_sent(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob, timeout=0.3)
    lob.inject(hang=1.0, times=FAST.attempts, method="POST")
    [result] = channel.send_many([letter()])

    [created] = lob.letters
    assert isinstance(result, SendResult) and result.provider_message_id == created.id
    assert len(post_requests(lob)) == FAST.attempts
    [asked] = [r for r in lob.requests if r.method == "GET"]
    assert asked.query == {"metadata[action_id]": ["act_1"], "limit": ["10"]}


def test_no_answer_and_no_letter_at_the_provider_is_transient(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob, timeout=0.3)
    lob.inject(hang=0.6, accepted=False, times=FAST.attempts, method="POST")
    [result] = channel.send_many([letter()])

    assert isinstance(result, TransientError)
    assert "a later run sends it" in str(result)
    assert lob.letters == []


def test_no_answer_and_no_way_to_ask_is_delivery_unknown() -> None:
    with FakeLob(clock=fixed_clock) as plain:  # no listing: the question gets a 501
        channel, _ = make_channel(plain, timeout=0.3)
        plain.inject(hang=0.6, accepted=False, times=FAST.attempts, method="POST")
        [result] = channel.send_many([letter()])

    assert isinstance(result, DeliveryUnknownError)
    assert result.reason == "delivery_unknown"


def test_a_refusal_makes_that_letter_provider_rejected_with_lob_s_message(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob, max_in_flight=1)  # in order: the injected 400 meets the first
    long_name = "Société Coopérative Agricole des Producteurs de Fruits"
    lob.inject(
        status=400,
        body={"error": {"message": "file is corrupted", "status_code": 400, "code": "bad_request"}},
    )
    results = channel.send_many(
        [letter("act_400"), letter("act_422", recipients=(LYON.replace("Leroy Paysage", long_name),))]
    )

    assert all(isinstance(r, PermanentError) for r in results)
    assert "print API 400: file is corrupted" in str(results[0])
    assert '"to.name"' in str(results[1]) and "too long" in str(results[1])
    assert lob.letters == []
    assert len(lob.requests) == 2  # not retried


def test_a_wrong_key_stops_the_batch_and_prints_nothing(lob: FakeLobWithListing) -> None:
    channel, pauses = make_channel(lob, api_key="test_wrong", max_in_flight=1)
    with pytest.raises(FatalChannelError, match="401") as stopped:
        channel.send_many([letter("act_1"), letter("act_2")])

    assert stopped.value.results == [None, None]
    assert len(lob.requests) == 1
    assert lob.letters == []
    assert pauses == []


def test_an_unknown_host_stops_the_batch() -> None:
    channel = PrintApiChannel(
        base_url="http://print-api.invalid/v1", api_key="k", from_address=RETURN_ADDRESS, sleep=lambda _: None
    )
    with pytest.raises(FatalChannelError, match="cannot be resolved"):
        channel.send_many([letter()])


def test_was_handed_over_asks_the_provider(lob: FakeLobWithListing) -> None:
    channel, _ = make_channel(lob)
    channel.send_many([letter("act_known")])

    known = channel.was_handed_over("act_known")
    assert isinstance(known, SendResult) and known.provider_message_id == lob.letters[0].id
    assert channel.was_handed_over("act_other") is False
    with FakeLob() as plain:
        assert make_channel(plain)[0].was_handed_over("act_known") is None  # cannot ask: cannot tell


def test_a4_pages_are_scaled_onto_us_letter_pages() -> None:
    a4 = build_letter_pdf(
        sender_block="ACME",
        recipient_block=LYON,
        body_text="Bonjour",
        date_line="2026-12-02",
        invoice_pdf=build_invoice_placeholder_pdf("F-1", ["x"]),
    )
    fitted = PdfReader(io.BytesIO(fit_to_us_letter(a4)))

    assert [
        (round(float(p.mediabox.width)), round(float(p.mediabox.height)))
        for p in PdfReader(io.BytesIO(a4)).pages
    ] == [(595, 842)] * 2
    assert [(float(p.mediabox.width), float(p.mediabox.height)) for p in fitted.pages] == [US_LETTER] * 2
    assert "Leroy Paysage" in fitted.pages[0].extract_text()


def test_settings_select_and_configure_the_print_api(lob: FakeLobWithListing) -> None:
    env = {**lob.env(), "DISPATCH_LETTER_BACKEND": "printapi", "PRINTAPI_FROM_ADDRESS": RETURN_ADDRESS}
    env["PRINTAPI_DEFAULT_COUNTRY"] = "FR"
    channel = build_channels(load_settings(environ=env))["letter"]

    assert isinstance(channel, PrintApiChannel)
    assert (channel.base_url, channel.default_country) == (lob.api_base, "FR")
    with pytest.raises(DispatchError, match="PRINTAPI_FROM_ADDRESS"):
        from_settings(
            Settings(letter_backend="printapi", printapi_url="http://x", printapi_key="k"), "letter"
        )


# --- through the pipeline ----------------------------------------------------------------------


@pytest.fixture
def w(db_urls: dict[str, str], tmp_path) -> World:  # type: ignore[no-untyped-def]
    return World.create(db_urls, tmp_path)


class PrintWorld:
    """A World whose letters go to the local Lob, the channel built by the factory."""

    def __init__(self, world: World, server: FakeLob, **env: str) -> None:
        self.w, self.server = world, server
        world.extra_env.update(
            {
                **server.env(),
                "DISPATCH_LETTER_BACKEND": "printapi",
                "PRINTAPI_FROM_ADDRESS": RETURN_ADDRESS,
                **env,
            }
        )
        self.channels = build_channels(world.settings())
        self.channels["letter"].policy = FAST  # type: ignore[attr-defined]

    def run(self, at: str) -> Any:
        return self.w.run(at, channels=self.channels)


def letter_world(w: World, lob: FakeLob, address: str = LYON, **env: str) -> PrintWorld:
    pw = PrintWorld(w, lob, **env)
    w.org().plan("p_letter", channel="letter", body="Please find invoice {{ invoice.number }} enclosed.")
    w.customer("c1", plan="p_letter", email=None, address=address).load_config()
    w.invoice("i1", "c1", issued="2026-12-02", number="F-2026-0001", pdf=True)
    return pw


def test_pipeline_prints_a_letter_once_and_a_rerun_prints_nothing(w: World, lob: FakeLobWithListing) -> None:
    pw = letter_world(w, lob)
    pw.run("2026-12-02T05:00Z")

    [created] = lob.letters
    action = w.action("i1")
    assert (action["status"], action["provider"], action["provider_message_id"]) == (
        "sent",
        "printapi",
        created.id,
    )
    assert created.idempotency_key == action["action_id"]
    assert created.params["to"]["address_line1"] == "12 rue des Lilas"
    assert created.params["metadata"]["invoice_id"] == "i1"
    pdf = PdfReader(io.BytesIO(created.file.content))  # type: ignore[union-attr]
    assert len(pdf.pages) == 2  # cover letter + the one-page invoice
    assert "Please find invoice F-2026-0001 enclosed." in pdf.pages[0].extract_text()
    assert w.sending_status("i1") == "sent"

    pw.run("2026-12-02T05:00Z")
    pw.run("2026-12-03T05:00Z")
    assert len(lob.requests) == 1
    assert len(lob.letters) == 1


def test_pipeline_hang_is_retried_with_the_same_key_and_one_letter_is_printed(
    w: World, lob: FakeLobWithListing
) -> None:
    pw = letter_world(w, lob, DISPATCH_HTTP_TIMEOUT="0.4")
    lob.inject(hang=2.0)
    pw.run("2026-12-02T05:00Z")

    [created] = lob.letters
    action = w.action("i1")
    assert (action["status"], action["provider_message_id"]) == ("sent", created.id)
    assert [r.header("Idempotency-Key") for r in post_requests(lob)] == [action["action_id"]] * 2


def test_pipeline_400_makes_the_action_manual_provider_rejected_with_the_reason(
    w: World, lob: FakeLobWithListing
) -> None:
    pw = letter_world(w, lob)
    lob.inject(
        status=422,
        body={"error": {"message": "address is undeliverable", "status_code": 422, "code": "invalid"}},
    )
    pw.run("2026-12-02T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "provider_rejected")
    assert "address is undeliverable" in " ".join(str(e["detail"]) for e in w.events("i1"))
    assert w.view_ids("todo_invoicing") == {"i1"}


def test_pipeline_an_unreadable_address_is_provider_rejected_and_nothing_is_posted(
    w: World, lob: FakeLobWithListing
) -> None:
    pw = letter_world(w, lob, address="Kenji Sato\n1-1 Chiyoda\nTokyo")
    pw.run("2026-12-02T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["manual_reason"]) == ("manual", "provider_rejected")
    assert "postal address cannot be used" in " ".join(str(e["detail"]) for e in w.events("i1"))
    assert lob.requests == []


def test_pipeline_401_fails_the_batch_and_changes_no_action(w: World, lob: FakeLobWithListing) -> None:
    pw = letter_world(w, lob, PRINTAPI_KEY="test_wrong")
    with pytest.raises(FatalChannelError, match="401"):
        pw.run("2026-12-02T05:00Z")

    action = w.action("i1")
    assert (action["status"], action["attempts"], action["manual_reason"]) == ("scheduled", 0, None)
    assert lob.letters == []


class CrashingRun:
    """The letter channel of a run that dies during the hand-over: right after the provider
    accepted the letters, or before the request left."""

    def __init__(self, real: Any, *, after_hand_over: bool = True) -> None:
        self.real, self.provider, self.channel = real, real.provider, real.channel
        self.after_hand_over = after_hand_over

    def max_schedule_ahead(self) -> dt.timedelta | None:
        return None

    def send_many(self, messages: Any) -> list[Any]:
        if self.after_hand_over:
            self.real.send_many(messages)
        raise RuntimeError("worker killed before recording")

    def was_handed_over(self, action_id: str) -> Any:
        return self.real.was_handed_over(action_id)


def test_pipeline_a_run_that_died_after_the_provider_printed_is_settled_sent_without_a_second_letter(
    w: World, lob: FakeLobWithListing
) -> None:
    pw = letter_world(w, lob)
    real = pw.channels["letter"]
    pw.channels["letter"] = CrashingRun(real)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="worker killed"):
        pw.run("2026-12-02T05:00Z")
    assert w.action("i1")["status"] == "sending"

    pw.channels["letter"] = real
    pw.run("2026-12-07T05:00Z")  # the next run, after a weekend: past any idempotency key's life

    [created] = lob.letters
    action = w.action("i1")
    assert (action["status"], action["provider_message_id"]) == ("sent", created.id)
    assert len(post_requests(lob)) == 1  # asked, not posted again
    assert "settled_sent" in w.event_names("i1")
    assert instant("2026-12-02T05:00Z") <= action["deliver_at"].replace(tzinfo=UTC)


def test_pipeline_a_run_that_died_before_the_request_left_is_sent_by_the_next_run_once(
    w: World, lob: FakeLobWithListing
) -> None:
    pw = letter_world(w, lob)
    real = pw.channels["letter"]
    pw.channels["letter"] = CrashingRun(real, after_hand_over=False)  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="worker killed"):
        pw.run("2026-12-02T05:00Z")
    assert lob.requests == []

    pw.channels["letter"] = real
    pw.run("2026-12-03T05:00Z")  # asks, hears "no such letter", gives the claim back, sends

    [created] = lob.letters
    action = w.action("i1")
    assert (action["status"], action["provider_message_id"]) == ("sent", created.id)
    assert [r.method for r in lob.requests] == ["GET", "POST"]
    assert "claim_released" in w.event_names("i1")
