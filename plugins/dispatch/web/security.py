"""Signed values for the standalone session cookie and the CSRF tokens.

Both are stateless HMACs under one application secret, so a restart with the same
``DISPATCH_WEB_TOKEN`` (or ``DISPATCH_WEB_SECRET``) keeps sessions valid and several
api-server workers inside Airflow agree on them. The CSRF token is bound to the user: a
token taken from one person's page cannot be replayed in another person's session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

SESSION_COOKIE = "dispatch_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_SECONDS = 12 * 3600  # a working day; then the token link opens a new one


def derive_secret(material: str) -> bytes:
    """The application secret from a configured value (the web token or DISPATCH_WEB_SECRET)."""
    return hashlib.sha256(b"dispatch-web:" + material.encode()).digest()


def random_secret() -> bytes:
    return secrets.token_bytes(32)


def _mac(secret: bytes, purpose: str, value: str) -> str:
    digest = hmac.new(secret, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def session_value(secret: bytes, user: str, now: float | None = None) -> str:
    """A cookie value naming ``user`` until it expires; nobody without the secret can forge one."""
    expires = int((time.time() if now is None else now) + SESSION_SECONDS)
    body = base64.urlsafe_b64encode(f"{expires}:{user}".encode()).decode()
    return f"{body}.{_mac(secret, 'session', body)}"


def session_user(secret: bytes, value: str | None, now: float | None = None) -> str | None:
    """The user a session cookie names, or None when it is missing, forged or expired."""
    if not value or "." not in value:
        return None
    body, mac = value.rsplit(".", 1)
    if not hmac.compare_digest(mac, _mac(secret, "session", body)):
        return None
    try:
        expires, user = base64.urlsafe_b64decode(body.encode()).decode().split(":", 1)
    except ValueError:
        return None
    if int(expires) < (time.time() if now is None else now):
        return None
    return user


def csrf_token(secret: bytes, user: str) -> str:
    """The token a page embeds in its forms for ``user`` (a nonce and its HMAC)."""
    nonce = secrets.token_urlsafe(12)
    return f"{nonce}.{_mac(secret, 'csrf', nonce + ':' + user)}"


def csrf_valid(secret: bytes, user: str, token: str | None) -> bool:
    if not token or "." not in token:
        return False
    nonce, mac = token.rsplit(".", 1)
    return hmac.compare_digest(mac, _mac(secret, "csrf", nonce + ":" + user))


def token_matches(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode())  # type: ignore[union-attr]
