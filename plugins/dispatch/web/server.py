"""``dispatch web``: the application served standalone by uvicorn, behind its token."""

from __future__ import annotations

import secrets

from fastapi import FastAPI

from dispatch.config.settings import Settings, reveal
from dispatch.web import security
from dispatch.web.app import PREFIX, create_app, standalone_app
from dispatch.web.auth import TokenAuth


def web_token(settings: Settings) -> str:
    """``DISPATCH_WEB_TOKEN`` when set, else a fresh random token for this process."""
    return (reveal(settings.web_token) or "").strip() or secrets.token_urlsafe(24)


def build(settings: Settings, token: str, user: str) -> FastAPI:
    secret_text = reveal(settings.web_secret) or token
    auth = TokenAuth(token=token, user=user, secret=security.derive_secret(secret_text))
    return standalone_app(create_app(auth, secret=auth.secret, settings=settings))


def url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{PREFIX}/todo?token={token}"
