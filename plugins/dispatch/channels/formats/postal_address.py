"""A postal address block (the contact's ``postal_address``) split into the fields a
print-and-mail API wants: name, company, street lines, city, state, postcode, country.

The block is written the way it is printed on the envelope, one item per line::

    Leroy Paysage                  <- name (first line)
    Service comptabilité           <- company / attention line (optional)
    12 rue des Lilas               <- street (line 1), then an optional line 2
    69003 Lyon                     <- "ZIP City" ...
    France                         <- country (optional; name in en/fr/de/es/it/nl, or ISO code)

    Atlas Queens LLC
    Attn: Accounts Payable
    31-10 Thomson Avenue
    Long Island City, NY 11101     <- ... or "City, ST ZIP"

Without a country line, a "City, ST 12345" line is taken as the United States and anything
else as the default country (``PRINTAPI_DEFAULT_COUNTRY``). A block that does not fit —
no postcode line, a single line, no country to be found — is refused with a
:class:`AddressError` that says which rule it breaks, for a person to fix the contact.
Nothing is guessed beyond that: a letter sent to a mis-parsed address is printed and paid for.
Control characters are dropped from every line first (:mod:`dispatch.rules.control_chars`), so none
reaches a print API's address fields.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from dispatch.rules.control_chars import clean_block

#: "City, ST ZIP": US (and Canadian) style, the state or province as a two-letter code.
_CITY_STATE_ZIP = re.compile(
    r"(?P<city>[^,]+?),\s*(?P<state>[A-Za-z]{2})\.?\s+(?P<zip>[A-Za-z0-9][A-Za-z0-9 -]{1,9})"
)
#: "ZIP City": a postcode starting with a digit (optionally prefixed "D-", "SE-"; "111 22"
#: in two groups), then a city that starts with a letter.
_ZIP_CITY = re.compile(r"(?P<zip>(?:[A-Za-z]{1,3}-)?\d[\d-]*(?:\s\d{2,3})?)\s+(?P<city>[^\d\s,].*)")
_US_ZIP = re.compile(r"\d{5}(?:-\d{4})?")

_LOCALES_FOR_COUNTRY_NAMES = ("en", "fr", "de", "es", "it", "nl", "pt")
_COUNTRY_ALIASES = {
    "usa": "US",
    "u.s.a.": "US",
    "u.s.": "US",
    "united states of america": "US",
    "uk": "GB",
    "great britain": "GB",
    "england": "GB",
    "scotland": "GB",
    "wales": "GB",
}


class AddressError(ValueError):
    """The block cannot be read as a postal address; the message says why."""


@dataclass(frozen=True)
class PostalAddress:
    """One address, each field as written in the block (case kept)."""

    name: str
    line1: str
    city: str
    country: str  # ISO 3166-1 alpha-2
    company: str | None = None
    line2: str | None = None
    state: str | None = None
    zip: str | None = None


def _fold(text: str) -> str:
    """Case- and accent-insensitive key: "États-Unis" and "etats-unis" match."""
    decomposed = unicodedata.normalize("NFKD", text.strip().casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@functools.lru_cache(maxsize=1)
def _country_names() -> dict[str, str]:
    from babel import Locale

    names: dict[str, str] = {}
    for locale in _LOCALES_FOR_COUNTRY_NAMES:
        for code, name in Locale(locale).territories.items():
            if len(code) == 2 and code.isalpha() and code not in ("EU", "EZ", "UN", "ZZ", "QO"):
                names.setdefault(_fold(name), code)
                names.setdefault(_fold(code), code)
    names.update(_COUNTRY_ALIASES)
    return names


def country_code(line: str) -> str | None:
    """The ISO code a line names ("France", "FR", "Deutschland", "USA"), or None."""
    return _country_names().get(_fold(line))


def parse_postal_address(block: str, default_country: str | None = None) -> PostalAddress:
    """Split ``block`` (see the module docstring); :class:`AddressError` when it does not fit."""
    lines = [line.strip() for line in clean_block(block).split("\n") if line.strip()]
    if len(lines) < 3:
        raise AddressError(
            f"a postal address needs at least 3 lines (name, street, 'ZIP City' or 'City, ST ZIP'); "
            f"got {len(lines)}"
        )
    country = country_code(lines[-1])
    if country is not None:
        lines = lines[:-1]
    locality = lines[-1]
    us_style = _CITY_STATE_ZIP.fullmatch(locality)
    zip_first = _ZIP_CITY.fullmatch(locality)
    state: str | None = None
    if us_style:
        city, state, postcode = us_style["city"].strip(), us_style["state"].upper(), us_style["zip"].strip()
        if country is None and _US_ZIP.fullmatch(postcode):
            country = "US"
    elif zip_first:
        city, postcode = zip_first["city"].strip(), zip_first["zip"]
    else:
        raise AddressError(
            f"the line before the country, {locality!r}, is neither 'ZIP City' (e.g. '69003 Lyon') "
            "nor 'City, ST ZIP' (e.g. 'Long Island City, NY 11101')"
        )
    country = country or (default_country.strip().upper() if default_country else None)
    if country is None:
        raise AddressError("the address has no country line and no default country is configured")
    before = lines[:-1]
    if len(before) < 2:
        raise AddressError("a postal address needs a name line and a street line before the postcode line")
    name, middle = before[0], before[1:]
    company: str | None = None
    line2: str | None = None
    if len(middle) == 1:
        line1 = middle[0]
    elif len(middle) == 2 and middle[0][:1].isdigit() and not middle[1][:1].isdigit():
        line1, line2 = middle  # "12 Main St" then "Suite 4": street, then its complement
    else:
        company, line1 = middle[0], middle[1]  # "Attn: …" / "Service …" above the street
        line2 = ", ".join(middle[2:]) or None
    return PostalAddress(
        name=name,
        company=company,
        line1=line1,
        line2=line2,
        city=city,
        state=state,
        zip=postcode,
        country=country,
    )
