"""Invoices really sent through the local SendGrid, Twilio and print API, so that the webhook
tests act on actions whose provider message ids the sends recorded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.builders import World, open_world
from tests.fakes.lob_server import FakeLob
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.twilio_server import FakeTwilio

#: before the real clock, so every send goes at once (nothing is scheduled ahead)
AS_OF = "2026-11-30T09:00Z"
RETURN_ADDRESS = "ACME Corp\n210 King St\nSan Francisco, CA 94107"
LYON = "Leroy Paysage\nService comptabilité\n12 rue des Lilas\n69003 Lyon\nFrance"


@dataclass
class SentWorld:
    """A World whose invoices went out: ``e1``/``e2`` by e-mail, ``s1`` by SMS, ``l1`` by letter."""

    w: World
    sendgrid: FakeSendGrid
    twilio: FakeTwilio
    lob: FakeLob

    def message_id(self, invoice_id: str) -> str:
        action = self.w.action(invoice_id)
        assert action and action["status"] == "sent" and action["provider_message_id"], action
        return str(action["provider_message_id"])

    def deliveries(self) -> list[dict]:
        return self.w.rows(
            "SELECT provider, provider_event_id, provider_message_id, action_id, event, state, recipient,"
            " reason FROM delivery_events ORDER BY delivery_id"
        )


@contextmanager
def sent_world(backend: str, root: Path) -> Iterator[SentWorld]:
    with ExitStack() as stack:
        sendgrid = stack.enter_context(FakeSendGrid())
        twilio = stack.enter_context(FakeTwilio())
        lob = stack.enter_context(FakeLob())
        w = stack.enter_context(open_world(backend, root))
        w.extra_env.update(
            {
                **sendgrid.env(),
                **twilio.env(),
                **lob.env(),
                "DISPATCH_EMAIL_BACKEND": "sendgrid",
                "DISPATCH_SMS_BACKEND": "twilio",
                "DISPATCH_LETTER_BACKEND": "printapi",
                "PRINTAPI_FROM_ADDRESS": RETURN_ADDRESS,
            }
        )
        w.org("acme").user("u_bob").plan("p_mail", owner="u_bob")
        w.plan("p_sms", channel="sms", owner="u_bob", body="Invoice {{ invoice.number }}")
        w.plan("p_letter", channel="letter", owner="u_bob", body="Invoice {{ invoice.number }} enclosed.")
        w.customer("c1", plan="p_mail").customer("c2", plan="p_mail")
        w.customer("c3", plan="p_sms", email=None, phone="+33612345678")
        w.customer("c4", plan="p_letter", email=None, address=LYON)
        w.load_config()
        for invoice_id, customer in (("e1", "c1"), ("e2", "c2"), ("s1", "c3"), ("l1", "c4")):
            w.invoice(invoice_id, customer, issued="2026-11-30", pdf=invoice_id == "l1")
        w.run(AS_OF)
        assert [a["status"] for a in w.actions()] == ["sent"] * 4, w.actions()
        yield SentWorld(w, sendgrid, twilio, lob)
