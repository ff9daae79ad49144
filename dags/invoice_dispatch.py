"""
### invoice_dispatch — send the day's invoices by e-mail, letter or SMS, exactly once

One run is the pipeline of `dispatch run` **as of the run's logical date** (SPEC "Time"):

1. `extract_invoices` — record the run, import what changed in the accounting system;
2. `tag_new_invoices` — new invoices become `to_send` or `not_required`;
3. `resolve_templates` — one invoicing action per `to_send` invoice whose plan has a template;
4. `compute_due_sends` — stage the actions due before the next run, in batches;
5. `dispatch_batch` — one mapped task per batch, in pool `dispatch_providers`: claim, re-check,
   render, hand over to the provider, record;
6. `write_back` — invoice statuses and the run's counts (runs even when a batch failed; the
   run is then recorded failed so its claims are settled);
7. `pull_bounces` — bounces SendGrid reported since the last pull become manual actions; the
   last task that writes the result tables, so it is the one that updates their Assets;
8. `report` — one line per run; fails the DAG run when something failed.

Backfills (`airflow backfill create --dag-id invoice_dispatch --from-date … --to-date …`)
compute what was due on each past day; nothing is ever sent twice, because every send is
preceded by an exclusive claim in the dispatch database (see docs/airflow.md).
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from airflow.sdk import (
    Asset,
    CronTriggerTimetable,
    TriggerRule,
    chain,
    dag,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException
from dispatch.runtime import airflow_tasks as steps

if TYPE_CHECKING:
    from dispatch.runtime.runs import RunContext

CONFIG = steps.dag_config()
RESULT_ASSETS = [
    Asset(name=f"dispatch.{table}", uri=steps.result_asset_uri(table), group="invoice_dispatch")
    for table in steps.RESULT_TABLES
]


def _run() -> RunContext:
    return steps.run_from_context(get_current_context(), CONFIG)


@dag(
    dag_id=steps.DAG_ID,
    schedule=CronTriggerTimetable(CONFIG.cron, timezone=CONFIG.timezone),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=dt.timedelta(hours=6),
    doc_md=__doc__,
    tags=["invoicing", "dispatch", "exactly-once"],
    default_args={
        "owner": CONFIG.owner,
        "retries": CONFIG.retries,
        "retry_delay": CONFIG.retry_delay,
        # the one back-off (dispatch.channels.retry.exponential_backoff), by kind of failure
        "retry_policy": steps.DispatchRetryPolicy(CONFIG.retry_delay, CONFIG.max_retry_delay),
    },
)
def invoice_dispatch() -> None:
    @task
    def extract_invoices() -> dict:
        return steps.extract_invoices_task(_run())

    @task
    def tag_new_invoices() -> dict:
        return steps.tag_new_invoices_task(_run())

    @task
    def resolve_templates() -> dict:
        return steps.resolve_templates_task(_run())

    @task
    def compute_due_sends() -> list[int]:
        """Returns the batch numbers to map over; the counts go to XCom key ``summary``."""
        summary = steps.compute_due_sends_task(_run(), max_batches=steps.max_map_length())
        get_current_context()["ti"].xcom_push(key="summary", value=summary)
        return summary["batch_numbers"]

    @task(pool=steps.POOL, map_index_template="{{ batch_label }}")
    def dispatch_batch(batch_no: int) -> dict:
        context = get_current_context()
        context["batch_label"] = f"batch {batch_no}"  # type: ignore[typeddict-unknown-key]
        return steps.dispatch_batch_task(_run(), batch_no, retries_left=steps.retries_left(context["ti"]))

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def write_back(batch_numbers: list[int] | None, batch_results: list[dict]) -> dict:
        # batch_numbers is None when a stage before the batches failed.
        expected = None if batch_numbers is None else len(batch_numbers)
        return steps.write_back_task(_run(), expected, finished_batches=len(batch_results))

    # The Asset events fire when this task succeeds: after it, as after write_back, the result
    # tables hold the run's outcome, bounces included (analysts' DAGs read them then).
    @task(outlets=RESULT_ASSETS)
    def pull_bounces() -> dict:
        return steps.pull_bounces_task(_run())

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def report(written: dict | None) -> dict:
        outcome = steps.report_task(_run(), written)
        if outcome["failed"]:
            raise AirflowFailException(outcome["message"])
        return outcome

    due = compute_due_sends()
    chain(extract_invoices(), tag_new_invoices(), resolve_templates(), due)
    sent = dispatch_batch.expand(batch_no=due)
    # TaskFlow types a task's call with the function's own parameters, not with the XComArg
    # that stands for them until run time (no annotation of ours can say both)
    written = write_back(due, sent)  # type: ignore[arg-type]
    chain(written, pull_bounces(), report(written))  # type: ignore[arg-type]


invoice_dispatch()
