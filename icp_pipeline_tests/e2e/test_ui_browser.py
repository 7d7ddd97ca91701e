"""The Dagster UI in a real browser: headless Chromium (Debian's package) driven by Playwright against a
real dagster-webserver and dagster-daemon on the production instance config (PostgreSQL, queued runs).

The test prepares an open cycle and its partitions, stops the project's sensors so the daemon launches
nothing on its own, then does what an operator does: finds the project's assets in the catalog, opens
`question_run_job`, materializes ONE question-run partition from the launch dialog and watches the run
page until it succeeds. The instance and the app database then confirm that exactly that run happened.
A second test picks three partitions in the same dialog, launches them as a backfill and follows the
toast to the backfill page until it succeeds; the instance must then hold that one backfill, one
successful run per picked partition and nothing else, and the ledger exactly their three answers.
Screenshots land in `test-artifacts/` at the repository root (also the page HTML on failure).
"""

import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.dagster_run import RunsFilter
from playwright.sync_api import Locator, Page, Route, expect, sync_playwright

from icp_pipeline.db.models import CycleItem, ModelCall, QuestionRun
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.visibility.assets import question_run_assets
from icp_pipeline.visibility.cycles import desired_org_partitions, open_cycle
from icp_pipeline_tests.conftest import load_example
from icp_pipeline_tests.e2e.conftest import ProductionStack
from icp_pipeline_tests.support.dagster_services import (
    BIN,
    REPO_ROOT,
    DagsterServices,
    dagster_services,
    service_env,
)

pytestmark = pytest.mark.postgres

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home (updates, sync, field trials),
# which on these machines only produces refused connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "test-artifacts"
PROJECT_SENSORS = ("partition_sync_sensor", "cycle_complete_sensor")
SHOWN_ASSETS = ("ai_answer", "question_run", "run_mentions", "competitive_metrics", "segment_icp")
# The first page load compiles the UI's GraphQL queries and the run goes through the daemon's queue:
# on a 2-core machine both take far longer than Playwright's 5 s default.
UI_TIMEOUT_MS = 90_000
RUN_TIMEOUT_MS = 180_000
# Three runs through the daemon's backfill loop and queue, while other tests may load the machine.
BACKFILL_TIMEOUT_MS = 420_000
# The job's dialog names how many assets it materializes: every micro-step of a question run.
DIALOG_TITLE = f"Launch runs to materialize {len(question_run_assets)} assets"
Status = dg.DagsterRunStatus


def _stop_sensors(env: dict[str, str]) -> None:
    """Stop the project's sensors with the real CLI, before any daemon runs: otherwise the sync sensor
    launches the other 44 pending cycle items. Both commands run at once (each imports the code)."""
    workspace = str(REPO_ROOT / "workspace.yaml")
    commands = {
        name: subprocess.Popen(
            [str(BIN / "dagster"), "sensor", "stop", name, "-w", workspace],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in PROJECT_SENSORS
    }
    for name, process in commands.items():
        output, _ = process.communicate(timeout=180)
        assert process.returncode == 0, f"`dagster sensor stop {name}` failed:\n{output}"


def _sensor_statuses(services: DagsterServices) -> dict[str, str]:
    data = services.graphql(
        """{ sensorsOrError(repositorySelector: {repositoryLocationName: "icp_pipeline",
                                                 repositoryName: "__repository__"}) {
             ... on Sensors { results { name sensorState { status } } } } }"""
    )
    return {s["name"]: s["sensorState"]["status"] for s in data["sensorsOrError"]["results"]}


def _local_only(hosts: list[str | None]) -> Callable[[Route], None]:
    """A route handler that records every request's host and lets only 127.0.0.1 through."""

    def handle(route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        hosts.append(host)
        if host == "127.0.0.1":
            route.continue_()
        else:
            route.abort()

    return handle


def _word(text: str) -> re.Pattern[str]:
    """An accessible name holding `text` as a whole word: the UI's names also carry their icons'
    labels ("column_lineage Jobs") and, where a name is middle-truncated, the name twice."""
    return re.compile(rf"(^|\s){re.escape(text)}(\s|$)")


def _save(page: Page, name: str, *, html: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if html:
        (ARTIFACTS / f"{name}.html").write_text(page.content())


def _prepare_open_cycle(stack: ProductionStack) -> list[str]:
    """Load the example org and open its cycle; return the 45 question-run keys, sorted."""
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is required at /usr/bin/chromium: `apt-get install -y chromium`")
    load_example(stack.app_url)
    with session_scope(stack.app_url) as session:
        open_cycle(session, "acme")
        orgs, keys = desired_org_partitions(session)
    assert orgs == {"acme"} and len(keys) == 45
    return sorted(keys)


@contextmanager
def _operator_ui(
    stack: ProductionStack, instance: dg.DagsterInstance, keys: list[str], hosts: list[str | None]
) -> Iterator[tuple[Page, DagsterServices]]:
    """Register the partitions, stop the sensors, start the webserver and daemon, and yield a headless
    Chromium page that may reach 127.0.0.1 only (every host it asks for lands in `hosts`)."""
    extra_env = stack.service_env()
    instance.add_dynamic_partitions("question_runs", keys)
    instance.add_dynamic_partitions("orgs", ["acme"])
    _stop_sensors(service_env(stack.home, extra_env))

    with dagster_services(stack.home, extra_env) as services, sync_playwright() as playwright:
        statuses = _sensor_statuses(services)
        assert {name: statuses[name] for name in PROJECT_SENSORS} == dict.fromkeys(PROJECT_SENSORS, "STOPPED")

        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.route("**/*", _local_only(hosts))
        page.set_default_timeout(UI_TIMEOUT_MS)
        # expect's default is process-wide; no other test here uses Playwright.
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield page, services
        except BaseException:
            with suppress(Exception):  # a dead page must not hide the original error
                _save(page, "ui_failure", html=True)
            raise
        finally:
            browser.close()


def _open_ui(page: Page, services: DagsterServices) -> None:
    """Open the asset catalog and skip the newsletter dialog a fresh instance shows its first visitor.

    The dialog pops up a second after the first page settles; waiting for it here, rather than handling
    it whenever it appears, keeps it from swallowing a later click (a lost click on a job link was seen).
    """
    page.goto(f"{services.url}/assets")
    expect(page.get_by_text("Join the Dagster community")).to_be_visible()
    page.get_by_role("button", name="Skip", exact=True).click()
    expect(page.get_by_text("Join the Dagster community")).to_be_hidden()


def _open_question_run_launch_dialog(page: Page) -> Locator:
    """Jobs → question_run_job → "Materialize all…": the dialog that launches its partitions."""
    page.get_by_role("link", name=_word("Jobs")).click()
    page.get_by_role("link", name=_word("question_run_job")).click()
    expect(page).to_have_url(re.compile(r"/jobs/question_run_job"))
    page.get_by_role("button", name=re.compile(r"(^|\s)Materialize all")).click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(DIALOG_TITLE)).to_be_visible()
    return dialog


def _select_partitions(page: Page, dialog: Locator, keys: list[str]) -> None:
    dialog.get_by_text("Select a partition or create one").click()
    # The partition picker is a popover outside the dialog; it lists every registered key.
    expect(page.get_by_text("Select all (45)", exact=True)).to_be_visible()
    for key in keys:
        page.get_by_placeholder("Filter partitions").fill(key)
        # The checkbox input itself is hidden behind a styled box: click its menu row instead.
        page.get_by_role("menuitem").filter(has_text=key).click()
        expect(page.get_by_role("checkbox", name=key)).to_be_checked()
    # Close the popover by clicking the dialog's title (Escape would close the whole dialog).
    dialog.get_by_text(DIALOG_TITLE).click()
    expect(page.get_by_placeholder("Filter partitions")).to_be_hidden()
    count = "1 partition" if len(keys) == 1 else f"{len(keys)} partitions"
    expect(dialog.get_by_text(count, exact=True)).to_be_visible()


def _materialize_one_partition_in_ui(page: Page, services: DagsterServices, key: str) -> str:
    """Drive the UI: catalog, job, launch dialog, run page. Returns the run id shown by the UI."""
    _open_ui(page, services)
    for asset in SHOWN_ASSETS:
        expect(page.get_by_role("link", name=_word(asset))).to_be_visible()
    _save(page, "ui_asset_catalog")

    dialog = _open_question_run_launch_dialog(page)
    _select_partitions(page, dialog, [key])
    _save(page, "ui_launch_dialog")
    # One partition launches a single run, not a backfill.
    dialog.get_by_role("button", name=_word("Launch 1 run")).click()

    # The toast's "View" is a link styled as a button, and the toast goes away after a few seconds.
    notifications = page.get_by_role("region", name=re.compile(r"^Notifications"))
    toast = notifications.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect(toast).to_be_visible()
    short_id = toast.inner_text().rsplit(" ", 1)[1]
    notifications.get_by_text("View", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/runs/{short_id}[0-9a-f-]+$"))
    expect(page.get_by_text(f"partition: {key}", exact=True)).to_be_visible()
    # Queued, then launched by the daemon's run coordinator; the status tag turns to Success.
    expect(page.get_by_text("Success", exact=True)).to_be_visible(timeout=RUN_TIMEOUT_MS)
    expect(page.get_by_text("RUN_SUCCESS", exact=True)).to_be_visible()
    _save(page, "ui_materialize_success")
    return urlsplit(page.url).path.rsplit("/", 1)[1]


def _backfill_partitions_in_ui(page: Page, services: DagsterServices, keys: list[str]) -> str:
    """Drive the UI: job, launch dialog with several partitions, backfill page until the backfill
    succeeds. Returns the backfill id shown by the UI."""
    _open_ui(page, services)
    dialog = _open_question_run_launch_dialog(page)
    _select_partitions(page, dialog, keys)
    # Several partitions turn the dialog's launch button into a backfill.
    launch = dialog.get_by_role("button", name=_word("Launch backfill"))
    expect(launch).to_be_enabled()
    _save(page, "ui_backfill_dialog")
    launch.click()

    notifications = page.get_by_role("region", name=re.compile(r"^Notifications"))
    toast = notifications.get_by_text(re.compile(r"^Created backfill [a-z]{8}$"))
    expect(toast).to_be_visible()
    backfill_id = toast.inner_text().rsplit(" ", 1)[1]
    notifications.get_by_text("View", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/runs/b/{backfill_id}(\?|$)"))

    # The page polls every 10 s. A job backfill is done once its runs are: the daemon's backfill
    # loop submits them, the queue launches them (one per partition at a time, model steps 3 at once).
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=_word("question_run_job")))
    cells = ["3", "0", "3", "0"]  # partitions targeted, in progress, succeeded, failed
    expect(row.get_by_role("cell")).to_have_text(
        [re.compile("question_run_job"), *cells], timeout=BACKFILL_TIMEOUT_MS
    )
    status = page.get_by_text("Status", exact=True).locator("xpath=..")
    expect(status).to_have_text(re.compile(r"^Status\s*Succeeded$"))
    _save(page, "ui_backfill_done")
    return backfill_id


def _stored_question_runs(app_url: str) -> list[tuple[str, str, str]]:
    """(partition key, cycle item status, question run status) of every stored question run."""
    with session_scope(app_url) as session:
        stored = session.execute(
            sa.select(CycleItem.partition_key, CycleItem.status, QuestionRun.status)
            .join(QuestionRun, QuestionRun.cycle_item_id == CycleItem.id)
            .order_by(CycleItem.partition_key)
        ).all()
    return [(key, item_status, run_status) for key, item_status, run_status in stored]


def test_materialize_one_question_run_from_the_ui(production_stack: ProductionStack) -> None:
    keys = _prepare_open_cycle(production_stack)
    key = keys[0]

    hosts: list[str | None] = []
    with dg.DagsterInstance.from_config(str(production_stack.home)) as instance:
        with _operator_ui(production_stack, instance, keys, hosts) as (page, services):
            run_id = _materialize_one_partition_in_ui(page, services, key)

        # The UI's word is checked against the instance: one run, for that partition, succeeded.
        runs = list(instance.get_runs(RunsFilter(job_name="question_run_job")))
        assert [(r.run_id, r.status, r.tags.get("dagster/partition")) for r in runs] == [
            (run_id, Status.SUCCESS, key)
        ]
        # Nothing else ran: the stopped sensors launched none of the other 44 items.
        assert [r.run_id for r in instance.get_runs()] == [run_id]
    # The browser talked to the webserver and to nothing else.
    assert set(hosts) == {"127.0.0.1"}

    assert _stored_question_runs(production_stack.app_url) == [(key, "succeeded", "completed")]


def test_backfill_three_question_runs_from_the_ui(production_stack: ProductionStack) -> None:
    keys = _prepare_open_cycle(production_stack)
    picked = keys[:3]

    hosts: list[str | None] = []
    with dg.DagsterInstance.from_config(str(production_stack.home)) as instance:
        with _operator_ui(production_stack, instance, keys, hosts) as (page, services):
            backfill_id = _backfill_partitions_in_ui(page, services, picked)

        # One backfill, the UI's, of exactly the picked partitions, and it succeeded.
        backfills = instance.get_backfills()
        assert [(b.backfill_id, b.status, sorted(b.partition_names or [])) for b in backfills] == [
            (backfill_id, BulkActionStatus.COMPLETED_SUCCESS, picked)
        ]
        # One successful run per picked partition, all of them the backfill's: no other question run
        # was launched, by the UI or by the stopped sensors.
        runs = list(instance.get_runs(RunsFilter(job_name="question_run_job")))
        assert sorted(
            (r.tags.get("dagster/partition", ""), r.tags.get("dagster/backfill"), r.status) for r in runs
        ) == [(key, backfill_id, Status.SUCCESS) for key in picked]
        assert {r.run_id for r in instance.get_runs()} == {r.run_id for r in runs}
    assert set(hosts) == {"127.0.0.1"}

    assert _stored_question_runs(production_stack.app_url) == [
        (key, "succeeded", "completed") for key in picked
    ]
    # Each picked partition bought its answer exactly once; nothing else was bought.
    with session_scope(production_stack.app_url) as session:
        answers = session.scalars(
            sa.select(CycleItem.partition_key)
            .join(ModelCall, ModelCall.cycle_item_id == CycleItem.id)
            .where(ModelCall.purpose == "answer", ModelCall.ok)
            .order_by(CycleItem.partition_key)
        ).all()
    assert list(answers) == picked
