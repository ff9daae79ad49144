"""The dependencies every route takes (FastAPI's typed dependencies): the dispatch database
and settings, the logged-in user (the actor of what they do), and the CSRF check.

Authentication is a dependency of the page and API routers, not a middleware of the whole
application, because the providers' webhooks in the same application have no session: a
provider signs its requests instead.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine

from dispatch.config.settings import Settings, reveal
from dispatch.storage.session import Database
from dispatch.web import security
from dispatch.web.auth import Authenticator, Identity


@dataclass
class WebContext:
    """What the application was created with; one per application (``app.state.web``)."""

    settings_loader: Callable[[], Settings]  # read at the first request, not at import
    authenticator: Authenticator
    given_secret: bytes | None = field(default=None, repr=False)

    @functools.cached_property
    def settings(self) -> Settings:
        return self.settings_loader()

    @functools.cached_property
    def secret(self) -> bytes:
        """The key of the CSRF tokens: the one given, else ``DISPATCH_WEB_SECRET``, else random
        for this process (then several api-server workers would not accept each other's)."""
        if self.given_secret is not None:
            return self.given_secret
        configured = reveal(self.settings.web_secret)
        return security.derive_secret(configured) if configured else security.random_secret()

    @functools.cached_property
    def engine(self) -> Engine:
        from dispatch.storage.engine import make_engine

        return make_engine(self.settings.dispatch_db_url, name="DISPATCH_DB_URL")

    @functools.cached_property
    def accounting_engine(self) -> Engine:
        from dispatch.storage.engine import make_engine

        return make_engine(self.settings.accounting_db_url, readonly=True, name="ACCOUNTING_DB_URL")

    @property
    def db(self) -> Database:
        return Database(self.engine)


class NotLoggedIn(Exception):
    """No valid session: pages answer 401 with how to log in, the API a JSON 401."""


def get_context(request: Request) -> WebContext:
    return request.app.state.web


Context = Annotated[WebContext, Depends(get_context)]


async def current_identity(request: Request, web: Context) -> Identity:
    identity = await web.authenticator.identify(request)
    if identity is None:
        raise NotLoggedIn()
    request.state.identity = identity
    return identity


async def current_user(identity: Annotated[Identity, Depends(current_identity)]) -> str:
    """The logged-in user: the actor recorded on every event this request causes."""
    return identity.user


User = Annotated[str, Depends(current_user)]


def csrf_for(request: Request) -> str:
    """A fresh CSRF token for the logged-in user, for a page's forms."""
    web: WebContext = request.app.state.web
    return security.csrf_token(web.secret, request.state.identity.user)


async def require_csrf(
    request: Request, web: Context, identity: Annotated[Identity, Depends(current_identity)]
) -> None:
    """A state-changing request must carry the CSRF token of its user's page (form field or
    ``X-CSRF-Token`` header), else 403 and nothing changes. A credential sent in the
    Authorization header is exempt: a browser never adds one to a forged cross-site request."""
    if identity.by_header:
        return
    token = request.headers.get(security.CSRF_HEADER)
    if token is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        token = (await request.form()).get(security.CSRF_FIELD)  # type: ignore[assignment]
    if not security.csrf_valid(web.secret, identity.user, token if isinstance(token, str) else None):
        raise HTTPException(status_code=403, detail="missing or invalid CSRF token — nothing was changed")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
