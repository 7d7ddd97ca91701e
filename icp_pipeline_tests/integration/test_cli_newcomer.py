"""What a newcomer meets first in the CLI: where the results went, what to do next, a typo in an org
id, a bad flag, the help, the version, and a database that is down."""

import argparse
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from icp_pipeline.cli.main import build_parser, main
from icp_pipeline.db.session import upgrade
from icp_pipeline_tests.conftest import EXAMPLE_ORG
from icp_pipeline_tests.support.webhook import WebhookReceiver

TINY_ORG = {
    "id": "tiny",
    "name": "Tiny Analytics",
    "target": {"name": "Acme", "aliases": [], "domains": ["acme.io"]},
    "competitors": [{"name": "Globex", "aliases": [], "domains": ["globex.com"]}],
    "models": [{"provider": "openai", "model": "gpt-4o-mini"}],
    "locations": ["US"],
    "questions": ["What is the best product analytics tool for a startup?"],
}


@pytest.fixture
def migrated(icp_env: Path) -> str:
    url = f"sqlite:///{icp_env / 'app.db'}"
    upgrade(url)
    return url


def test_org_run_says_where_the_analytics_went_and_what_to_do_next(
    migrated, icp_env: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_ORG))
    assert main(["org", "load", str(path)]) == 0
    assert main(["org", "run", "tiny", "--no-progress"]) == 0
    out = capsys.readouterr().out
    outbox_file = icp_env / "outbox" / "tiny" / "cycle-1.json"
    assert outbox_file.exists()
    assert f"analytics of cycle 1 written to {outbox_file}" in out
    assert "icp-pipeline org report tiny" in out
    assert "icp-pipeline org history tiny" in out
    home = os.environ["DAGSTER_HOME"]
    assert f"cd {home} && DAGSTER_HOME={home} ICP_HOME={icp_env} dg dev -m icp_pipeline.definitions" in out

    # `org push` says where it went again; it prints no next steps.
    assert main(["org", "push", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"analytics of cycle 1 written to {outbox_file}" in out
    assert "next:" not in out

    # To a webhook: its origin only, never the token in its path (a new process reads the URL).
    token = "XyZtok3nPushPath"
    with WebhookReceiver(path=f"/services/T000/B000/{token}") as hook:
        pushed = subprocess.run(
            [sys.executable, "-m", "icp_pipeline.cli.main", "org", "push", "tiny"],
            env={**os.environ, "ICP_PUSH_WEBHOOK_URL": hook.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert pushed.returncode == 0, pushed.stderr[-2000:]
    assert len(hook.requests) == 1
    origin = hook.url.split("/services")[0]
    assert f"analytics of cycle 1 pushed to the webhook at {origin}\n" in pushed.stdout
    assert token not in pushed.stdout + pushed.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["org", "report", "nope"],
        ["org", "report", "nope", "--json"],
        ["org", "history", "nope"],
        ["org", "keys", "nope"],
        ["org", "keys", "nope", "--failed"],
        ["org", "run", "nope"],
        ["org", "push", "nope"],
        ["org", "export", "nope", "--out", "unused"],
    ],
)
def test_an_unknown_org_gets_the_same_answer_from_every_command(migrated, capsys, command) -> None:
    assert main(["org", "load", str(EXAMPLE_ORG)]) == 0
    capsys.readouterr()
    assert main(command) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        "error: unknown org 'nope'; loaded orgs: acme; load one with `icp-pipeline org load FILE`\n"
    )
    assert captured.out == ""


def test_an_unknown_org_with_nothing_loaded_says_so(migrated, capsys) -> None:
    assert main(["org", "report", "nope"]) == 1
    assert "unknown org 'nope'; no org is loaded yet; load one with" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "two"])
@pytest.mark.parametrize("command", [["org", "run", "acme"], ["demo"]])
def test_workers_must_be_at_least_one(capsys, command, value) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--workers", value])
    assert exit_info.value.code == 2
    assert "argument --workers: must be" in capsys.readouterr().err


def test_version_is_the_installed_package_version(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"icp-pipeline {version('icp-pipeline')}\n"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_argument_of_the_org_db_and_demo_commands_has_help() -> None:
    commands = _subparsers(build_parser())
    parsers = {f"org {name}": p for name, p in _subparsers(commands["org"]).items()}
    parsers |= {f"db {name}": p for name, p in _subparsers(commands["db"]).items()}
    parsers["demo"] = commands["demo"]
    # org: load run push keys questions suggest-competitors report history export; db upgrade; demo
    assert len(parsers) == 11
    missing = [
        f"{name} {action.dest}"
        for name, parser in parsers.items()
        for action in parser._actions
        if not action.help
    ]
    assert missing == []


def test_help_shows_defaults(capsys) -> None:
    for command, expected in [
        (["org", "run", "--help"], "question runs executed at once (default: 5)"),
        (["demo", "--help"], "question runs executed at once (default: 5)"),
        (["org", "export", "--help"], "file format (default: parquet)"),
    ]:
        with pytest.raises(SystemExit):
            main(command)
        out = " ".join(capsys.readouterr().out.split())
        assert expected in out, command
        assert "(default: False)" not in out and "(default: None)" not in out


def test_a_database_that_is_down_is_one_line_naming_the_host_without_the_password(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICP_", "DAGSTER_HOME"))}
    env.update(
        ICP_HOME=str(tmp_path / "icp"),
        ICP_DATABASE_URL="postgresql://user:secret@127.0.0.1:1/db",
        ICP_DB_RETRY_SECONDS="0",  # no point retrying a closed port for 30 s here
    )
    result = subprocess.run(
        [sys.executable, "-m", "icp_pipeline.cli.main", "org", "report", "acme"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        "error: cannot reach the app database at postgresql://user:***@127.0.0.1:1/db (Connection refused)\n"
    )
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
