"""Server-rendered pages: Jinja2 templates with autoescape on, so whatever a customer's name
or an invoice number holds is shown as text, never run as markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from dispatch.web.deps import csrf_for

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page for the logged-in user, with a fresh CSRF token for its forms."""
    return templates.TemplateResponse(
        request,
        name,
        {
            "base": request.scope.get("root_path", ""),
            "user": request.state.identity.user,
            "csrf": csrf_for(request),
            **context,
        },
        status_code=status_code,
    )


def when(value: Any) -> str:
    """An instant as the pages show it, UTC to the minute, whatever the database returned
    (PostgreSQL aware datetimes, SQLite naive UTC text)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    ts = pd.Timestamp(value)
    ts = ts.tz_convert("UTC") if ts.tzinfo else ts.tz_localize("UTC")
    return f"{ts:%Y-%m-%d %H:%M} UTC"


def iso(value: Any) -> str:
    from dispatch.people.listing import jsonable

    shown = jsonable(pd.Timestamp(value) if isinstance(value, str) else value)
    return "" if shown is None else str(shown)


templates.env.filters.update(dict_merge=lambda a, b: {**a, **b}, when=when, iso=iso)
