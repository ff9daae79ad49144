"""The pages people work from, inside Airflow (CONTRACT §8): the web application of
:mod:`dispatch.web` mounted in Airflow's api-server at ``/dispatch`` (``fastapi_apps``), with
entries in Airflow's navigation (``external_views``, shown in an iframe of the Airflow UI).

Airflow does not protect a plugin's endpoints: every page and API route resolves the
logged-in user through Airflow's auth manager (:class:`dispatch.web.airflow_auth.AirflowAuth`)
and answers 401 without one. Nothing is read at import: the settings are read at the first
request as the DAG's tasks read them — environment first, then the Airflow Connections
``dispatch_db`` / ``accounting_db`` / providers' — so the pages see the database the runs write.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin
from dispatch.config.settings import Settings
from dispatch.web.airflow_auth import AirflowAuth
from dispatch.web.app import PREFIX, create_app


def _settings() -> Settings:
    from dispatch.runtime.airflow_tasks import task_settings

    return task_settings()


NAV = [
    ("To do › Invoicing", "todo", "dispatch-todo"),
    ("Invoices", "invoices", "dispatch-invoices"),
    ("Invoice runs", "runs", "dispatch-runs"),
]


class InvoiceDispatchPlugin(AirflowPlugin):
    name = "invoice_dispatch"
    # AirflowPlugin declares these as plain class lists; overriding them as ClassVar clashes.
    fastapi_apps: list[Any] = [  # noqa: RUF012
        {
            "app": create_app(AirflowAuth(), settings=_settings),
            "url_prefix": PREFIX,
            "name": "invoice-dispatch pages",
        }
    ]
    # href without a leading slash: relative to Airflow's base_url, so a reverse proxy's path holds
    external_views: list[Any] = [  # noqa: RUF012
        {
            "name": name,
            "href": f"{PREFIX.lstrip('/')}/{page}",
            "url_route": route,
            "destination": "nav",
            "category": "browse",
        }
        for name, page, route in NAV
    ]
