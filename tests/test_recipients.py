"""Recipient choice and syntactic validation (CONTRACT §2, SPEC R11)."""

from __future__ import annotations

import pandas as pd
import pytest
from dispatch.rules.recipients import check_email, pick_recipients
from dispatch.vocabulary import ManualReason

CONTACT_COLUMNS = ["contact_id", "customer_id", "name", "email", "phone", "postal_address", "is_billing"]


def contact(
    contact_id: str,
    customer_id: str = "c1",
    *,
    name: str | None = None,
    email=None,
    phone=None,
    address=None,
    billing: bool = True,
) -> dict:
    return {
        "contact_id": contact_id,
        "customer_id": customer_id,
        "name": name if name is not None else f"Name {contact_id}",
        "email": email,
        "phone": phone,
        "postal_address": address,
        "is_billing": billing,
    }


def pick(
    channel: str,
    contacts: list[dict],
    *,
    customer: str = "c1",
    org: str = "acme",
    regions: dict[str, str | None] | None = None,
) -> dict:
    """pick_recipients for one action; the result row as a dict."""
    actions = pd.DataFrame(
        {"action_id": ["a1"], "customer_id": [customer], "channel": [channel], "org_id": [org]}
    )
    frame = pd.DataFrame(contacts, columns=CONTACT_COLUMNS)
    result = pick_recipients(actions, frame, regions)
    assert list(result.index) == list(actions.index)
    return result.iloc[0].to_dict()


ADDRESS = "ACME Client SA\n12 rue de la Paix\n75002 Paris"


def test_billing_contacts_are_preferred_over_others():
    row = pick(
        "email",
        [
            contact("k1", email="ops@client.example", billing=False),
            contact("k2", email="billing@client.example", name="Billing Dept"),
        ],
    )
    assert row["recipients"] == ("billing@client.example",)
    assert row["recipient"] == "billing@client.example"
    assert row["contact_name"] == "Billing Dept"
    assert row["problem"] is None
    assert row["problem_detail"] is None


def test_falls_back_to_non_billing_contacts_when_no_billing_contact_has_the_field():
    row = pick(
        "sms",
        [
            contact("k1", email="billing@client.example", phone=None),  # billing, but no phone
            contact("k3", phone="+33 6 98 76 54 32", billing=False),
            contact("k2", phone="+33 6 12 34 56 78", billing=False, name="Zoé"),
        ],
    )
    assert row["recipients"] == ("+33612345678",)  # first by contact_id among the fallback
    assert row["contact_name"] == "Zoé"
    assert row["problem"] is None


def test_email_goes_to_all_billing_contacts_in_one_message_deduplicated_by_contact_id():
    row = pick(
        "email",
        [
            contact("k3", email="b@client.example"),
            contact("k1", email="a@Client.Example"),
            contact("k2", email="A@client.example"),  # same mailbox as k1 once normalized
            contact("k4", email="other@client.example", billing=False),  # not billing: left out
        ],
    )
    assert row["recipients"] == ("a@client.example", "b@client.example")
    assert row["recipient"] == "a@client.example, b@client.example"
    assert row["contact_name"] == "Name k1"


def test_letter_goes_to_first_billing_contact_by_contact_id():
    row = pick(
        "letter",
        [
            contact("k2", address="Other\n1 avenue Foch\n75116 Paris"),
            contact("k1", address="  ACME Client SA \n\n12 rue de la Paix\n75002 Paris  \n"),
        ],
    )
    assert row["recipients"] == (ADDRESS,)
    assert row["recipient"] == ADDRESS
    assert row["contact_name"] == "Name k1"


def test_sms_goes_to_first_billing_contact_by_contact_id():
    row = pick("sms", [contact("k9", phone="+33611111111"), contact("k10", phone="+33622222222")])
    assert row["recipients"] == ("+33622222222",)  # "k10" < "k9": contact_id order is textual


def test_no_contact_with_the_field_is_no_contact():
    row = pick("email", [contact("k1", phone="+33611111111", address=ADDRESS)])
    assert row["problem"] == ManualReason.NO_CONTACT
    assert row["recipient"] is None
    assert row["recipients"] == ()
    assert row["contact_name"] is None
    assert "e-mail" in row["problem_detail"] and "c1" in row["problem_detail"]


def test_customer_without_any_contact_is_no_contact():
    row = pick("letter", [contact("k1", customer_id="other", address=ADDRESS)])
    assert row["problem"] == ManualReason.NO_CONTACT
    assert row["recipients"] == ()


def test_blank_strings_count_as_missing():
    row = pick(
        "email",
        [
            contact("k1", email="   "),  # billing, blank: as if it had none
            contact("k2", email="", phone=""),
            contact("k3", email="fallback@client.example", billing=False),
        ],
    )
    assert row["recipients"] == ("fallback@client.example",)
    assert pick("sms", [contact("k1", phone=" \t")])["problem"] == ManualReason.NO_CONTACT
    assert pick("letter", [contact("k1", address="\n  \n")])["problem"] == ManualReason.NO_CONTACT


def test_invalid_email_syntax_is_invalid_contact_naming_the_value():
    row = pick("email", [contact("k1", email="jean.dupont@"), contact("k2", email="no-at-sign.example")])
    assert row["problem"] == ManualReason.INVALID_CONTACT
    assert row["recipients"] == ()
    assert row["recipient"] is None
    assert "'jean.dupont@'" in row["problem_detail"] and "k1" in row["problem_detail"]
    assert "'no-at-sign.example'" in row["problem_detail"] and "k2" in row["problem_detail"]


def test_invalid_billing_email_does_not_fall_back_to_non_billing():
    row = pick(
        "email", [contact("k1", email="broken@@x"), contact("k2", email="ok@client.example", billing=False)]
    )
    assert row["problem"] == ManualReason.INVALID_CONTACT


def test_some_invalid_emails_are_dropped_and_noted_but_the_message_goes():
    row = pick("email", [contact("k1", email="good@client.example"), contact("k2", email="bad@")])
    assert row["problem"] is None
    assert row["recipients"] == ("good@client.example",)
    assert "'bad@'" in row["problem_detail"] and "k2" in row["problem_detail"]


def test_unparseable_phone_is_invalid_contact():
    row = pick("sms", [contact("k1", phone="call me maybe")], regions={"acme": "FR"})
    assert row["problem"] == ManualReason.INVALID_CONTACT
    assert "'call me maybe'" in row["problem_detail"]


def test_too_short_phone_is_invalid_contact():
    assert (
        pick("sms", [contact("k1", phone="12")], regions={"acme": "FR"})["problem"]
        == ManualReason.INVALID_CONTACT
    )


def test_sms_skips_an_invalid_first_contact_and_notes_it():
    row = pick("sms", [contact("k1", phone="nope"), contact("k2", phone="+33612345678")])
    assert row["recipients"] == ("+33612345678",)
    assert row["problem"] is None
    assert "'nope'" in row["problem_detail"]


def test_phone_without_plus_is_read_with_the_orgs_region_to_e164():
    fr = pick("sms", [contact("k1", phone="06 12 34 56 78")], regions={"acme": "FR"})
    assert fr["recipient"] == "+33612345678"
    us = pick("sms", [contact("k1", phone="(212) 555-0123")], org="nyc", regions={"nyc": "US", "acme": "FR"})
    assert us["recipient"] == "+12125550123"


def test_phone_without_plus_and_without_org_region_is_invalid():
    row = pick("sms", [contact("k1", phone="06 12 34 56 78")], regions={"acme": None})
    assert row["problem"] == ManualReason.INVALID_CONTACT
    assert "country" in row["problem_detail"]
    assert pick("sms", [contact("k1", phone="+44 20 7946 0958")])["recipient"] == "+442079460958"


def test_one_line_postal_address_is_invalid_contact():
    row = pick("letter", [contact("k1", address="12 rue de la Paix 75002 Paris")])
    assert row["problem"] == ManualReason.INVALID_CONTACT
    assert "two" in row["problem_detail"]


def test_many_actions_of_many_customers_in_one_call_keep_the_actions_index():
    contacts = pd.DataFrame(
        [
            contact("k1", "c1", email="one@client.example", phone="+33611111111"),
            contact("k2", "c2", email="two@client.example"),
        ],
        columns=CONTACT_COLUMNS,
    )
    actions = pd.DataFrame(
        {
            "action_id": ["a1", "a2", "a3", "a4"],
            "customer_id": ["c2", "c1", "c1", "c2"],
            "channel": ["email", "sms", "email", "sms"],
            "org_id": ["acme"] * 4,
        },
        index=[10, 20, 30, 40],
    )
    result = pick_recipients(actions, contacts)
    assert list(result.index) == [10, 20, 30, 40]
    assert list(result["action_id"]) == ["a1", "a2", "a3", "a4"]
    assert list(result["recipient"]) == ["two@client.example", "+33611111111", "one@client.example", None]
    assert list(result["problem"]) == [None, None, None, ManualReason.NO_CONTACT]


def test_each_distinct_address_is_validated_once():
    check_email.cache_clear()
    contacts = pd.DataFrame(
        [contact(f"k{i}", f"c{i}", email="shared@client.example") for i in range(50)], columns=CONTACT_COLUMNS
    )
    actions = pd.DataFrame(
        {
            "action_id": [f"a{i}" for i in range(50)],
            "customer_id": [f"c{i}" for i in range(50)],
            "channel": "email",
            "org_id": "acme",
        }
    )
    result = pick_recipients(actions, contacts)
    assert (result["recipient"] == "shared@client.example").all()
    assert check_email.cache_info().misses == 1


def test_unknown_channel_is_refused():
    with pytest.raises(ValueError, match="fax"):
        pick("fax", [contact("k1", email="a@client.example")])


def test_example_customer_without_email_contact_is_no_contact():
    """SPEC worked example: an automatic e-mail for a customer with no e-mail contact becomes manual."""
    row = pick("email", [contact("k1", phone="+33611111111", address=ADDRESS), contact("k2", billing=False)])
    assert row["problem"] == ManualReason.NO_CONTACT
