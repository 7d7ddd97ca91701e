"""Secrets as deployments really hold them (keys read from secret files end in a newline; webhook URLs
carry their token in the path) never reach the app database, Dagster's storage or logs, or the CLI's
output, in any form; a key that cannot be right fails at once, naming its variable."""

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa

from icp_pipeline.db.models import CycleItem, PushDelivery
from icp_pipeline.db.session import session_scope
from icp_pipeline.defs.resources import ModelProviderResource, resources_from_env
from icp_pipeline.providers.base import ModelRequest, ProviderError
from icp_pipeline.settings import SecretFormatError
from icp_pipeline_tests.support.fake_providers import FakeGemini, FakeOpenAI, status
from icp_pipeline_tests.support.webhook import WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
# "/" and "+" make the URL-encoded and base64 forms differ from the key itself.
GEMINI_KEY = "gm-Secret/9f8e+7d6c5b_4a3"
WEBHOOK_SECRET = "whsec-Signing+Secret/77"
TOKEN = "XyZtok3nSecretValue123456"


def forms(secret: str) -> set[str]:
    """The ways a secret travels: as given and stripped, URL-encoded, base64 (padded, unpadded,
    urlsafe) and JSON-escaped with the newline it was read with."""
    b64 = base64.b64encode(secret.encode()).decode()
    urlsafe = base64.urlsafe_b64encode(secret.encode()).decode()
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        b64,
        b64.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
        json.dumps(secret + "\n")[1:-1],
    }


def echoing_error(code: int) -> dict:
    """A provider error body that quotes the key back in every form (as some gateways do)."""
    echoed = sorted(forms(GEMINI_KEY))
    return {
        "error": {"code": code, "message": f"bad key {GEMINI_KEY}\n: {' '.join(echoed)}", "details": echoed}
    }


def sqlite_text(path: Path) -> str:
    """Every value of every table of a SQLite file, as text (a file scan could miss a string that
    SQLite split across overflow pages)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in connection.execute("select name from sqlite_master where type = 'table'")]
        values = []
        for table in tables:
            for row in connection.execute(f'select * from "{table}"'):
                values += [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in row]
        return "\n".join(values)
    finally:
        connection.close()


def test_a_cycle_with_a_newline_ended_key_and_a_token_webhook_leaks_no_secret_in_any_form(
    sqlite_app: str, icp_env: Path
) -> None:
    with (
        FakeGemini(api_key=GEMINI_KEY) as gemini,
        WebhookReceiver(fail_first=1000, path=f"/services/T000/B000/{TOKEN}") as hook,
    ):
        gemini.script(status(500, body=echoing_error(500)), status(500, body=echoing_error(500)))
        gemini.script(status(401, body=echoing_error(401)))
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "GEMINI_API_KEY": GEMINI_KEY + "\n",  # as read from a secret file
            "GOOGLE_GEMINI_BASE_URL": gemini.url,
            "ICP_PROVIDER_MODE": "auto",  # OpenAI and Anthropic have no key: offline
            "ICP_PUSH_WEBHOOK_URL": hook.url,
            "ICP_PUSH_WEBHOOK_SECRET": WEBHOOK_SECRET + " \n",
        }
        cli = subprocess.run(
            [sys.executable, "-m", "icp_pipeline.cli.main", "org", "run", "acme", "--no-progress"],
            env=env,
            cwd=icp_env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        answered = [r.status for r in gemini.requests]
        assert len(hook.requests) == 5  # every attempt of the push reached the receiver, and failed

    # The faults happened: two echoing 500s (retried), one 401 (that item failed), the push failed.
    assert answered.count(500) == 2 and answered.count(401) == 1, answered
    assert cli.returncode == 1, cli.stderr[-2000:]
    assert "44 completed, 1 failed of 45" in cli.stdout
    with session_scope(sqlite_app) as session:
        failed = session.scalars(sa.select(CycleItem).where(CycleItem.status == "failed")).one()
        assert "GEMINI_API_KEY" in failed.error
        deliveries = list(session.scalars(sa.select(PushDelivery)))
        assert {d.destination for d in deliveries} == {hook.url.split("/services")[0]}

    haystacks = {
        "cli stdout": cli.stdout,
        "cli stderr": cli.stderr,
        "app database": sqlite_text(icp_env / "app.db"),
    }
    dagster_home = icp_env / "dagster_home"
    files = [p for p in dagster_home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".db" for p in files)
    for path in files:
        if path.suffix == ".db":
            haystacks[f"{path} (rows)"] = sqlite_text(path)
        haystacks[str(path)] = path.read_bytes().decode("utf-8", "replace")
    assert "***" in haystacks["app database"]  # the echoed key was there, and was redacted

    needles = forms(GEMINI_KEY) | forms(WEBHOOK_SECRET) | {TOKEN, f"/services/T000/B000/{TOKEN}"}
    leaks = [(where, needle) for where, text in haystacks.items() for needle in needles if needle in text]
    assert not leaks, [(where, needle[:6] + "...") for where, needle in leaks]


def test_keys_are_stripped_on_read_and_a_malformed_key_fails_naming_its_variable(
    icp_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trailing newline or space is ignored: the OpenAI SDK would otherwise send it and fail as a
    # "Connection error" that names no variable.
    with FakeOpenAI(api_key="sk-openai-secret-1") as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        provider = ModelProviderResource(mode="live", openai_api_key="sk-openai-secret-1 \n").provider_for(
            "openai", "gpt-4o-mini"
        )
        response = provider.complete(ModelRequest("openai", "gpt-4o-mini", "Which CRM?", "answer"))
        assert response.text and server.requests[-1].status == 200

    # Whitespace inside a key: the step fails at once (not retried) and says which variable.
    models = ModelProviderResource(mode="live", openai_api_key="sk-openai secret-1")
    with pytest.raises(ProviderError) as raised:
        models.provider_for("openai", "gpt-4o-mini")
    assert not raised.value.retryable
    assert "OPENAI_API_KEY" in str(raised.value) and "secret-1" not in str(raised.value)

    # From the environment, the definitions refuse to load before anything is bought.
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret\x1b-2\n")
    with pytest.raises(SecretFormatError, match="ANTHROPIC_API_KEY") as raised:
        resources_from_env()
    assert "sk-ant" not in str(raised.value)
