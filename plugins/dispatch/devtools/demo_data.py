"""The demo: an accounting database with every situation the pipeline must handle, and its config.

Dates are relative to the ``today`` the demo is built for, so a demo built any day has invoices
issued in the last three weeks, invoices issued in the coming ten days, and ``updated_at``
values spread so that daily runs over those weeks import them little by little. The same
``(today, seed)`` always gives the same rows; another ``today`` gives the same rows shifted.

What is where (the lead's tests and the README refer to these ids):

* ``NOTABLE`` — one invoice per scenario (R1, R7, R8, R11, B5 …), hand-placed in time;
* ``MALFORMED`` — rows the extract must quarantine (B6);
* the rest are ordinary invoices of ordinary customers, drawn with NumPy from ``seed``.

The configuration (organizations, users, plans, assignments) is ``include/demo/config.yaml``,
a template whose two switch-on instants are filled in here (see the comment at its top).

The accounting database holds only the *current* state of each invoice, so an invoice voided
after its import cannot be written up front: ``DemoSummary.changes`` lists such accounting
events and ``apply_accounting_changes`` plays those due by a given instant (call it before
each run of a simulated sequence of days to see B5 at work).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import numpy as np

from dispatch.channels.formats.letter_pdf import build_invoice_placeholder_pdf
from dispatch.paths import resolve
from dispatch.storage.accounting_schema import contacts, create_accounting_schema, customers, invoices
from dispatch.storage.engine import make_engine

DEMO_CONFIG_TEMPLATE = "include/demo/config.yaml"

#: Issue dates span [today - 20, today + 10].
FIRST_ISSUE_OFFSET = -20
LAST_ISSUE_OFFSET = 10
#: Total number of invoice rows (notable + malformed + ordinary).
DEMO_INVOICE_COUNT = 300


@dataclass(frozen=True)
class DemoOrg:
    org_id: str
    timezone: str
    language: str
    currency: str
    number_prefix: str
    first_number: int
    #: invoice sending is switched on this many days before ``today``, at local midnight
    enabled_days_before: int
    placeholder: str


ORGS: tuple[DemoOrg, ...] = (
    DemoOrg("acme_fr", "Europe/Paris", "fr", "EUR", "FA-", 10001, 14, "acme_enabled_at"),
    DemoOrg("hudson_ny", "America/New_York", "en", "USD", "INV-", 50001, 7, "hudson_enabled_at"),
)
_ORG = {o.org_id: o for o in ORGS}

# --- customers and contacts ----------------------------------------------------------------
# (customer_id, org_id, name, parent_customer_id, language)
_CUSTOMERS: tuple[tuple[str, str, str, str | None, str | None], ...] = (
    ("acme_c_durand", "acme_fr", "Groupe Durand", None, "fr"),
    ("acme_c_durand_lyon", "acme_fr", "Durand Lyon SAS", "acme_c_durand", "fr"),
    ("acme_c_durand_nantes", "acme_fr", "Durand Nantes SARL", "acme_c_durand", "fr"),
    ("acme_c_durand_lille", "acme_fr", "Durand Lille SAS", "acme_c_durand", "fr"),
    ("acme_c_martin", "acme_fr", "Martin & Fils SARL", None, "fr"),
    ("acme_c_bernard", "acme_fr", "Bernard Distribution", None, "fr"),
    ("acme_c_petit", "acme_fr", "Petit Électricité", None, "fr"),
    ("acme_c_roux", "acme_fr", "Roux Transports", None, "fr"),
    ("acme_c_dupont", "acme_fr", "Dupont Menuiserie", None, "fr"),
    ("acme_c_leroy", "acme_fr", "Leroy Paysage", None, "fr"),
    ("acme_c_garnier", "acme_fr", "Garnier Bâtiment", None, "fr"),
    ("acme_c_faure", "acme_fr", "Faure Conseil", None, "fr"),
    ("acme_c_girard", "acme_fr", "Fromagerie Girard", None, "fr"),
    ("acme_c_lambert", "acme_fr", "Lambert Imprimerie", None, "fr"),
    ("acme_c_morel", "acme_fr", "Pharmacie Morel", None, "fr"),
    ("acme_c_fournier", "acme_fr", "Fournier Électroménager", None, "fr"),
    ("acme_c_fontaine", "acme_fr", "Fontaine Jardins", None, "fr"),
    ("acme_c_chevalier", "acme_fr", "Chevalier Architectes", None, "fr"),
    ("acme_c_blanc", "acme_fr", "Blanc Textile", None, "fr"),
    ("acme_c_guerin", "acme_fr", "Guérin Logistique", None, "fr"),
    ("acme_c_muller", "acme_fr", "Muller Boissons", None, "fr"),
    ("acme_c_robin", "acme_fr", "Robin SA", None, "fr"),
    ("acme_c_gauthier", "acme_fr", "Gauthier Coiffure", None, "fr"),
    ("acme_c_perrin", "acme_fr", "Perrin & Associés", None, "fr"),
    ("acme_c_mathieu", "acme_fr", "Mathieu Bois", None, "fr"),
    ("hudson_c_atlas", "hudson_ny", "Atlas Holdings Inc.", None, "en"),
    ("hudson_c_atlas_brooklyn", "hudson_ny", "Atlas Brooklyn LLC", "hudson_c_atlas", "en"),
    ("hudson_c_atlas_queens", "hudson_ny", "Atlas Queens LLC", "hudson_c_atlas", "en"),
    ("hudson_c_baker", "hudson_ny", "Baker & Sons Bakery", None, "en"),
    ("hudson_c_ellis", "hudson_ny", "Ellis Hardware", None, "en"),
    ("hudson_c_fisher", "hudson_ny", "Fisher Marine Supply", None, "en"),
    ("hudson_c_grant", "hudson_ny", "Grant Dental Group", None, "en"),
    ("hudson_c_harper", "hudson_ny", "Harper Law LLP", None, "en"),
    ("hudson_c_irving", "hudson_ny", "Irving Cafe", None, "en"),
    ("hudson_c_jensen", "hudson_ny", "Jensen Auto Body", None, "en"),
    ("hudson_c_kowalski", "hudson_ny", "Kowalski Engineering", None, "en"),
    ("hudson_c_lin", "hudson_ny", "Lin Trading Co.", None, "en"),
    ("hudson_c_murphy", "hudson_ny", "Murphy Plumbing", None, "en"),
    ("hudson_c_nguyen", "hudson_ny", "Nguyen Markets", None, "en"),
    ("hudson_c_obrien", "hudson_ny", "O'Brien Pub Group", None, None),  # language unset: 'en'
    ("hudson_c_patel", "hudson_ny", "Patel Pharmacy", None, "en"),
    ("hudson_c_quinn", "hudson_ny", "Quinn Florists", None, "en"),
    ("hudson_c_rivera", "hudson_ny", "Rivera Foods", None, "en"),
)


@dataclass(frozen=True)
class _Contact:
    customer_id: str
    name: str | None
    email: str | None = None
    phone: str | None = None
    address: str | None = None
    billing: bool = True


_CONTACTS: tuple[_Contact, ...] = (
    _Contact("acme_c_durand", "Service comptable", "compta@groupe-durand.example"),
    _Contact("acme_c_durand_lyon", "Marc Durand", "factures.lyon@groupe-durand.example"),
    _Contact(
        "acme_c_durand_nantes",
        "Sophie Lambert",
        "sophie.lambert@groupe-durand.example",
        phone="06 12 34 56 78",
    ),
    _Contact("acme_c_durand_lille", "Comptabilité Lille", "lille@groupe-durand.example"),
    # two billing addresses: one e-mail to both; the workshop is not billing
    _Contact("acme_c_martin", "Comptabilité", "compta@martin-fils.example"),
    _Contact("acme_c_martin", "Paul Martin", "paul.martin@martin-fils.example"),
    _Contact("acme_c_martin", "Atelier", "atelier@martin-fils.example", "04 72 00 11 22", billing=False),
    _Contact("acme_c_bernard", "Factures", "factures@bernard-distribution.example"),
    # acme_c_petit: no contact at all
    _Contact("acme_c_roux", "Direction", "direction@roux-transports.example", billing=False),
    _Contact("acme_c_roux", "Accueil", None, "04 78 12 34 56", billing=False),
    _Contact("acme_c_dupont", "Jean Dupont", "jean.dupont@@example"),
    _Contact(
        "acme_c_leroy",
        "Service comptabilité",
        address="Leroy Paysage\nService comptabilité\n12 rue des Lilas\n69003 Lyon\nFrance",
    ),
    _Contact("acme_c_garnier", "Contact", "contact@garnier-batiment.example"),
    _Contact("acme_c_faure", "Hélène Faure", "helene.faure@faure-conseil.example"),
    _Contact("acme_c_girard", "Comptabilité", "compta@fromagerie-girard.example"),
    _Contact("acme_c_lambert", "Factures", "factures@lambert-imprimerie.example"),
    _Contact("acme_c_morel", "Pharmacie", "pharmacie@pharmacie-morel.example"),
    _Contact("acme_c_morel", "Luc Morel", None, "07 98 76 54 32", billing=False),
    _Contact("acme_c_fournier", "Comptabilité", "compta@fournier-electro.example"),
    _Contact("acme_c_fontaine", "Standard", None, "06 12 34"),
    _Contact("acme_c_chevalier", "Agence", "agence@chevalier-architectes.example", "01 42 68 53 00"),
    _Contact("acme_c_blanc", "Comptabilité", "compta@blanc-textile.example"),
    _Contact(
        "acme_c_guerin",
        "Comptabilité fournisseurs",
        "compta@guerin-logistique.example",
        address="Guérin Logistique\nZI des Trois Fontaines\n5 allée des Transporteurs\n59000 Lille",
    ),
    _Contact("acme_c_muller", "Comptabilité", "compta@muller-boissons.example"),
    _Contact("acme_c_robin", "Factures", "factures@robin-sa.example"),
    _Contact("acme_c_gauthier", "Anne Gauthier", None, "06 45 23 78 90"),
    _Contact("acme_c_perrin", "Comptabilité", "compta@perrin-associes.example"),
    _Contact("acme_c_mathieu", "Factures", "factures@mathieu-bois.example"),
    _Contact("hudson_c_atlas", "Accounts Payable", "ap@atlasholdings.example"),
    _Contact("hudson_c_atlas_brooklyn", "Dana Ruiz", "dana.ruiz@atlasholdings.example"),
    _Contact(
        "hudson_c_atlas_queens",
        "Accounts Payable",
        address="Atlas Queens LLC\nAttn: Accounts Payable\n31-10 Thomson Avenue\nLong Island City, NY 11101",
    ),
    _Contact("hudson_c_baker", "Tom Baker", None, "(212) 555-0143"),
    _Contact(
        "hudson_c_ellis",
        "Accounts Payable",
        address="Ellis Hardware\nAttn: Accounts Payable\n450 Fulton Street, Suite 12\n"
        "Brooklyn, NY 11201\nUSA",
    ),
    # hudson_c_fisher: no contact at all
    _Contact("hudson_c_grant", "Billing", "ap@@grantdental.example"),
    _Contact("hudson_c_harper", "Nora Harper", "nora@harperlaw.example"),
    _Contact("hudson_c_irving", "Manager", "manager@irvingcafe.example", billing=False),
    _Contact("hudson_c_jensen", "Erik Jensen", None, "(646) 555-0199"),
    _Contact("hudson_c_kowalski", "Billing", "billing@kowalski-eng.example"),
    _Contact("hudson_c_lin", "Accounts Payable", "ap@lintrading.example"),
    _Contact("hudson_c_murphy", "Accounts", "accounts@murphyplumbing.example"),
    _Contact("hudson_c_nguyen", "Accounts Payable", "ap@nguyenmarkets.example"),
    _Contact("hudson_c_obrien", "Office", address="O'Brien Pub Group\n17 Stone Street\nNew York, NY 10004"),
    _Contact("hudson_c_patel", "Finance", "finance@patelpharmacy.example"),
    _Contact("hudson_c_quinn", "Rose Quinn", None, "(718) 555-0172"),
    _Contact("hudson_c_rivera", "Accounts Payable", "ap@riverafoods.example"),
)

# --- hand-placed invoices ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Placed:
    """An invoice placed in time: issued ``issue`` days from today, last updated in accounting
    ``lag`` days before that at ``hour``:``minute`` UTC (``issue`` None: no issue date)."""

    invoice_id: str
    customer_id: str
    issue: int | None
    lag: int
    hour: int
    amount: str
    status: str = "open"
    pdf: bool = True
    currency: str | None = None  # default: the org's
    org_id: str | None = None  # default: the customer's
    minute: int = 17
    terms: int = 30  # days from issue to due date


#: scenario -> invoice id; every one of these is a regular, valid row.
NOTABLE: dict[str, str] = {
    "parent_own_invoice": "acme_inv_durand_group",  # the parent's plan (email J+3)
    "child_with_plan_email": "acme_inv_durand_lyon",  # R7: the child's plan, not the parent's
    "child_with_plan_sms": "acme_inv_durand_nantes",  # R7, SMS J+1 to 06 12 34 56 78
    "child_without_plan_1": "acme_inv_durand_lille_1",  # R8: to_send, no template
    "child_without_plan_2": "acme_inv_durand_lille_2",  # R8
    "two_billing_contacts": "acme_inv_martin_two_billing",  # one e-mail to both billing contacts
    "no_contact_email": "acme_inv_petit_no_contact",  # R11 manual no_contact
    "non_billing_contact_only": "acme_inv_roux_non_billing",  # sent to the non-billing contact
    "invalid_email": "acme_inv_dupont_invalid_email",  # R11 manual invalid_contact
    "letter_with_address": "acme_inv_leroy_letter",  # letter delay 0
    "letter_without_address": "acme_inv_garnier_no_address",  # manual no_contact
    "manual_template": "acme_inv_faure_manual",  # to-do of u_acme_claire
    "paid_direct_debit": "acme_inv_girard_paid_direct_debit",  # R1: paid but still to_send
    "plan_without_template": "acme_inv_lambert_no_template",  # to_send, no template
    "sms_non_billing_phone": "acme_inv_morel_sms_non_billing_phone",  # SMS to 07 98 76 54 32
    "sms_no_phone": "acme_inv_fournier_no_phone",  # manual no_contact
    "sms_invalid_phone": "acme_inv_fontaine_bad_phone",  # manual invalid_contact
    "issued_in_future_delay0": "acme_inv_future_issue",  # imported before its issue date
    "voided_after_import": "acme_inv_late_void",  # B5, see DemoSummary.changes
    "imported_before_switch_on": "acme_inv_before_switch_on",  # R2 not_required
    "void_at_import": "acme_inv_void",
    "no_pdf": "acme_inv_no_pdf",
    "us_parent_own_invoice": "hudson_inv_atlas_group",
    "us_child_email_d3": "hudson_inv_atlas_brooklyn",
    "us_child_letter": "hudson_inv_atlas_queens",
    "us_sms": "hudson_inv_baker_sms",  # (212) 555-0143
    "us_letter": "hudson_inv_ellis_letter",
    "us_no_contact": "hudson_inv_fisher_no_contact",
    "us_invalid_email": "hudson_inv_grant_invalid_email",
    "us_manual_template": "hudson_inv_harper_manual",  # to-do of u_hudson_derek
    "us_non_billing_contact_only": "hudson_inv_irving_non_billing",
    "us_imported_before_switch_on": "hudson_inv_before_switch_on",
    "us_issued_in_future_delay3": "hudson_inv_future_issue",
    "us_void_at_import": "hudson_inv_void",
    "us_no_pdf": "hudson_inv_no_pdf",
}

#: B6 defect -> invoice id of a row the extract must reject.
MALFORMED: dict[str, str] = {
    "missing_issue_date": "acme_bad_missing_issue_date",
    "unknown_customer": "hudson_bad_unknown_customer",
    "bad_currency_euro": "acme_bad_currency_euro",
    "bad_currency_xx1": "hudson_bad_currency_xx1",
    "negative_total": "acme_bad_negative_total",
    "duplicate_number": "acme_bad_duplicate_number",  # same number as two_billing_contacts
}
#: The duplicate-number row copies the number of this (valid, earlier-updated) invoice.
DUPLICATED_INVOICE_ID = NOTABLE["two_billing_contacts"]
UNKNOWN_CUSTOMER_ID = "hudson_c_ghost"

_N = NOTABLE
_PLACED: tuple[_Placed, ...] = (
    _Placed(_N["parent_own_invoice"], "acme_c_durand", -5, 2, 11, "4820.00"),
    _Placed(_N["child_with_plan_email"], "acme_c_durand_lyon", -2, 1, 16, "1250.40"),
    _Placed(_N["child_with_plan_sms"], "acme_c_durand_nantes", -3, 0, 9, "310.00"),
    _Placed(_N["child_without_plan_1"], "acme_c_durand_lille", -4, 1, 15, "975.25"),
    _Placed(_N["child_without_plan_2"], "acme_c_durand_lille", -1, 0, 8, "142.80"),
    _Placed(_N["two_billing_contacts"], "acme_c_martin", -4, 1, 10, "2300.00"),
    _Placed(_N["no_contact_email"], "acme_c_petit", -3, 1, 13, "89.90"),
    _Placed(_N["non_billing_contact_only"], "acme_c_roux", -2, 0, 9, "1640.00"),
    _Placed(_N["invalid_email"], "acme_c_dupont", -3, 0, 11, "560.00"),
    _Placed(_N["letter_with_address"], "acme_c_leroy", -2, 1, 17, "720.50"),
    _Placed(_N["letter_without_address"], "acme_c_garnier", -4, 0, 10, "3150.00"),
    _Placed(_N["manual_template"], "acme_c_faure", -3, 1, 14, "12500.00"),
    _Placed(_N["paid_direct_debit"], "acme_c_girard", -5, 0, 6, "64.99", status="paid"),
    _Placed(_N["plan_without_template"], "acme_c_lambert", -4, 1, 12, "430.00"),
    _Placed(_N["sms_non_billing_phone"], "acme_c_morel", -3, 0, 10, "215.30"),
    _Placed(_N["sms_no_phone"], "acme_c_fournier", -4, 1, 9, "1899.00"),
    _Placed(_N["sms_invalid_phone"], "acme_c_fontaine", -2, 1, 15, "380.00"),
    _Placed(_N["issued_in_future_delay0"], "acme_c_blanc", 2, 3, 15, "2045.60"),
    _Placed(_N["voided_after_import"], "acme_c_bernard", -6, 3, 10, "990.00"),
    _Placed(_N["imported_before_switch_on"], "acme_c_martin", -19, 1, 9, "1180.00"),
    _Placed(_N["void_at_import"], "acme_c_chevalier", -8, 1, 10, "6400.00", status="void"),
    _Placed(_N["no_pdf"], "acme_c_robin", -3, 1, 11, "275.00", pdf=False),
    _Placed(_N["us_parent_own_invoice"], "hudson_c_atlas", -3, 1, 14, "8200.00"),
    _Placed(_N["us_child_email_d3"], "hudson_c_atlas_brooklyn", -4, 1, 15, "1325.75"),
    _Placed(_N["us_child_letter"], "hudson_c_atlas_queens", -2, 0, 13, "640.00"),
    _Placed(_N["us_sms"], "hudson_c_baker", -3, 1, 16, "118.40"),
    _Placed(_N["us_letter"], "hudson_c_ellis", -2, 1, 18, "2210.00"),
    _Placed(_N["us_no_contact"], "hudson_c_fisher", -3, 0, 15, "745.00"),
    _Placed(_N["us_invalid_email"], "hudson_c_grant", -2, 0, 14, "1960.00"),
    _Placed(_N["us_manual_template"], "hudson_c_harper", -4, 1, 17, "15000.00"),
    _Placed(_N["us_non_billing_contact_only"], "hudson_c_irving", -1, 0, 13, "86.50"),
    _Placed(_N["us_imported_before_switch_on"], "hudson_c_lin", -11, 1, 15, "3300.00"),
    _Placed(_N["us_issued_in_future_delay3"], "hudson_c_kowalski", 2, 3, 14, "4780.00"),
    _Placed(_N["us_void_at_import"], "hudson_c_murphy", -2, 1, 16, "510.00", status="void"),
    _Placed(_N["us_no_pdf"], "hudson_c_patel", -3, 0, 15, "325.10", pdf=False),
    # B6: rows the extract must reject (the duplicate's number is filled in by _number_invoices)
    _Placed(MALFORMED["missing_issue_date"], "acme_c_martin", None, 2, 10, "410.00", pdf=False),
    _Placed(MALFORMED["unknown_customer"], UNKNOWN_CUSTOMER_ID, -2, 0, 12, "99.00", org_id="hudson_ny"),
    _Placed(MALFORMED["bad_currency_euro"], "acme_c_blanc", -3, 1, 9, "150.00", currency="EURO"),
    _Placed(MALFORMED["bad_currency_xx1"], "hudson_c_rivera", -2, 1, 11, "720.00", currency="xx1"),
    _Placed(MALFORMED["negative_total"], "acme_c_perrin", -3, 0, 16, "-180.00"),
    _Placed(MALFORMED["duplicate_number"], "acme_c_robin", -2, 0, 14, "2300.00"),
)

#: Ordinary customers that receive the random invoices, with their relative weight. They all
#: have a plan and a usable contact for it, so that the scenarios above stay the only oddities.
_ORDINARY: dict[str, dict[str, int]] = {
    "acme_fr": {
        "acme_c_durand": 1, "acme_c_durand_lyon": 3, "acme_c_durand_nantes": 2, "acme_c_martin": 3,
        "acme_c_bernard": 3, "acme_c_chevalier": 2, "acme_c_blanc": 3, "acme_c_guerin": 2,
        "acme_c_muller": 3, "acme_c_robin": 3, "acme_c_gauthier": 2, "acme_c_perrin": 3,
        "acme_c_mathieu": 2, "acme_c_leroy": 1,
    },
    "hudson_ny": {
        "hudson_c_atlas": 1, "hudson_c_atlas_brooklyn": 3, "hudson_c_atlas_queens": 2,
        "hudson_c_baker": 2, "hudson_c_ellis": 1, "hudson_c_jensen": 2, "hudson_c_kowalski": 3,
        "hudson_c_lin": 3, "hudson_c_murphy": 3, "hudson_c_nguyen": 3, "hudson_c_obrien": 1,
        "hudson_c_patel": 3, "hudson_c_quinn": 2, "hudson_c_rivera": 3,
    },
}  # fmt: skip
#: Share of the ordinary invoices per org.
_ORDINARY_SHARE = {"acme_fr": 0.56, "hudson_ny": 0.44}


@dataclass(frozen=True)
class AccountingChange:
    """Something the accounting system does to an invoice after the demo was written."""

    invoice_id: str
    at: dt.datetime  # UTC, aware
    status: str


@dataclass(frozen=True)
class DemoSummary:
    """What ``build_demo`` wrote, for the CLI to print and the tests/README to refer to."""

    accounting_url: str
    config_path: Path
    pdf_dir: Path
    today: dt.date
    seed: int
    org_ids: tuple[str, ...]
    #: org id -> switch-on instant of invoice sending written into the config (aware)
    enabled_at: Mapping[str, dt.datetime]
    #: issue dates span [first_issue_date, last_issue_date]
    first_issue_date: dt.date
    last_issue_date: dt.date
    #: ``updated_at`` span (aware UTC): runs between these import everything progressively
    first_updated_at: dt.datetime
    last_updated_at: dt.datetime
    customers: int
    contacts: int
    invoices: int  # every row, malformed ones included
    malformed: int
    pdfs: int
    notable: Mapping[str, str]
    malformed_ids: Mapping[str, str]
    changes: tuple[AccountingChange, ...]


# --- building ----------------------------------------------------------------------------------


def enabled_instants(today: dt.date) -> dict[str, dt.datetime]:
    """Switch-on instant of each demo org: local midnight, some days before ``today``."""
    return {
        org.org_id: dt.datetime.combine(
            today - dt.timedelta(days=org.enabled_days_before), dt.time(0, 0), ZoneInfo(org.timezone)
        )
        for org in ORGS
    }


def render_demo_config(today: dt.date, template: Path | None = None) -> str:
    """The demo config with its switch-on placeholders replaced by ISO instants.

    Plain substitution of the quoted placeholders, not Jinja: the plans' subjects and bodies
    in the same file are Jinja templates that must reach the config loader unrendered.
    """
    text = (template or resolve(DEMO_CONFIG_TEMPLATE)).read_text(encoding="utf-8")
    for org in ORGS:
        quoted = f'"{{{{ {org.placeholder} }}}}"'
        if quoted not in text:
            raise ValueError(f"demo config template has no {quoted} placeholder")
        text = text.replace(quoted, f'"{enabled_instants(today)[org.org_id].isoformat()}"')
    return text


def _customer_rows() -> list[dict[str, object]]:
    keys = ("customer_id", "org_id", "name", "parent_customer_id", "language")
    return [dict(zip(keys, row, strict=True)) for row in _CUSTOMERS]


def _contact_rows() -> list[dict[str, object]]:
    """Contact ids number each customer's contacts in the listed order (which one is "first"
    for an SMS or a letter is decided by ``contact_id``)."""
    rows: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    for c in _CONTACTS:
        seen[c.customer_id] = seen.get(c.customer_id, 0) + 1
        rows.append(
            {
                "contact_id": f"{c.customer_id}_k{seen[c.customer_id]}",
                "customer_id": c.customer_id,
                "name": c.name,
                "email": c.email,
                "phone": c.phone,
                "postal_address": c.address,
                "is_billing": c.billing,
            }
        )
    return rows


def _ordinary_invoices(rng: np.random.Generator, count: int) -> list[_Placed]:
    """``count`` unremarkable invoices: issue dates uniform over the window, updated 0–3 days
    before issue at office hours (UTC), mostly open, a few paid or void, a few without PDF."""
    placed: list[_Placed] = []
    for org_id, share in _ORDINARY_SHARE.items():
        n = round(count * share) if org_id != ORGS[-1].org_id else count - len(placed)
        names = list(_ORDINARY[org_id])
        weights = np.array([_ORDINARY[org_id][c] for c in names], dtype=float)
        who = rng.choice(len(names), size=n, p=weights / weights.sum())
        issue = rng.integers(FIRST_ISSUE_OFFSET, LAST_ISSUE_OFFSET + 1, size=n)
        lag = rng.integers(0, 4, size=n)
        lag = np.maximum(lag, issue - (LAST_ISSUE_OFFSET - 1))  # updated_at before today + 10
        hour = rng.integers(6, 21, size=n)
        minute = rng.integers(0, 60, size=n)
        amounts = np.round(rng.lognormal(mean=6.4, sigma=0.9, size=n), 2)
        status = rng.choice(np.array(["open", "paid", "void"]), size=n, p=[0.86, 0.12, 0.02])
        status[(status == "paid") & (issue > -5)] = "open"  # paid takes a few days
        terms = rng.choice(np.array([15, 30, 45]), size=n, p=[0.2, 0.6, 0.2])
        has_pdf = rng.random(size=n) >= 0.04
        prefix = org_id.split("_")[0]
        for i in range(n):
            placed.append(
                _Placed(
                    invoice_id=f"{prefix}_inv_{i + 1:04d}",
                    customer_id=names[who[i]],
                    issue=int(issue[i]),
                    lag=int(lag[i]),
                    hour=int(hour[i]),
                    minute=int(minute[i]),
                    amount=f"{amounts[i]:.2f}",
                    status=str(status[i]),
                    pdf=bool(has_pdf[i]),
                    terms=int(terms[i]),
                )
            )
    return placed


def _issue_order(p: _Placed) -> tuple[bool, int, int, int, int, str]:
    """Issue date, then the instant it reached accounting; undated rows last."""
    return (p.issue is None, p.issue or 0, -p.lag, p.hour, p.minute, p.invoice_id)


def _number_invoices(placed: Sequence[_Placed]) -> dict[str, str]:
    """Invoice numbers, consecutive per org in issue-date order (as accounting systems number
    them); rows without an issue date come last. The duplicate row copies its original's."""
    customer_org = {c[0]: c[1] for c in _CUSTOMERS}
    numbers: dict[str, str] = {}
    for org in ORGS:
        mine = [p for p in placed if (p.org_id or customer_org.get(p.customer_id)) == org.org_id]
        mine.sort(key=_issue_order)
        for k, p in enumerate(x for x in mine if x.invoice_id != MALFORMED["duplicate_number"]):
            numbers[p.invoice_id] = f"{org.number_prefix}{org.first_number + k}"
    numbers[MALFORMED["duplicate_number"]] = numbers[DUPLICATED_INVOICE_ID]
    return numbers


def _invoice_rows(placed: Sequence[_Placed], today: dt.date, pdf_dir: Path) -> list[dict[str, object]]:
    customer_org = {c[0]: c[1] for c in _CUSTOMERS}
    numbers = _number_invoices(placed)
    rows: list[dict[str, object]] = []
    for p in placed:
        org = _ORG[p.org_id or customer_org[p.customer_id]]
        issue = None if p.issue is None else today + dt.timedelta(days=p.issue)
        anchor = today + dt.timedelta(days=p.issue if p.issue is not None else 0)
        updated = dt.datetime.combine(anchor - dt.timedelta(days=p.lag), dt.time(p.hour, p.minute))
        rows.append(
            {
                "invoice_id": p.invoice_id,
                "org_id": org.org_id,
                "customer_id": p.customer_id,
                "number": numbers[p.invoice_id],
                "issue_date": issue,
                "due_date": None if issue is None else issue + dt.timedelta(days=p.terms),
                "currency": p.currency or org.currency,
                "total_amount": Decimal(p.amount),
                "status": p.status,
                "pdf_path": str(pdf_dir / f"{p.invoice_id}.pdf") if p.pdf else None,
                "updated_at": updated,  # naive UTC
            }
        )
    return rows


def _write_pdfs(rows: Iterable[Mapping[str, object]], names: Mapping[str, str]) -> int:
    """One placeholder PDF per row that names one (a file per invoice: a loop is the job)."""
    written = 0
    for row in rows:
        if row["pdf_path"] is None:
            continue
        lines = [
            f"Customer: {names.get(str(row['customer_id']), row['customer_id'])}",
            f"Issue date: {row['issue_date'] or '-'}",
            f"Due date: {row['due_date'] or '-'}",
            f"Total: {row['total_amount']} {row['currency']}",
        ]
        Path(str(row["pdf_path"])).write_bytes(build_invoice_placeholder_pdf(str(row["number"]), lines))
        written += 1
    return written


def _late_void_change(rows: Sequence[Mapping[str, object]]) -> AccountingChange:
    """When the accounting system voids ``voided_after_import``: at 23:00 UTC on the first
    weekday after its ``updated_at`` — after the weekday run that imports it (whatever its time
    of day) and, with its plan's 3-day delay, before any run that would send it."""
    row = next(r for r in rows if r["invoice_id"] == NOTABLE["voided_after_import"])
    day = cast(dt.datetime, row["updated_at"]).date() + dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return AccountingChange(
        NOTABLE["voided_after_import"], dt.datetime.combine(day, dt.time(23, 0), dt.UTC), "void"
    )


def build_demo(
    accounting_url: str,
    pdf_dir: Path,
    today: dt.date,
    seed: int = 7,
    *,
    config_out: Path | None = None,
    config_template: Path | None = None,
) -> DemoSummary:
    """Write the demo accounting database (tables recreated), its invoice PDFs, and the demo
    configuration rendered for ``today`` (to ``config_out``, default ``pdf_dir/../demo-config.yaml``).

    Deterministic for a given ``(today, seed)``; ``pdf_path`` values are absolute paths under
    ``pdf_dir``, so a reader need not know where the demo was built from. ``pdf_dir`` must be
    the invoice folder runs read from (``DISPATCH_PDF_ROOT``): a PDF anywhere else is refused.
    """
    pdf_dir = Path(pdf_dir).resolve()
    pdf_dir.mkdir(parents=True, exist_ok=True)
    config_path = Path(config_out) if config_out is not None else pdf_dir.parent / "demo-config.yaml"

    hand_placed = len(_PLACED)
    placed = [*_PLACED, *_ordinary_invoices(np.random.default_rng(seed), DEMO_INVOICE_COUNT - hand_placed)]
    customer_rows = _customer_rows()
    contact_rows = _contact_rows()
    invoice_rows = _invoice_rows(placed, today, pdf_dir)

    engine = make_engine(accounting_url)
    try:
        create_accounting_schema(engine, drop_existing=True)
        with engine.begin() as conn:
            conn.execute(customers.insert(), customer_rows)
            conn.execute(contacts.insert(), contact_rows)
            conn.execute(invoices.insert(), invoice_rows)
    finally:
        engine.dispose()

    pdfs = _write_pdfs(invoice_rows, {c[0]: c[2] for c in _CUSTOMERS})
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(render_demo_config(today, config_template), encoding="utf-8")

    issues = [cast(dt.date, r["issue_date"]) for r in invoice_rows if r["issue_date"] is not None]
    updates = [cast(dt.datetime, r["updated_at"]) for r in invoice_rows]
    return DemoSummary(
        accounting_url=accounting_url,
        config_path=config_path,
        pdf_dir=pdf_dir,
        today=today,
        seed=seed,
        org_ids=tuple(o.org_id for o in ORGS),
        enabled_at=enabled_instants(today),
        first_issue_date=min(issues),
        last_issue_date=max(issues),
        first_updated_at=min(updates).replace(tzinfo=dt.UTC),
        last_updated_at=max(updates).replace(tzinfo=dt.UTC),
        customers=len(customer_rows),
        contacts=len(contact_rows),
        invoices=len(invoice_rows),
        malformed=len(MALFORMED),
        pdfs=pdfs,
        notable=dict(NOTABLE),
        malformed_ids=dict(MALFORMED),
        changes=(_late_void_change(invoice_rows),),
    )


def apply_accounting_changes(
    accounting_url: str, changes: Iterable[AccountingChange], upto: dt.datetime
) -> list[str]:
    """Play the accounting events due by ``upto`` (aware): set the status and move
    ``updated_at`` to the event's instant. Idempotent — an event already applied (the row's
    ``updated_at`` is not before it) is skipped. Returns the invoice ids changed."""
    if upto.tzinfo is None:
        raise ValueError("upto must be timezone-aware")
    changed: list[str] = []
    engine = make_engine(accounting_url)
    try:
        with engine.begin() as conn:
            for change in sorted(changes, key=lambda c: c.at):
                if change.at > upto:
                    continue
                at = change.at.astimezone(dt.UTC).replace(tzinfo=None)
                result = conn.execute(
                    invoices.update()
                    .where(invoices.c.invoice_id == change.invoice_id, invoices.c.updated_at < at)
                    .values(status=change.status, updated_at=at)
                )
                if result.rowcount:
                    changed.append(change.invoice_id)
    finally:
        engine.dispose()
    return changed


__all__ = [
    "MALFORMED",
    "NOTABLE",
    "AccountingChange",
    "DemoSummary",
    "apply_accounting_changes",
    "build_demo",
    "enabled_instants",
    "render_demo_config",
]
