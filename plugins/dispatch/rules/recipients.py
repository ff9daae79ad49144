"""Who receives each invoicing action, and whether that contact is usable (CONTRACT §2, SPEC R11).

Rule: the customer's billing contacts that have the field the channel needs (e-mail
address, phone, postal address; blank counts as missing); when none has it, the other
contacts of the customer that have it. An e-mail goes to all of them in one message; an
SMS or a letter to the first of them by ``contact_id``.

The choice of contacts is decided by *presence* of the field, validity only afterwards:
a billing contact with a malformed address makes the action ``invalid_contact`` (someone
fixes the billing contact) rather than silently falling back to a non-billing contact.
Within the chosen contacts, invalid values are skipped: an e-mail goes to the valid
addresses (the dropped ones are named in ``problem_detail``), an SMS or letter to the
first valid contact.

Validation is syntactic only — no DNS or network (SPEC R11): ``email_validator`` without
deliverability checks, ``phonenumbers`` parsed to E.164, and a postal address of at least
two non-blank lines. Each distinct value is validated once (cached).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import email_validator
import numpy as np
import pandas as pd
import phonenumbers

from dispatch.vocabulary import ChannelName, ManualReason

FIELD_BY_CHANNEL = {
    ChannelName.EMAIL: "email",
    ChannelName.SMS: "phone",
    ChannelName.LETTER: "postal_address",
}
"""The contact column each channel needs."""

_FIELD_LABEL = {
    ChannelName.EMAIL: "e-mail address",
    ChannelName.SMS: "phone number",
    ChannelName.LETTER: "postal address",
}
_WITH_ARTICLE = {
    ChannelName.EMAIL: "an e-mail address",
    ChannelName.SMS: "a phone number",
    ChannelName.LETTER: "a postal address",
}

OUTPUT_COLUMNS = ("action_id", "recipient", "recipients", "contact_name", "problem", "problem_detail")


class Checked(NamedTuple):
    """One contact value after syntactic validation: its normalized form, or why it is refused."""

    value: str | None
    error: str | None


# --------------------------------------------------------------------------- per-value validation


@functools.lru_cache(maxsize=65536)
def check_email(address: str) -> Checked:
    """Syntax of one e-mail address; keeps ``email_validator``'s normalized form (lower-cased domain)."""
    try:
        result = email_validator.validate_email(address, check_deliverability=False)
    except email_validator.EmailNotValidError as exc:
        return Checked(None, str(exc))
    return Checked(result.normalized, None)


@functools.lru_cache(maxsize=65536)
def check_phone(number: str, region: str | None) -> Checked:
    """One phone number as E.164; ``region`` interprets numbers written without '+' (the org's country).

    ``is_possible_number`` (length per country) rather than ``is_valid_number`` (allocated
    ranges): the rule is syntactic, and the provider is the one to refuse unallocated numbers.
    """
    try:
        parsed = phonenumbers.parse(number, region.upper() if region else None)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and not region:
            return Checked(None, "no country code, and the organization names no country to read it with")
        return Checked(None, str(exc.args[0] if exc.args else exc))
    if not phonenumbers.is_possible_number(parsed):
        return Checked(None, "not a possible phone number (wrong length for its country)")
    return Checked(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164), None)


@functools.lru_cache(maxsize=65536)
def check_postal_address(text: str) -> Checked:
    """A postal address block: trimmed non-blank lines, at least two (name/street and town)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return Checked(None, "a postal address needs at least two non-blank lines")
    return Checked("\n".join(lines), None)


# --------------------------------------------------------------------------- selection


def _blank_to_na(values: pd.Series) -> pd.Series:
    """Values as stripped strings (object dtype); empty or whitespace-only ones count as missing (None)."""
    text = values.astype("string").str.strip()
    text = text.where(text.str.len() > 0)
    return text.astype(object).where(text.notna(), None)


def _candidates(actions: pd.DataFrame, contacts: pd.DataFrame) -> pd.DataFrame:
    """One row per (action, contact having the channel's field), restricted to the right tier.

    The tier is the billing contacts when at least one billing contact has the field,
    otherwise all the customer's contacts having it (which are then all non-billing).
    """
    base = contacts[["contact_id", "customer_id", "name", "is_billing"]].copy()
    base["is_billing"] = base["is_billing"].astype(object).fillna(False).astype(bool)
    long = pd.concat(
        [
            base.assign(channel=channel, value=_blank_to_na(contacts[field]))
            for channel, field in FIELD_BY_CHANNEL.items()
        ],
        ignore_index=True,
    ).dropna(subset=["value"])

    merged = actions[["_pos", "customer_id", "channel", "org_id"]].merge(
        long, on=["customer_id", "channel"], how="inner"
    )
    billing_tier = merged.groupby("_pos")["is_billing"].transform("any")
    chosen = merged[merged["is_billing"] | ~billing_tier]
    return chosen.sort_values(["_pos", "contact_id"], kind="stable").reset_index(drop=True)


def _validate(candidates: pd.DataFrame, default_region_by_org: dict[str, str | None]) -> pd.DataFrame:
    """Add ``normalized`` and ``error`` per candidate; one validator call per distinct value."""
    normalized = pd.Series(None, index=candidates.index, dtype=object)
    error = pd.Series(None, index=candidates.index, dtype=object)

    for channel, group in candidates.groupby("channel", sort=False):
        if channel == ChannelName.SMS:
            region = group["org_id"].map(default_region_by_org).astype(object)
            region = region.where(region.notna(), None)
            keys = list(zip(group["value"], region, strict=True))
            checked = {key: check_phone(*key) for key in dict.fromkeys(keys)}
            results = [checked[key] for key in keys]
        else:
            check = check_email if channel == ChannelName.EMAIL else check_postal_address
            checked = {value: check(value) for value in pd.unique(group["value"])}
            results = [checked[value] for value in group["value"]]
        normalized.loc[group.index] = [r.value for r in results]
        error.loc[group.index] = [r.error for r in results]

    return candidates.assign(normalized=normalized, error=error)


def _describe_refused(refused: pd.DataFrame) -> pd.Series:
    """Per action, one human line naming every refused value, its contact and the reason."""
    label = refused["channel"].map(_FIELD_LABEL)
    lines = (
        "invalid "
        + label
        + " "
        + refused["value"].map(repr)
        + " (contact "
        + refused["contact_id"].astype(str)
        + "): "
        + refused["error"].astype(str)
    )
    return lines.groupby(refused["_pos"]).agg("; ".join)


def pick_recipients(
    actions: pd.DataFrame,
    contacts: pd.DataFrame,
    default_region_by_org: dict[str, str | None] | None = None,
) -> pd.DataFrame:
    """Recipients of each action per CONTRACT §2, validated syntactically (SPEC R11).

    ``actions``: ``action_id``, ``customer_id``, ``channel`` ('email' | 'sms' | 'letter'),
    ``org_id``. ``contacts``: the accounting columns ``contact_id``, ``customer_id``,
    ``name``, ``email``, ``phone``, ``postal_address``, ``is_billing``.
    ``default_region_by_org``: org_id -> ISO country used to read phone numbers written
    without '+' (normally the org's holiday country); missing means such numbers are invalid.

    Returns a frame on the index of ``actions`` with:

    - ``action_id``;
    - ``recipient`` (str | None) — e-mail: the addresses joined with ", "; sms: the E.164
      number; letter: the address block (trimmed lines joined with newlines);
    - ``recipients`` (tuple[str, ...]) — the same as a tuple, () when there is none;
    - ``contact_name`` (str | None) — name of the first contact used (by ``contact_id``);
    - ``problem`` — None, ``'no_contact'`` (no contact of the customer has the field) or
      ``'invalid_contact'`` (some have it, none is valid);
    - ``problem_detail`` (str | None) — human text naming the bad values; also set, with
      ``problem`` None, when the message goes out but invalid values were passed over (e-mail
      addresses dropped; for SMS/letter, contacts before the one used).

    E-mail addresses are de-duplicated case-insensitively after normalization (first
    spelling by ``contact_id`` kept). Raises ``ValueError`` on an unknown channel.
    """
    unknown = sorted(set(actions["channel"].dropna().astype(str)) - FIELD_BY_CHANNEL.keys())
    if unknown or actions["channel"].isna().any():
        raise ValueError(f"pick_recipients: unknown channel(s) {unknown or [None]}")

    regions = default_region_by_org or {}
    work = actions[["action_id", "customer_id", "channel", "org_id"]].copy()
    work["_pos"] = np.arange(len(work))
    candidates = _validate(_candidates(work, contacts), regions)

    valid = candidates[candidates["normalized"].notna()].copy()
    refused = candidates[candidates["normalized"].isna()]

    # E-mail: every valid address once; SMS and letter: the first valid contact.
    valid["_dedup"] = valid["normalized"].str.casefold()
    valid = valid.drop_duplicates(subset=["_pos", "_dedup"], keep="first")
    single = valid["channel"] != ChannelName.EMAIL
    valid = pd.concat([valid[~single], valid[single].groupby("_pos", sort=False).head(1)])
    valid = valid.sort_values(["_pos", "contact_id"], kind="stable")

    positions = pd.RangeIndex(len(work))
    per_action = valid.groupby("_pos")
    recipients = per_action["normalized"].agg(tuple).reindex(positions)
    first_contact = per_action["contact_id"].first()
    contact_name = _blank_to_na(per_action["name"].first().reindex(positions))

    # Refused values worth reporting: all of them for e-mail and for actions that send nothing;
    # for SMS/letter that do send, only those skipped before the contact used.
    chosen = refused["_pos"].map(first_contact)
    before_chosen = pd.Series(False, index=refused.index)
    sent_by_other = chosen.notna()
    before_chosen[sent_by_other] = refused.loc[sent_by_other, "contact_id"] < chosen[sent_by_other]
    skipped = (refused["channel"] == ChannelName.EMAIL) | ~sent_by_other | before_chosen
    refused_detail = _describe_refused(refused[skipped]).reindex(positions)

    sends = recipients.notna().to_numpy()
    has_field = positions.isin(candidates["_pos"].unique())
    problem = np.where(has_field, ManualReason.INVALID_CONTACT.value, ManualReason.NO_CONTACT.value)
    problem = problem.astype(object)
    problem[sends] = None
    no_contact_detail = (
        "customer "
        + work["customer_id"].astype(str)
        + " has no contact with "
        + work["channel"].map(_WITH_ARTICLE)
    ).to_numpy()
    detail = np.where(
        problem == ManualReason.NO_CONTACT, no_contact_detail, refused_detail.to_numpy(dtype=object)
    )

    # Object columns with None for "nothing", not pandas' string dtype with NaN: callers
    # write these straight into nullable database columns and test them with `is None`.
    columns = {
        "action_id": work["action_id"].to_numpy(),
        "recipient": [", ".join(r) if isinstance(r, tuple) else None for r in recipients],
        "recipients": [r if isinstance(r, tuple) else () for r in recipients],
        "contact_name": list(contact_name),
        "problem": list(problem),
        "problem_detail": [d if isinstance(d, str) else None for d in detail],
    }
    return pd.DataFrame(
        {name: pd.Series(values, index=actions.index, dtype=object) for name, values in columns.items()}
    )
