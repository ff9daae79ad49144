"""The logged-in Airflow user, for the pages served inside Airflow's api-server.

Airflow does not protect a plugin's FastAPI app: without this every page would be open.
The credential is Airflow's own JWT — the ``Authorization: Bearer`` header that API clients
send, or the ``_token`` cookie the Airflow UI sets at login — and Airflow's auth manager
validates it, whichever auth manager (simple, FAB, Keycloak…) the deployment configures.
Airflow is imported lazily, only when a request arrives, so the library never needs it.
"""

from __future__ import annotations

from starlette.requests import Request

from dispatch.web.auth import Identity, _bearer

AIRFLOW_COOKIE = "_token"  # airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN


class AirflowAuth:
    async def identify(self, request: Request) -> Identity | None:
        from airflow.api_fastapi.app import get_auth_manager

        bearer = _bearer(request)
        token = bearer or request.cookies.get(AIRFLOW_COOKIE)
        if not token:
            return None
        try:
            user = await get_auth_manager().get_user_from_token(token)
        except Exception:  # expired, revoked or forged: the same answer as no token at all
            return None
        return Identity(user.get_name(), by_header=bearer is not None)

    def login_hint(self, request: Request) -> str:
        return "Log in to Airflow first (its login page), then open this page again from Airflow's menu."
