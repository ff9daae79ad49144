"""Providers' delivery webhooks (CONTRACT §8): endpoints that need no session, because each
request is checked against its provider's signature instead."""

from fastapi import APIRouter

router = APIRouter(prefix="/webhooks", tags=["webhooks"])
