"""The result-table Asset events of a DAG run fire once the run's outcome is written: after the
last task that writes those tables (``pull_bounces`` writes bounced actions and their events
after ``write_back``), so an analyst's DAG scheduled on them never reads a half-written run."""

from __future__ import annotations

from typing import Any

import pytest
from dispatch.runtime import airflow_tasks as steps

from tests.dags.conftest import DemoCopy, demo_days, load_dag

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("airflow_db")]

#: the tasks that write the result tables (dispatch_batch and everything before it write them
#: too, but run before write_back)
LAST_WRITERS = ("write_back", "pull_bounces")


def test_the_result_asset_events_fire_after_the_last_task_writing_the_tables(
    demo_copy: DemoCopy, dag_env: Any
) -> None:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    dag_env(demo_copy)
    as_of = demo_days()[0]
    demo_copy.advance_accounting(as_of)
    dag_run = load_dag().test(logical_date=as_of)
    assert dag_run.state == "success"
    started = {ti.task_id: ti.start_date for ti in dag_run.get_task_instances() if ti.task_id in LAST_WRITERS}
    ended = {ti.task_id: ti.end_date for ti in dag_run.get_task_instances() if ti.task_id in LAST_WRITERS}
    assert set(started) == set(LAST_WRITERS)

    with create_session() as session:
        events = (
            session.query(AssetModel.uri, AssetEvent.source_task_id, AssetEvent.timestamp)
            .join(AssetModel, AssetModel.id == AssetEvent.asset_id)
            .filter(AssetEvent.source_dag_id == steps.DAG_ID, AssetEvent.source_run_id == dag_run.run_id)
            .all()
        )
    assert sorted(uri for uri, _, _ in events) == sorted(
        steps.result_asset_uri(t) for t in steps.RESULT_TABLES
    )
    for uri, source, at in events:
        assert source == "pull_bounces", uri
        # every writer had started, and write_back had finished, before the event
        assert all(at >= start for start in started.values()), (uri, at, started)
        assert at >= ended["write_back"], (uri, at, ended)
