"""Runs: the recorded runs with their counts and durations (as ``dispatch runs``), and a
chart of sends per day and channel over the last weeks."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from dispatch.people.operations import require_schema
from dispatch.runtime.run_history import list_runs
from dispatch.web import queries
from dispatch.web.chart import sends_chart
from dispatch.web.deps import Context, User, now

router = APIRouter(tags=["pages"], include_in_schema=False)
CHART_DAYS = 28


@router.get("/runs", response_class=HTMLResponse)
def runs(request: Request, web: Context, user: User, limit: int = 50) -> HTMLResponse:
    from dispatch.web.pages import render

    require_schema(web.engine)
    recorded = list_runs(web.engine, max(1, min(limit, 1000)))
    # the chart ends today, or at the latest run's as-of day when runs were made ahead of it
    latest = recorded["as_of"].max() if not recorded.empty else None
    last = max(now().date(), latest.date()) if latest is not None else now().date()
    first = last - dt.timedelta(days=CHART_DAYS - 1)
    sends = queries.sends_per_day(web.engine, first)
    return render(
        request,
        "runs.html",
        page="runs",
        runs=recorded.to_dict("records"),
        chart=Markup(sends_chart(sends, first, last)),  # built from numbers and escaped text only
        days=CHART_DAYS,
    )
