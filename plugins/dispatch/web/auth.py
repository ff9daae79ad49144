"""Who is logged in, the two ways the application is served (CONTRACT §8).

An authenticator answers one question per request: which user is this, or nobody. The
routes never know which one they run behind; :func:`dispatch.web.deps.current_user` asks it.

* :class:`TokenAuth` (``dispatch web``): the printed token opens a signed session cookie;
  tools may send the token as ``Authorization: Bearer`` instead. Every event is recorded as
  the one user ``dispatch web --user`` names.
* :class:`dispatch.web.airflow_auth.AirflowAuth` (inside Airflow's api-server): Airflow's own
  JWT, from the Authorization header or Airflow's ``_token`` cookie, checked by Airflow's
  auth manager.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlencode

from starlette.requests import Request

from dispatch.web import security


@dataclass(frozen=True)
class Identity:
    """The logged-in user, and whether the credential came in a header a browser never adds
    by itself (then the request cannot be a cross-site forgery and needs no CSRF token)."""

    user: str
    by_header: bool = False


class Authenticator(Protocol):
    async def identify(self, request: Request) -> Identity | None:
        """The logged-in user of ``request``, or None."""
        ...

    def login_hint(self, request: Request) -> str:
        """One sentence for the 401 page: how to log in."""
        ...


class LoginRedirect(Exception):
    """A valid ``?token=`` was given: answer with the session cookie and the same URL
    without the token, so the token leaves the address bar and the history."""

    def __init__(self, location: str, cookie: str) -> None:
        super().__init__(location)
        self.location = location
        self.cookie = cookie


def _bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


@dataclass(frozen=True)
class TokenAuth:
    """Standalone: one token (``DISPATCH_WEB_TOKEN`` or a random one) and one user."""

    token: str
    user: str
    secret: bytes

    async def identify(self, request: Request) -> Identity | None:
        bearer = _bearer(request)
        if bearer is not None:
            return Identity(self.user, by_header=True) if security.token_matches(self.token, bearer) else None
        given = request.query_params.get("token")
        if given is not None and request.method == "GET" and security.token_matches(self.token, given):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            query = urlencode(rest)
            location = request.url.path + (f"?{query}" if query else "")
            raise LoginRedirect(location, security.session_value(self.secret, self.user))
        user = security.session_user(self.secret, request.cookies.get(security.SESSION_COOKIE))
        return Identity(user) if user == self.user else None

    def login_hint(self, request: Request) -> str:
        return (
            "Open the link `dispatch web` printed when it started (…/dispatch/todo?token=…); "
            "the token is DISPATCH_WEB_TOKEN when that is set."
        )
