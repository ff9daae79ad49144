"""Providers' delivery webhooks (CONTRACT §8): endpoints that need no session, because each
request is checked against its provider's signature instead (:mod:`.routes`)."""

from dispatch.web.webhooks.routes import router

__all__ = ["router"]
