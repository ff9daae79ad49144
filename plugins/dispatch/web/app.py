"""The web application (CONTRACT §8): :func:`create_app` builds it for both ways it is served.

Inside Airflow the plugin mounts it at ``/dispatch`` (``fastapi_apps``); standalone,
:func:`standalone_app` mounts it at the same prefix, so every URL is the same either way.
Routes are relative to the mount (``/todo`` is ``/dispatch/todo``) and links are built from
the mount's root path, so the pages also work behind Airflow's ``base_url``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from dispatch.config.settings import Settings
from dispatch.web import security
from dispatch.web.auth import Authenticator, LoginRedirect
from dispatch.web.deps import NotLoggedIn, WebContext, current_user
from dispatch.web.pages import templates
from dispatch.web.webhooks import router as webhooks_router

PREFIX = "/dispatch"
STATIC = Path(__file__).parent / "static"


def _wants_json(request: Request) -> bool:
    path = request.url.path
    return (
        path.startswith(f"{request.scope.get('root_path', '')}/api/")
        or path.endswith(".json")
        or (
            "application/json" in request.headers.get("accept", "")
            and "text/html" not in request.headers.get("accept", "")
        )
    )


def create_app(
    authenticator: Authenticator,
    *,
    secret: bytes | None = None,
    settings: Settings | Callable[[], Settings] | None = None,
) -> FastAPI:
    """The application. ``settings`` (or a function returning them, called at the first
    request) say which database; by default the environment's
    (:func:`dispatch.config.settings.load_settings`). ``secret`` signs the CSRF tokens (default:
    from ``DISPATCH_WEB_SECRET``, read with the settings)."""
    from dispatch.config.settings import load_settings
    from dispatch.web.routes import api, invoices, runs, todo

    app = FastAPI(
        title="invoice-dispatch",
        summary="The to-do list, the invoices and the runs: pages and a JSON API (CONTRACT §8).",
        docs_url="/api/docs",
        openapi_url="/api/openapi.json",
        redoc_url=None,
    )
    loader = settings if callable(settings) else (lambda: settings) if settings is not None else load_settings
    app.state.web = WebContext(settings_loader=loader, authenticator=authenticator, given_secret=secret)

    signed_in = [Depends(current_user)]
    # the .json twins first: /invoices/{id}.json would otherwise be the page of id "….json"
    for router in (api.twins, todo.router, invoices.router, runs.router, api.router):
        app.include_router(router, dependencies=signed_in)
    app.include_router(webhooks_router)  # signed by the provider, no session
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/todo", status_code=303)

    @app.exception_handler(LoginRedirect)
    async def _login(request: Request, exc: LoginRedirect) -> Response:
        response = RedirectResponse(exc.location, status_code=303)
        response.set_cookie(
            security.SESSION_COOKIE,
            exc.cookie,
            max_age=security.SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=request.scope.get("root_path") or "/",
        )
        return response

    @app.exception_handler(NotLoggedIn)
    async def _not_logged_in(request: Request, exc: NotLoggedIn) -> Response:
        hint = app.state.web.authenticator.login_hint(request)
        if _wants_json(request):
            return JSONResponse({"detail": f"not logged in: {hint}"}, status_code=401)
        return templates.TemplateResponse(
            request,
            "login.html",
            {"hint": hint, "user": None, "base": request.scope.get("root_path", "")},
            status_code=401,
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_json(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return HTMLResponse(
            templates.get_template("error.html").render(
                status=exc.status_code, detail=exc.detail, base=request.scope.get("root_path", ""), user=None
            ),
            status_code=exc.status_code,
        )

    return app


def standalone_app(app: FastAPI) -> FastAPI:
    """``app`` mounted at ``/dispatch``, as Airflow mounts it (``dispatch web``, tests)."""
    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    root.mount(PREFIX, app)

    @root.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/todo", status_code=303)

    return root
