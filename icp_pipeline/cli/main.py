"""`icp-pipeline`: set up the database, load orgs, run cycles and read their analytics.

Imports are lazy: `org load` or `org report` never pay for Dagster or the provider SDKs.
"""

import argparse
import json
import os
import shlex
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
    from icp_pipeline.segments.questions import questions_kept_on_load, retire_off_site_questions
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
    from icp_pipeline.visibility.steps import evidence_fingerprint

    ensure_schema()
    site = spec.icp.site if spec.icp else None
    with session_scope() as session:
        # The limit counts the questions a cycle asks, and the estimate prices them: the file's and the
        # generated ones that stay active (those of another site's segments are retired below).
        generated = questions_kept_on_load(session, spec.id, site)
        too_large = large_cycle_problem(spec, generated)
        if too_large and not getattr(args, "allow_large", False):
            return _fail(str(OrgFileError(args.file, [too_large])), 2)
        before = evidence_fingerprint(session, spec.id)
        changes = upsert_org(session, spec)
        retired = retire_off_site_questions(session, spec.id, site)
        session.flush()
        after = evidence_fingerprint(session, spec.id)
    samples = [spec.samples_of(m) for m in spec.models]
    if len(set(samples)) > 1:
        asked = f"samples per model {'/'.join(map(str, samples))}, "
    else:
        asked = f"{samples[0]} samples, " if samples[0] > 1 else ""
    from_segments = f" + {len(generated)} from segment ICPs" if generated else ""
    _print(
        f"org {spec.id}: {len(spec.competitors) + 1} companies, {len(spec.models)} models, {len(spec.locations)} "
        f"locations, {len(spec.question_specs())} questions{from_segments} ({asked}"
        f"{runs_per_cycle(spec, generated)} question runs per cycle); "
        f"{changes['created']} created, {changes['updated']} updated, {changes['deactivated']} deactivated"
    )
    for old_site, count in retired.by_site.items():
        why = f"its icp: names site {site!r} now" if site else "the org file has no icp: block"
        _print(
            f"retired {count} question(s) generated from segments of site {old_site!r} ({why}): "
            "no longer asked, their runs kept"
        )
    # At list prices as if every non-offline model is called for real (without an API key a provider's
    # models run offline and cost nothing).
    _print(f"a full cycle buys {cycle_estimate(spec, generated).describe()}")
    if before != after and before[0]:  # an org loaded for the first time has no history
        _recompute_history(spec.id, getattr(args, "no_recompute", False))
    return 0


def _recompute_history(org_id: str, skip: bool) -> None:
    """The companies or source categories changed: recompute the stored runs' mentions, citations,
    claims' companies, untracked companies and metrics (no model call), then the latest analytics."""
    from icp_pipeline.db.session import session_scope
    from icp_pipeline.settings import database_url
    from icp_pipeline.visibility.cycles import latest_cycle
    from icp_pipeline.visibility.steps import build_analytics, latest_snapshot, recompute_history

    if skip:
        _print(
            f"companies changed: history not recomputed now (--no-recompute); run_mentions .. "
            f"competitive_metrics recompute a partition's earlier runs the next time they run (its next "
            f"cycle, or re-materialize them for the org's partitions: `icp-pipeline org keys {org_id}`), "
            f"then org_analytics"
        )
        return
    url = database_url()
    done = recompute_history(url, org_id)
    with session_scope(url) as session:
        cycle, snapshot = latest_cycle(session, org_id), latest_snapshot(session, org_id)
        rebuilt = cycle is not None and snapshot is not None and snapshot.cycle_id == cycle.id
    if rebuilt:
        build_analytics(url, org_id)
    _print(
        f"companies changed: recomputed {done['runs']} stored runs without a model call"
        + (
            "; latest analytics rebuilt (push them with `icp-pipeline org push " + org_id + "`)"
            if rebuilt
            else ""
        )
    )


def _print_analytics(payload: dict) -> None:
    from icp_pipeline.db.session import session_scope
    from icp_pipeline.segments.report import org_segment_labels
    from icp_pipeline.visibility.analytics import analytics_markdown

    labels = {}
    if payload.get("by_segment"):  # names and question counts are the database's, not the payload's
        with session_scope() as session:
            labels = org_segment_labels(session, payload["org_id"], list(payload["by_segment"]))
    _print(analytics_markdown(payload, labels))


# Exit codes: 0 done, 1 failed, 2 bad input file, 3 a new cycle was not opened (see the message),
# 4 the push was blocked by a quality gate (the cycle ran; see the message), 130 interrupted.
EXIT_REFUSED = 3
EXIT_GATE_BLOCKED = 4


def _announce(message: str) -> None:
    _print(message)
    sys.stdout.flush()


def _require_org(org_id: str) -> None:
    """Raise UnknownOrg, which main() reports naming the loaded orgs, before Dagster is imported."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.cycles import require_org

    ensure_schema()
    with session_scope() as session:
        require_org(session, org_id)


def cmd_org_run(args: argparse.Namespace) -> int:
    from icp_pipeline.cli.runner import run_cycle

    _require_org(args.org)
    try:
        outcome = run_cycle(
            args.org,
            workers=args.workers,
            progress=not args.no_progress,
            new_cycle=getattr(args, "new_cycle", False),
            existing_only=getattr(args, "existing_only", False),
            announce=_announce,
        )
    except ValueError as error:
        return _fail(str(error))
    if outcome.status == "refused":
        if outcome.payload:
            _print_analytics(outcome.payload)
        if getattr(args, "existing_only", False):
            _print(outcome.message)
            _print_delivery(outcome)
            return 0
        return _fail(outcome.message, EXIT_REFUSED)
    code = _report_cycle(outcome)
    if code == 0 and getattr(args, "next_steps", True):
        _print_next_steps(outcome.org_id)
    return code


def _print_delivery(outcome) -> None:  # noqa: ANN001 - CycleOutcome, imported lazily
    """Where the analytics went: the webhook's origin (never its path, which may hold a token) or the
    outbox file."""
    if outcome.delivered_to is None:
        return
    target, destination = outcome.delivered_to
    where = f"pushed to the webhook at {destination}" if target == "webhook" else f"written to {destination}"
    _print(f"analytics of cycle {outcome.cycle_id} {where}")


def ui_command() -> str:
    """The command that opens the Dagster UI on the instance and app database this CLI uses. It starts
    in DAGSTER_HOME: started in a clone's root, Dagster finds the repository's production dagster.yaml
    and warns that it is ignored. Paths are absolute, since the code server runs in that folder too."""
    from icp_pipeline.settings import dagster_home, icp_home

    home = shlex.quote(str(dagster_home().resolve()))
    env = f"DAGSTER_HOME={home}"
    if "ICP_DATABASE_URL" not in os.environ:  # the app database is the SQLite file under ICP_HOME
        env += f" ICP_HOME={shlex.quote(str(icp_home().resolve()))}"
    return f"cd {home} && {env} dg dev -m icp_pipeline.definitions"


def _print_next_steps(org_id: str) -> None:
    _print(
        "next:\n"
        f"  icp-pipeline org report {org_id}     the latest analytics again (--json: the payload as pushed)\n"
        f"  icp-pipeline org history {org_id}    each company's rates per cycle, with intervals\n"
        "  the Dagster UI (runs, assets and their metadata) on http://127.0.0.1:3000:\n"
        f"    {ui_command()}"
    )


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
    if outcome.pushed:
        _print_delivery(outcome)
    if outcome.blocked_by:
        return _fail(outcome.message, EXIT_GATE_BLOCKED)
    if outcome.status != "succeeded" or not outcome.pushed:
        return _fail(outcome.message or "the cycle did not complete")
    return 0


def cmd_org_push(args: argparse.Namespace) -> int:
    """Roll up and push the latest complete cycle again, buying nothing (the push is idempotent)."""
    from icp_pipeline.cli.runner import push_latest

    _require_org(args.org)
    outcome = push_latest(args.org, ignore_gates=getattr(args, "ignore_gates", False))
    if outcome is None:
        return _fail(f"org {args.org!r} has no cycle yet; run `icp-pipeline org run {args.org}`")
    return _report_cycle(outcome)


def cmd_org_keys(args: argparse.Namespace) -> int:
    """The org's question-run partition keys, for `dagster asset materialize --partition KEY`, or with
    --failed those that failed in its latest cycle, for `dagster job backfill --partitions`."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.cycles import combinations, failed_partitions, require_org

    ensure_schema()
    with session_scope() as session:
        require_org(session, args.org)
        keys = (
            failed_partitions(session, args.org)
            if args.failed
            else [c.key for c in combinations(session, args.org)]
        )
    for key in keys:
        print(key)
    return 0


def cmd_org_questions(args: argparse.Namespace) -> int:
    """Every question of the org: source (file or segment), segment, status and partition keys; with
    --approve, activate proposed questions first (they join the next cycle, or the sensor adds them to
    the latest)."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.segments.questions import QuestionApprovalError, approve_questions, question_listing
    from icp_pipeline.visibility.cycles import require_org

    ensure_schema()
    with session_scope() as session:
        require_org(session, args.org)
        if args.approve:
            try:
                approved = approve_questions(session, args.org, args.approve)
            except QuestionApprovalError as error:
                return _fail(f"nothing approved: {error}")
            if not args.json:
                _print(f"approved {len(approved)} question(s): {', '.join(approved)}")
        listing = question_listing(session, args.org)
    if args.json:
        _print(json.dumps(listing, indent=2, sort_keys=True))
        return 0
    for row in listing:
        segment = f" segment {row['segment']}" if row["segment"] else ""
        role = f" ({row['persona_role']})" if row["persona_role"] else ""
        _print(f"{row['key']}  [{row['source']}{segment}, {row['status']}]{role}")
        _print(f"    {row['text']}")
        for key in row["partition_keys"]:
            _print(f"    {key}")
    counts = {}
    for row in listing:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "none"
    _print(f"{len(listing)} questions: {summary}")
    return 0


def cmd_org_report(args: argparse.Namespace) -> int:
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.cycles import require_org
    from icp_pipeline.visibility.steps import latest_snapshot

    ensure_schema()
    with session_scope() as session:
        require_org(session, args.org)
        snapshot = latest_snapshot(session, args.org)
        if snapshot is None:
            return _fail(f"no analytics for org {args.org!r} yet; run `icp-pipeline org run {args.org}`")
        payload = snapshot.payload
    if args.json:
        print(json.dumps(payload, indent=2, sort_keys=True))
    else:
        _print_analytics(payload)
    return 0


def cmd_org_suggest_competitors(args: argparse.Namespace) -> int:
    """The companies the latest answers name that the org does not track, most runs first."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.cycles import require_org
    from icp_pipeline.visibility.evidence import untracked_companies
    from icp_pipeline.visibility.rollup import latest_runs

    ensure_schema()
    with session_scope() as session:
        require_org(session, args.org)
        rows = untracked_companies(session, latest_runs(args.org), limit=args.limit)
    if args.json:
        # JSON escapes control characters itself; names stay as the models wrote them.
        print(json.dumps(rows, indent=2, ensure_ascii=True))
        return 0
    if not rows:
        _print(f"org {args.org}: no untracked company in the latest runs")
        return 0
    _print(f"org {args.org}: companies the latest answers name that the org file does not track")
    _print(f"{'runs':>5} {'mentions':>8} {'claims':>6}  {'sources':<10}  name (example runs)")
    for row in rows:
        # Model-written names: _print removes escapes and invisible characters.
        _print(
            f"{row['runs']:>5} {row['mentions']:>8} {row['claims']:>6}  {','.join(row['sources']):<10}  "
            f"{row['name']}  ({', '.join(row['example_runs'])})"
        )
    _print(
        "add one to the org file's competitors and `org load` it: its history is recomputed, no model call"
    )
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
                org="acme",
                workers=args.workers,
                no_progress=args.no_progress,
                existing_only=True,
                next_steps=False,
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
    _print_next_steps("acme")
    return 0


def cmd_org_history(args: argparse.Namespace) -> int:
    """Each company's rates per cycle with their 95% intervals, from the stored analytics snapshots."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.analytics import analytics_history, history_table
    from icp_pipeline.visibility.cycles import require_org
    from icp_pipeline.visibility.steps import snapshots

    ensure_schema()
    with session_scope() as session:
        require_org(session, args.org)
        series = [(s.cycle_id, s.payload) for s in snapshots(session, args.org)]
    if not series:
        return _fail(f"no analytics for org {args.org!r} yet; run `icp-pipeline org run {args.org}`")
    history = analytics_history(args.org, series)
    _print(json.dumps(history, indent=2, sort_keys=True) if args.json else history_table(history))
    return 0


def cmd_org_export(args: argparse.Namespace) -> int:
    """The org's raw facts and published rates as tidy tables (Parquet or CSV) for a BI tool."""
    from icp_pipeline.db.session import ensure_schema, session_scope
    from icp_pipeline.visibility.export import ExportError, export_org

    ensure_schema()
    try:
        with session_scope() as session:
            result = export_org(session, args.org, Path(args.out), args.format, args.cycle)
    except ExportError as error:
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


def _workers(value: str) -> int:
    """--workers: a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("icp-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default after its help, unless it has none or is an on/off flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not text
            or "%(default)" in text
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser shows defaults; subparsers inherit the class."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - argparse's own signature
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


QUESTION_RUN_WORKERS = 5
ORG_ID_HELP = "the org's id (the `id` in its YAML file; `org load` prints it)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="icp-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    db = commands.add_parser("db", help="app database").add_subparsers(dest="db_command", required=True)
    db.add_parser(
        "upgrade", help="create or upgrade the schema (Alembic)", description="create or upgrade the schema"
    ).set_defaults(func=cmd_db_upgrade)

    org = commands.add_parser("org", help="AI visibility of an org").add_subparsers(
        dest="org_command", required=True
    )
    load = org.add_parser("load", help="load or update an org from a YAML file")
    load.add_argument("file", help="the org's YAML file (see icp_pipeline/examples/acme.yaml)")
    load.add_argument(
        "--allow-large",
        action="store_true",
        help="load an org whose cycle exceeds the runs-per-cycle limit (its estimated cost is shown)",
    )
    load.add_argument(
        "--no-recompute",
        action="store_true",
        help="when the companies change, do not recompute the stored runs now (the steps do, when next run)",
    )
    load.set_defaults(func=cmd_org_load)
    run = org.add_parser("run", help="run one full cycle as Dagster runs")
    run.add_argument("org", help=ORG_ID_HELP)
    # More workers than the pool's 3 slots keep it busy while a run does its database steps (a waiting
    # worker sleeps: instance/pool_wait.py). bench/bench_cycle.py at 1 s per call: 1.47x the ideal with 3, 1.32x with 5.
    run.add_argument(
        "--workers", type=_workers, default=QUESTION_RUN_WORKERS, help="question runs executed at once"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    run.add_argument(
        "--new-cycle",
        action="store_true",
        help="open and buy a new cycle even within ICP_MIN_CYCLE_INTERVAL (default 1h) of the last one",
    )
    run.set_defaults(func=cmd_org_run)
    push = org.add_parser(
        "push", help="roll up and push the latest complete cycle again, without buying anything"
    )
    push.add_argument("org", help=ORG_ID_HELP)
    push.add_argument(
        "--ignore-gates",
        action="store_true",
        help="push even if a blocking quality gate fails (the gates are not evaluated; an operator override)",
    )
    push.set_defaults(func=cmd_org_push)
    keys = org.add_parser(
        "keys", help="print the org's question-run partition keys (one per sample: KEY, KEY|s2, ...)"
    )
    keys.add_argument("org", help=ORG_ID_HELP)
    keys.add_argument(
        "--failed",
        action="store_true",
        help="only the keys that failed in the latest cycle (for `dagster job backfill --partitions`)",
    )
    keys.set_defaults(func=cmd_org_keys)
    questions = org.add_parser(
        "questions",
        help="list every question (source file or segment, segment, status, partition keys); approve proposed ones",
    )
    questions.add_argument("org", help=ORG_ID_HELP)
    questions.add_argument("--json", action="store_true", help="as JSON instead of text")
    questions.add_argument(
        "--approve",
        nargs="+",
        metavar="KEY",
        help="activate these proposed questions (keys as listed, e.g. s-1a2b3c4d5e6f) before listing",
    )
    questions.set_defaults(func=cmd_org_questions)
    report = org.add_parser("report", help="print the latest analytics")
    report.add_argument("org", help=ORG_ID_HELP)
    report.add_argument("--json", action="store_true", help="the analytics payload as pushed, as JSON")
    report.set_defaults(func=cmd_org_report)
    suggest = org.add_parser(
        "suggest-competitors",
        help="list the companies the latest answers name that the org does not track (runs, mentions)",
    )
    suggest.add_argument("org", help=ORG_ID_HELP)
    suggest.add_argument("--json", action="store_true", help="as JSON instead of a table")
    suggest.add_argument("--limit", type=_workers, default=20, help="how many companies")
    suggest.set_defaults(func=cmd_org_suggest_competitors)
    history = org.add_parser("history", help="print each company's rates per cycle with their intervals")
    history.add_argument("org", help=ORG_ID_HELP)
    history.add_argument("--json", action="store_true", help="as JSON instead of a table")
    history.set_defaults(func=cmd_org_history)

    export = org.add_parser(
        "export", help="write the org's runs, mentions, citations, claims and rates as tables for BI"
    )
    export.add_argument("org", help=ORG_ID_HELP)
    export.add_argument("--out", required=True, help="folder to write the tables and schema.json to")
    export.add_argument("--format", choices=["parquet", "csv"], default="parquet", help="file format")
    export.add_argument(
        "--cycle", type=int, help="only this cycle's runs and rates (default: every cycle of the org)"
    )
    export.set_defaults(func=cmd_org_export)

    site = commands.add_parser("site", help="ICP segments of a site").add_subparsers(
        dest="site_command", required=True
    )
    site_load = site.add_parser("load", help="load or update a site from a YAML file")
    site_load.add_argument("file", help="path of the site file (YAML)")
    site_load.set_defaults(func=cmd_site_load)
    build = site.add_parser("build", help="build the site's segments and ICPs as Dagster runs")
    build.add_argument("site", help="the site's id, as in its site file")
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
    build.add_argument(
        "--workers", type=_workers, default=3, help="segments built at once (default: %(default)s)"
    )
    build.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    build.set_defaults(func=cmd_site_build)
    site_report = site.add_parser(
        "report", help="print each segment's ICP profile, analysis, fit score or error, and the ranking"
    )
    site_report.add_argument("site", help="the site's id, as in its site file")
    site_report.add_argument("--json", action="store_true", help="machine-readable JSON")
    site_report.add_argument(
        "--segment", action="append", help="only this segment id (repeatable); the ranking stays whole"
    )
    site_report.set_defaults(func=cmd_site_report)

    demo = commands.add_parser("demo", help="run the example org's cycle and build the example site's ICPs")
    demo.add_argument(
        "--workers", type=_workers, default=QUESTION_RUN_WORKERS, help="question runs executed at once"
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    demo.set_defaults(func=cmd_demo)
    return parser


# Commands that buy or resume: an outage part-way leaves open work that the same command resumes.
_RESUMABLE = {("org", "run"), ("org", "push"), ("demo", None), ("site", "build")}


def database_error_reason(error: BaseException) -> str:
    """The driver's reason in a few words, e.g. "Connection refused" from psycopg2's
    'connection to server at "127.0.0.1", port 1 failed: Connection refused ...'; no secret."""
    from icp_pipeline.redaction import redact
    from icp_pipeline.settings import known_secrets

    original = getattr(error, "orig", None) or error
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    if not lines:
        return type(original).__name__
    reason = lines[0].rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    reason = redact(reason, known_secrets())
    return reason if len(reason) <= 160 else reason[:157] + "..."


def database_error_message(error: BaseException, resumable: bool) -> str:
    from icp_pipeline.db.session import DatabaseUnreachable
    from icp_pipeline.settings import database_url, redact_url

    if isinstance(error, DatabaseUnreachable):  # the workers' outage budget ran out (cli/workers.py)
        message = f"the app database at {redact_url(database_url())} is unreachable ({error})"
    else:
        message = (
            f"cannot reach the app database at {redact_url(database_url())} ({database_error_reason(error)})"
        )
    if resumable:
        # Workers are stopped by then; open items stay open and are resumed.
        message += (
            ". Nothing bought is lost: run the same command again once it is back; it resumes where "
            "this one stopped"
        )
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sqlalchemy.exc import InterfaceError, OperationalError

    from icp_pipeline.db.session import DatabaseUnreachable, SchemaNotReady
    from icp_pipeline.visibility.cycles import UnknownOrg

    try:
        return args.func(args)
    except SchemaNotReady as error:
        return _fail(str(error))
    except UnknownOrg as error:  # every org command: the same message, naming the loaded orgs
        return _fail(str(error))
    except (DatabaseUnreachable, OperationalError, InterfaceError) as error:
        subcommand = getattr(args, f"{args.command}_command", None)
        return _fail(database_error_message(error, (args.command, subcommand) in _RESUMABLE))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head -n 1`): not an error; keep Python quiet at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
