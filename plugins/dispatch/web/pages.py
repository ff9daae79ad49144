"""Server-rendered pages: Jinja2 templates with autoescape on, so whatever a customer's name
or an invoice number holds is shown as text, never run as markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
