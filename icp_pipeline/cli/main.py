"""`icp-pipeline`: set up the database, load orgs, run cycles and read their analytics.

Imports are lazy: `org load` or `org report` never pay for Dagster or the provider SDKs.
"""

import argparse
import json
import os
import sys
from pathlib import Path

EXAMPLE_ORG = Path(__file__).parent.parent / "examples" / "acme.yaml"
EXAMPLE_SITE = Path(__file__).parent.parent / "examples" / "acme_site.yaml"


def _fail(message: str, code: int = 1) -> int:
    _print(f"error: {message}", file=sys.stderr)
    return code


def _print(text: str, file=None) -> None:  # noqa: ANN001 - a text stream
    """print() for text that may hold file-supplied or model-written names: escape sequences, control,
    zero-width and bidi characters are removed (lines and tabs kept)."""
    from icp_pipeline.terminal import inert

    print(inert(text, keep_newlines=True), file=file or sys.stdout)


def cmd_db_upgrade(_args: argparse.Namespace) -> int:
    from icp_pipeline.db.session import current_revision, upgrade
    from icp_pipeline.settings import database_url, redact_url

    upgrade()
    print(f"database {redact_url(database_url())} at revision {current_revision()}")
    return 0


def cmd_org_load(args: argparse.Namespace) -> int:
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.org_file import (
        OrgFileError,
        cycle_estimate,
        large_cycle_problem,
        org_warnings,
        parse_org_file,
        runs_per_cycle,
        upsert_org,
    )

    try:
        spec = parse_org_file(Path(args.file))
    except OrgFileError as error:
        return _fail(str(error), 2)
    for warning in org_warnings(spec):
        _print(f"warning: {args.file}: {warning}", file=sys.stderr)
    too_large = large_cycle_problem(spec)
    if too_large and not getattr(args, "allow_large", False):
        return _fail(str(OrgFileError(args.file, [too_large])), 2)
    ensure_schema()
    with session_scope() as session:
        changes = upsert_org(session, spec)
    # Each sample is its own question run: a model asks its own `samples`, else the org's.
    samples = [m.samples or spec.samples for m in spec.models]
    if len(set(samples)) > 1:
        asked = f"samples per model {'/'.join(map(str, samples))}, "
    else:
        asked = f"{samples[0]} samples, " if samples[0] > 1 else ""
    _print(
        f"org {spec.id}: {len(spec.competitors) + 1} companies, {len(spec.models)} models, {len(spec.locations)} "
        f"locations, {len(spec.question_specs())} questions ({asked}{runs_per_cycle(spec)} question runs per cycle); "
        f"{changes['created']} created, {changes['updated']} updated, {changes['deactivated']} deactivated"
    )
    # At list prices as if every non-offline model is called for real (without an API key a provider's
    # models run offline and cost nothing).
    _print(f"a full cycle buys {cycle_estimate(spec).describe()}")
    return 0


def _print_analytics(payload: dict) -> None:
    from icp_pipeline.visibility.analytics import analytics_markdown

    _print(analytics_markdown(payload))


# Exit codes: 0 done, 1 failed, 2 bad input file, 3 a new cycle was not opened (see the message),
# 4 the push was blocked by a quality gate (the cycle ran; see the message), 130 interrupted.
EXIT_REFUSED = 3
EXIT_GATE_BLOCKED = 4


def _announce(message: str) -> None:
    _print(message)
    sys.stdout.flush()


def cmd_org_run(args: argparse.Namespace) -> int:
    from icp_pipeline.cli.runner import run_cycle
    from icp_pipeline.db.session import ensure_schema
    from icp_pipeline.visibility.cycles import UnknownOrg

    ensure_schema()
    try:
        outcome = run_cycle(
            args.org,
            workers=args.workers,
            progress=not args.no_progress,
            new_cycle=getattr(args, "new_cycle", False),
            existing_only=getattr(args, "existing_only", False),
            announce=_announce,
        )
    except (UnknownOrg, ValueError) as error:
        return _fail(str(error))
    if outcome.status == "refused":
        if outcome.payload:
            _print_analytics(outcome.payload)
        if getattr(args, "existing_only", False):
            _print(outcome.message)
            return 0
        return _fail(outcome.message, EXIT_REFUSED)
    return _report_cycle(outcome)


def _report_cycle(outcome) -> int:  # noqa: ANN001 - CycleOutcome, imported lazily
    print(
        f"cycle {outcome.cycle_id} of {outcome.org_id}: {outcome.status}; "
        f"{outcome.completed} completed, {outcome.failed} failed of {outcome.total}"
    )
    if outcome.payload:
        _print_analytics(outcome.payload)
    if outcome.spent_usd is not None:
        budget = "" if outcome.budget_usd is None else f" of its budget_usd ${outcome.budget_usd:.4f}"
        print(f"spent ${outcome.spent_usd:.4f}{budget} (cycle {outcome.cycle_id}, from the ledger)")
    if outcome.message and outcome.pushed:
        _print(outcome.message)
    if outcome.blocked_by:
        return _fail(outcome.message, EXIT_GATE_BLOCKED)
    if outcome.status != "succeeded" or not outcome.pushed:
        return _fail(outcome.message or "the cycle did not complete")
    return 0


def cmd_org_push(args: argparse.Namespace) -> int:
    """Roll up and push the latest complete cycle again, buying nothing (the push is idempotent)."""
    from icp_pipeline.cli.runner import push_latest
    from icp_pipeline.db.session import ensure_schema
    from icp_pipeline.visibility.cycles import UnknownOrg

    ensure_schema()
    try:
        outcome = push_latest(args.org, ignore_gates=getattr(args, "ignore_gates", False))
    except UnknownOrg as error:
        return _fail(str(error))
    if outcome is None:
        return _fail(f"org {args.org!r} has no cycle yet; run `icp-pipeline org run {args.org}`")
    return _report_cycle(outcome)


def cmd_org_keys(args: argparse.Namespace) -> int:
    """The org's question-run partition keys, for `dagster asset materialize --partition KEY`, or with
    --failed those that failed in its latest cycle, for `dagster job backfill --partitions`."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.cycles import UnknownOrg, combinations, failed_partitions, require_org

    ensure_schema()
    with session_scope() as session:
        try:
            require_org(session, args.org)
        except UnknownOrg as error:
            return _fail(str(error))
        keys = (
            failed_partitions(session, args.org)
            if args.failed
            else [c.key for c in combinations(session, args.org)]
        )
    for key in keys:
        print(key)
    return 0


def cmd_org_report(args: argparse.Namespace) -> int:
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.steps import latest_snapshot

    ensure_schema()
    with session_scope() as session:
        snapshot = latest_snapshot(session, args.org)
        if snapshot is None:
            return _fail(f"no analytics for org {args.org!r} yet; run `icp-pipeline org run {args.org}`")
        payload = snapshot.payload
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_analytics(payload)
    return 0


def cmd_site_load(args: argparse.Namespace) -> int:
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.segments.site_file import SiteFileError, parse_site_file, upsert_site

    try:
        spec = parse_site_file(Path(args.file))
    except SiteFileError as error:
        return _fail(str(error), 2)
    ensure_schema()
    with session_scope() as session:
        changes = upsert_site(session, spec)
    _print(
        f"site {spec.id}: {len(spec.pages)} pages, {len(spec.segments)} imported segments; "
        f"{changes['created']} created, {changes['updated']} updated, {changes['deactivated']} deactivated"
    )
    return 0


def cmd_site_build(args: argparse.Namespace) -> int:
    from icp_pipeline.cli.site_build import build_site
    from icp_pipeline.db.session import ensure_schema
    from icp_pipeline.segments.report import UnknownSegment
    from icp_pipeline.segments.steps import BuildOptions, UnknownSite, summary_markdown

    ensure_schema()
    options = BuildOptions(args.provider, args.model, args.rebuild, args.pacing)
    try:
        outcome = build_site(
            args.site, options, args.segment, workers=args.workers, progress=not args.no_progress
        )
    except (UnknownSite, UnknownSegment) as error:
        return _fail(str(error))
    if outcome.table:
        _print(summary_markdown(outcome.table))
    if outcome.summary:
        ranking = ", ".join(f"{r['rank']}. {r['segment_id']}" for r in outcome.summary["ranking"])
        _print(f"\nRanking: {ranking}\n{outcome.summary['summary']}")
    if outcome.succeeded or outcome.failed:  # nothing to count when discovery failed with no segment
        _print(f"site {outcome.site_id}: {outcome.succeeded} segments succeeded, {outcome.failed} failed")
    if not outcome.summary_ok:
        return _fail(outcome.message)
    return 0


def cmd_site_report(args: argparse.Namespace) -> int:
    """Each segment's ICP profile, analysis, fit score or error, and the site's ranking, as stored."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.segments.report import UnknownSegment, report_text, site_report
    from icp_pipeline.segments.steps import UnknownSite

    ensure_schema()
    with session_scope() as session:
        try:
            report = site_report(session, args.site, args.segment)
        except (UnknownSite, UnknownSegment) as error:
            return _fail(str(error))
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        _print(report_text(report))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The quick start on embedded defaults: migrate, run the example org's cycle, build the example site."""
    for step in (
        lambda: cmd_db_upgrade(args),
        lambda: cmd_org_load(argparse.Namespace(file=str(EXAMPLE_ORG))),
        # A second demo reports the example cycle instead of buying another one.
        lambda: cmd_org_run(
            argparse.Namespace(
                org="acme", workers=args.workers, no_progress=args.no_progress, existing_only=True
            )
        ),
        lambda: cmd_site_load(argparse.Namespace(file=str(EXAMPLE_SITE))),
        lambda: cmd_site_build(
            argparse.Namespace(
                site="acme",
                segment=None,
                provider="openai",
                model="gpt-4o-mini",
                rebuild=False,
                pacing=0.0,
                workers=args.workers,
                no_progress=args.no_progress,
            )
        ),
    ):
        code = step()
        if code:
            return code
    return 0


def cmd_org_history(args: argparse.Namespace) -> int:
    """Each company's rates per cycle with their 95% intervals, from the stored analytics snapshots."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.analytics import analytics_history, history_table
    from icp_pipeline.visibility.cycles import UnknownOrg, require_org
    from icp_pipeline.visibility.steps import snapshots

    ensure_schema()
    with session_scope() as session:
        try:
            require_org(session, args.org)
        except UnknownOrg as error:
            return _fail(str(error))
        series = [(s.cycle_id, s.payload) for s in snapshots(session, args.org)]
    if not series:
        return _fail(f"no analytics for org {args.org!r} yet; run `icp-pipeline org run {args.org}`")
    history = analytics_history(args.org, series)
    _print(json.dumps(history, indent=2, sort_keys=True) if args.json else history_table(history))
    return 0


def cmd_org_export(args: argparse.Namespace) -> int:
    """The org's raw facts and published rates as tidy tables (Parquet or CSV) for a BI tool."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.cycles import UnknownOrg
    from icp_pipeline.visibility.export import ExportError, export_org

    ensure_schema()
    try:
        with session_scope() as session:
            result = export_org(session, args.org, Path(args.out), args.format, args.cycle)
    except (UnknownOrg, ExportError) as error:
        return _fail(str(error))
    except OSError as error:
        return _fail(f"cannot write to {args.out}: {error.strerror or error}")
    cycles = ", ".join(map(str, result.cycle_ids)) or "none yet"
    print(f"org {result.org_id}: exported cycles {cycles} as {result.format} to {Path(args.out)}")
    for written in result.files:
        print(f"  {written.path.name}: {written.rows} rows")
    print(f"  {result.schema_path.name}: every table's columns, types and meaning")
    return 0


def _model_name(value: str) -> str:
    """--model as the org file's models[].model: at most 120 printable characters (the columns')."""
    from icp_pipeline.terminal import first_invisible

    if not 1 <= len(value) <= 120:
        raise argparse.ArgumentTypeError(f"must be 1 to 120 characters, not {len(value)}")
    found = first_invisible(value)
    if found:
        raise argparse.ArgumentTypeError(f"contains {found}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icp-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="app database").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="create or upgrade the schema (Alembic)").set_defaults(func=cmd_db_upgrade)

    org = commands.add_parser("org", help="AI visibility of an org").add_subparsers(
        dest="org_command", required=True
    )
    load = org.add_parser("load", help="load or update an org from a YAML file")
    load.add_argument("file")
    load.add_argument(
        "--allow-large",
        action="store_true",
        help="load an org whose cycle exceeds the runs-per-cycle limit (its estimated cost is shown)",
    )
    load.set_defaults(func=cmd_org_load)
    run = org.add_parser("run", help="run one full cycle as Dagster runs")
    run.add_argument("org")
    run.add_argument("--workers", type=int, default=3, help="question runs executed at once (default 3)")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument(
        "--new-cycle",
        action="store_true",
        help="open and buy a new cycle even within ICP_MIN_CYCLE_INTERVAL (default 1h) of the last one",
    )
    run.set_defaults(func=cmd_org_run)
    push = org.add_parser(
        "push", help="roll up and push the latest complete cycle again, without buying anything"
    )
    push.add_argument("org")
    push.add_argument(
        "--ignore-gates",
        action="store_true",
        help="push even if a blocking quality gate fails (the gates are not evaluated; an operator override)",
    )
    push.set_defaults(func=cmd_org_push)
    keys = org.add_parser(
        "keys", help="print the org's question-run partition keys (one per sample: KEY, KEY|s2, ...)"
    )
    keys.add_argument("org")
    keys.add_argument("--failed", action="store_true", help="only the keys that failed in the latest cycle")
    keys.set_defaults(func=cmd_org_keys)
    report = org.add_parser("report", help="print the latest analytics")
    report.add_argument("org")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_org_report)
    history = org.add_parser("history", help="print each company's rates per cycle with their intervals")
    history.add_argument("org")
    history.add_argument("--json", action="store_true")
    history.set_defaults(func=cmd_org_history)

    export = org.add_parser(
        "export", help="write the org's runs, mentions, citations, claims and rates as tables for BI"
    )
    export.add_argument("org")
    export.add_argument("--out", required=True, help="folder to write the tables and schema.json to")
    export.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="default parquet")
    export.add_argument(
        "--cycle", type=int, help="only this cycle's runs and rates (default: every cycle of the org)"
    )
    export.set_defaults(func=cmd_org_export)

    site = commands.add_parser("site", help="ICP segments of a site").add_subparsers(
        dest="site_command", required=True
    )
    site_load = site.add_parser("load", help="load or update a site from a YAML file")
    site_load.add_argument("file")
    site_load.set_defaults(func=cmd_site_load)
    build = site.add_parser("build", help="build the site's segments and ICPs as Dagster runs")
    build.add_argument("site")
    build.add_argument(
        "--segment", action="append", help="build only this segment id (repeatable; see `site report`)"
    )
    build.add_argument(
        "--provider",
        default="openai",
        choices=["openai", "anthropic", "gemini", "offline"],
        help="model provider (default: %(default)s)",
    )
    build.add_argument(
        "--model", default="gpt-4o-mini", type=_model_name, help="model (default: %(default)s)"
    )
    build.add_argument(
        "--pacing",
        type=float,
        default=0.0,
        help="seconds to wait before each segment build (default: %(default)s)",
    )
    build.add_argument("--rebuild", action="store_true", help="ask again even where a result is stored")
    build.add_argument("--workers", type=int, default=3, help="segments built at once (default: %(default)s)")
    build.add_argument("--no-progress", action="store_true")
    build.set_defaults(func=cmd_site_build)
    site_report = site.add_parser(
        "report", help="print each segment's ICP profile, analysis, fit score or error, and the ranking"
    )
    site_report.add_argument("site")
    site_report.add_argument("--json", action="store_true", help="machine-readable JSON")
    site_report.add_argument(
        "--segment", action="append", help="only this segment id (repeatable); the ranking stays whole"
    )
    site_report.set_defaults(func=cmd_site_report)

    demo = commands.add_parser("demo", help="run the example org's cycle and build the example site's ICPs")
    demo.add_argument("--workers", type=int, default=3)
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sqlalchemy.exc import InterfaceError, OperationalError

    from icp_pipeline.db.session import DatabaseUnreachable, SchemaNotReady
    from icp_pipeline.settings import database_url, redact_url

    try:
        return args.func(args)
    except SchemaNotReady as error:
        return _fail(str(error))
    except (DatabaseUnreachable, OperationalError, InterfaceError) as error:
        # Workers are stopped by then (cli/workers.py); open items stay open and are resumed.
        detail = str(error) if isinstance(error, DatabaseUnreachable) else f"{type(error.orig).__name__}"
        return _fail(
            f"the app database at {redact_url(database_url())} is unreachable ({detail}). Nothing bought is "
            "lost: run the same command again once it is back; it resumes where this one stopped"
        )
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head -n 1`): not an error; keep Python quiet at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
