import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

import icp_pipeline
from icp_pipeline.cli.main import main
from icp_pipeline.db.models import Org, Question
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.limits import MAX_FILE_BYTES, MAX_QUESTIONS
from icp_pipeline.terminal import inert
from icp_pipeline.visibility.keys import question_key
from icp_pipeline.visibility.org_file import (
    OrgFileError,
    QuestionSpec,
    large_cycle_problem,
    org_warnings,
    parse_org_file,
    parse_org_text,
    question_keys,
    runs_per_cycle,
    upsert_org,
)

EXAMPLE = Path(icp_pipeline.__file__).parent / "examples" / "acme.yaml"
BASE: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))


def _base() -> dict[str, Any]:
    return copy.deepcopy(BASE)


def _error(data: Any = None, text: str | None = None) -> OrgFileError:
    with pytest.raises(OrgFileError) as info:
        parse_org_text(
            text if text is not None else yaml.safe_dump(data, allow_unicode=True), "orgs/acme.yaml"
        )
    message = str(info.value)
    assert message.startswith("orgs/acme.yaml: invalid org file")
    assert info.value.problems
    for problem in info.value.problems:
        assert problem in message
    return info.value


def test_example_file_parses() -> None:
    spec = parse_org_text(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert spec.id == "acme"
    assert spec.name == "Acme Analytics"
    assert spec.target.name == "Acme"
    assert spec.target.aliases == ["Acme Analytics"]
    assert spec.target.domains == ["acme.io"]
    assert [c.name for c in spec.competitors] == ["Globex", "Initech", "Umbrella"]
    assert [(m.provider, m.model, m.web_search) for m in spec.models] == [
        ("openai", "gpt-4o-mini", False),
        ("anthropic", "claude-haiku-4-5", False),
        ("gemini", "gemini-2.5-flash", True),
    ]
    assert spec.locations == ["US", "DE", "FR"]
    assert spec.samples == 3 and all(m.samples is None for m in spec.models)


def test_plain_string_questions_get_question_keys() -> None:
    spec = parse_org_text(yaml.safe_dump(_base()))
    questions = spec.question_specs()
    assert len(questions) == 5
    assert all(isinstance(q, QuestionSpec) for q in spec.questions)
    assert [q.text for q in questions] == BASE["questions"]
    assert all(q.id is None for q in questions)
    keys = [q.id or question_key(q.text) for q in questions]
    assert all(re.fullmatch(r"q-[0-9a-f]{12}", key) for key in keys)
    assert len(set(keys)) == 5
    # Stable: the key ignores case and whitespace, and reordering does not change it.
    assert question_key("  WHAT is the best product analytics tool for a   startup? ") == keys[0]
    reordered = _base()
    reordered["questions"].reverse()
    again = parse_org_text(yaml.safe_dump(reordered)).question_specs()
    assert [question_key(q.text) for q in again] == list(reversed(keys))


def test_question_with_explicit_id_and_lowercase_locations() -> None:
    data = _base()
    data["questions"][0] = {"id": "best-tool", "text": "What is the best tool?"}
    data["locations"] = ["us", " de "]
    data["target"]["domains"] = ["WWW.Acme.IO"]
    spec = parse_org_text(yaml.safe_dump(data))
    assert spec.questions[0] == QuestionSpec(id="best-tool", text="What is the best tool?")
    assert spec.questions[1].id is None
    assert spec.locations == ["US", "DE"]
    assert spec.target.domains == ["acme.io"]


def test_unknown_provider() -> None:
    data = _base()
    data["models"][0]["provider"] = "bogus-ai"
    error = _error(data)
    assert len(error.problems) == 1
    assert "models[0].provider" in error.problems[0]
    assert "bogus-ai" in error.problems[0]


@pytest.mark.parametrize("locations", [["US", "XX"], ["USA"], ["US", "us"], []])
def test_bad_locations(locations: list[str]) -> None:
    data = _base()
    data["locations"] = locations
    error = _error(data)
    assert all(problem.startswith("locations") for problem in error.problems)


def test_bad_country_code_is_named() -> None:
    data = _base()
    data["locations"] = ["US", "XX"]
    (problem,) = _error(data).problems
    assert problem.startswith("locations")
    assert "'XX'" in problem


def test_duplicate_question() -> None:
    data = _base()
    data["questions"].append("  " + data["questions"][1].upper() + "  ")
    (problem,) = _error(data).problems
    assert problem.startswith("questions")
    assert "duplicate question" in problem


def test_duplicate_question_id() -> None:
    data = _base()
    data["questions"][0] = {"id": "same", "text": "First question?"}
    data["questions"][1] = {"id": "same", "text": "Second question?"}
    (problem,) = _error(data).problems
    assert problem.startswith("questions")
    assert "'same'" in problem


@pytest.mark.parametrize("field", ["id", "name", "target", "models", "locations", "questions"])
def test_missing_required_field(field: str) -> None:
    data = _base()
    del data[field]
    (problem,) = _error(data).problems
    assert problem.startswith(field)
    assert "missing" in problem


def test_missing_target_name() -> None:
    data = _base()
    del data["target"]["name"]
    (problem,) = _error(data).problems
    assert problem == "target.name: missing required field"


def test_not_yaml() -> None:
    (problem,) = _error(text="id: [unclosed").problems
    assert problem.startswith("(file): not valid YAML")


@pytest.mark.parametrize("text", ["- id: acme\n- name: Acme\n", "just a string", "", "42"])
def test_yaml_that_is_not_a_mapping(text: str) -> None:
    (problem,) = _error(text=text).problems
    assert problem.startswith("(file): expected a mapping")


@pytest.mark.parametrize("domain", ["https://acme.io", "acme", "acme.io/path", "acme..io", "-acme.io"])
def test_bad_domain(domain: str) -> None:
    data = _base()
    data["competitors"][1]["domains"] = [domain]
    (problem,) = _error(data).problems
    assert problem.startswith("competitors[1].domains")
    assert domain in problem


def test_duplicate_competitor_name() -> None:
    data = _base()
    data["competitors"][2]["name"] = "globex"
    (problem,) = _error(data).problems
    assert "competitors" in problem
    assert "duplicate company name" in problem
    assert "'globex'" in problem


def test_competitor_named_like_target() -> None:
    data = _base()
    data["competitors"][0]["name"] = "ACME"
    (problem,) = _error(data).problems
    assert "duplicate company name 'ACME'" in problem


def test_duplicate_model() -> None:
    data = _base()
    data["models"].append({"provider": "openai", "model": "gpt-4o-mini", "web_search": True})
    (problem,) = _error(data).problems
    assert "models" in problem
    assert "openai/gpt-4o-mini" in problem


@pytest.mark.parametrize("org_id", ["Acme", "acme corp", "-acme", "", "a" * 65, "acme!"])
def test_bad_org_id(org_id: str) -> None:
    data = _base()
    data["id"] = org_id
    (problem,) = _error(data).problems
    assert problem.startswith("id:")


def test_unknown_key_is_rejected() -> None:
    data = _base()
    data["target"]["website"] = "acme.io"
    (problem,) = _error(data).problems
    assert problem.startswith("target.website")


def test_several_problems_are_all_reported() -> None:
    data = _base()
    data["id"] = "Bad Id"
    data["models"][1]["provider"] = "nope"
    data["locations"] = ["ZZ"]
    problems = _error(data).problems
    assert len(problems) == 3
    assert [p.split(":")[0] for p in problems] == ["id", "models[1].provider", "locations"]


def test_bad_question_dict_names_only_real_fields() -> None:
    # A question object with a bad id fails both union branches (QuestionSpec and str); the
    # union-branch labels must not leak into the reported field path.
    data = _base()
    data["questions"][0] = {"id": "bad id!", "text": "What is the best tool?"}
    problems = _error(data).problems
    assert any(p.startswith("questions[0].id:") for p in problems)
    for problem in problems:
        field_path = problem.split(": ", 1)[0]
        assert "str" not in field_path, problem


# --- schedule: the org's cycle cron ---------------------------------------------------------------


def _with_schedule(schedule: Any) -> dict[str, Any]:
    data = _base()
    data["schedule"] = schedule
    return data


def test_schedule_is_optional_and_normalized() -> None:
    assert parse_org_text(yaml.safe_dump(_base())).schedule is None
    assert parse_org_text(yaml.safe_dump(_with_schedule(" 30  9 * *  1-5 "))).schedule == "30 9 * * 1-5"
    assert parse_org_text("schedule: 0 6 * * 0,7\n" + yaml.safe_dump(_base())).schedule == "0 6 * * 0,7"


@pytest.mark.parametrize(
    ("schedule", "detail"),
    [
        ("0 25 * * *", "hour 25 is out of range 0-23"),
        ("*/15 * * *", "expected 5 fields, got 4"),
        ("every day", "expected 5 fields, got 2"),
        ("30 9 * * MON-FRI", "day-of-week 'MON-FRI' is not a number"),
        (930, "is not a cron string"),
    ],
)
def test_bad_schedule_names_the_field_and_the_value(schedule: Any, detail: str) -> None:
    (problem,) = _error(_with_schedule(schedule)).problems
    assert problem.startswith("schedule: ")
    assert repr(schedule) in problem
    assert detail in problem


def test_unquoted_star_schedule_is_a_yaml_error() -> None:
    # A plain YAML scalar cannot start with *: the README example quotes the cron.
    (problem,) = _error(text="schedule: */15 * * * *\n" + yaml.safe_dump(_base())).problems
    assert problem.startswith("(file): not valid YAML")


@pytest.fixture
def app_db(icp_env: Path) -> str:
    url = f"sqlite:///{icp_env / 'app.db'}"
    upgrade(url)
    return url


def _load(url: str, data: dict[str, Any]) -> dict[str, int]:
    with session_scope(url) as session:
        return upsert_org(session, parse_org_text(yaml.safe_dump(data)))


def _stored(url: str) -> tuple[str, str | None]:
    with session_scope(url) as session:
        org = session.get(Org, "acme")
        return org.name, org.cycle_cron


def test_schedule_is_stored_changed_and_cleared(app_db: str) -> None:
    _load(app_db, _with_schedule("30 9 * * 1-5"))
    assert _stored(app_db) == ("Acme Analytics", "30 9 * * 1-5")
    assert _load(app_db, _with_schedule("30 9 * * 1-5"))["updated"] == 0
    assert _load(app_db, _with_schedule("0 7 * * *"))["updated"] == 1
    assert _stored(app_db) == ("Acme Analytics", "0 7 * * *")
    # Removing the key returns the org to the default cron.
    assert _load(app_db, _base())["updated"] == 1
    assert _stored(app_db) == ("Acme Analytics", None)


def test_schedule_hashed_before_the_column_existed_is_stored_on_reload(app_db: str) -> None:
    data = _with_schedule("30 9 * * 1-5")
    _load(app_db, data)
    with session_scope(app_db) as session:  # as left by a load before migration 0003
        session.get(Org, "acme").cycle_cron = None
    assert _load(app_db, data)["updated"] == 1
    assert _stored(app_db) == ("Acme Analytics", "30 9 * * 1-5")


def test_bad_schedule_writes_nothing(app_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump(_with_schedule("30 9 * * 1-5")))
    assert main(["org", "load", str(path)]) == 0
    bad = _with_schedule("30 9 * * 1-8")
    bad["name"] = "Acme Renamed"
    path.write_text(yaml.safe_dump(bad))
    capsys.readouterr()
    assert main(["org", "load", str(path)]) == 2
    err = capsys.readouterr().err
    assert "schedule: '30 9 * * 1-8' is not a valid cron" in err
    assert "day-of-week 8 is out of range 0-7" in err
    assert _stored(app_db) == ("Acme Analytics", "30 9 * * 1-5")


@pytest.mark.parametrize(
    ("budget", "expected"), [(100, "greater than or equal to 256"), ("lots", "integer"), (10**6, "less than")]
)
def test_a_bad_answer_budget_is_named(budget: object, expected: str) -> None:
    data = _base()
    data["models"][0]["max_output_tokens"] = budget
    (problem,) = _error(data).problems
    assert problem.startswith("models[0].max_output_tokens") and expected in problem


def test_the_answer_budget_is_stored_on_the_model(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    upgrade(url)
    data = _base()
    data["models"][0]["max_output_tokens"] = 6000
    with session_scope(url) as session:
        upsert_org(session, parse_org_text(yaml.safe_dump(data)))
    with session_scope(url) as session:
        org = session.get(Org, data["id"])
        assert [m.max_output_tokens for m in org.models] == [6000] + [None] * (len(org.models) - 1)


# --- min_runs: below it a company row is flagged insufficient_data --------------------------------


def test_min_runs_defaults_to_ten() -> None:
    assert parse_org_text(yaml.safe_dump(_base())).min_runs == 10
    assert parse_org_text(yaml.safe_dump({**_base(), "min_runs": 1})).min_runs == 1


@pytest.mark.parametrize("min_runs", [0, -3, "ten", 2.5, True])
def test_bad_min_runs_names_the_field(min_runs: Any) -> None:
    (problem,) = _error({**_base(), "min_runs": min_runs}).problems
    assert problem.startswith("min_runs: ")


def test_min_runs_is_stored_and_updated(app_db: str) -> None:
    _load(app_db, _base())
    with session_scope(app_db) as session:
        assert session.get(Org, "acme").min_runs == 10
    assert _load(app_db, {**_base(), "min_runs": 3})["updated"] == 1
    with session_scope(app_db) as session:
        assert session.get(Org, "acme").min_runs == 3
    assert _load(app_db, {**_base(), "min_runs": 3}) == {"created": 0, "updated": 0, "deactivated": 0}


# --- Hostile and oversized files (issue 12) ---------------------------------------------------------


def _example_text() -> str:
    return EXAMPLE.read_text(encoding="utf-8")


def yaml_bomb(levels: int) -> str:
    """A "billion laughs" flow sequence: each anchor lists the previous one 9 times (9**levels leaves)."""
    lols = ", ".join(["lol"] * 9)
    nested = [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[&l0 [{lols}], {', '.join(nested)}]"


@pytest.mark.parametrize(
    ("replace", "by", "field"),
    [
        (
            "{provider: openai, model: gpt-4o-mini}",
            "{provider: BOMB, model: gpt-4o-mini}",
            "models[0].provider",
        ),
        ("locations: [US, DE, FR]", "locations: [US, DE, FR]\nschedule: BOMB", "schedule"),
    ],
)
def test_yaml_alias_bomb_is_refused_at_its_first_alias(replace: str, by: str, field: str) -> None:
    # 9**4 leaves: before the fix the error message repr'd all of them (the 9**9 one ran for minutes).
    text = _example_text().replace(replace, by.replace("BOMB", yaml_bomb(4)))
    error = _error(text=text)
    (problem,) = error.problems
    assert problem.startswith(f"{field}[1][0]: YAML aliases (*name) are not supported")
    assert len(str(error)) < 300


def test_deep_nesting_is_refused_without_recursion() -> None:
    (problem,) = _error(text="id: " + "[" * 100_000 + "\n").problems
    assert problem == "id" + "[0]" * 20 + ": nested deeper than 20 levels"


def test_an_integer_of_5000_digits_is_refused() -> None:
    (problem,) = _error(text=_example_text() + "min_runs: " + "9" * 5000 + "\n").problems
    assert problem == "min_runs: an integer of 5000 characters is too long"


def test_a_duplicate_key_is_refused_not_overwritten() -> None:
    # A valid org file followed by a second id: before the fix this loaded an org "other-org".
    text = _example_text()
    id_line = 1 + text.splitlines().index(next(line for line in text.splitlines() if line.startswith("id:")))
    (problem,) = _error(text=text + "id: other-org\n").problems
    assert problem.startswith(f"id: duplicate key (lines {id_line} and ")
    # Two questions: keys (the first list was dropped).
    (problem,) = _error(text=_example_text() + "questions: ['Only this one?']\n").problems
    assert problem.startswith("questions: duplicate key")
    # Nested: a company with two names.
    text = _example_text().replace("{name: Globex,", "{name: Globex, name: Globex2,")
    (problem,) = _error(text=text).problems
    assert problem.startswith("competitors[0].name: duplicate key")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (_example_text().replace("Acme Analytics", "Acmé Analytics").encode("latin-1"), "not UTF-8 text"),
        (_example_text().encode("utf-16"), "UTF-16 text; save the file as UTF-8"),
        (_example_text().encode() + b"\xff\xfe\x80 garbage\n", "not UTF-8 text (byte 0xff"),
        (b"#" * (MAX_FILE_BYTES + 1), "larger than the limit of 1,000,000 bytes"),
    ],
)
def test_unreadable_files_are_named_not_raised(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "org.yaml"
    path.write_bytes(content)
    with pytest.raises(OrgFileError) as info:
        parse_org_file(path)
    (problem,) = info.value.problems
    assert problem.startswith("(file): ")
    assert expected in problem


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "org.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + _example_text().encode())
    assert parse_org_file(path).id == "acme"


def test_error_messages_are_bounded_whatever_the_input() -> None:
    data = _base()
    data["locations"] = ["US", "x" * 100_000]
    data["models"][0]["provider"] = "y" * 100_000
    data["x" * 10_000] = 1
    data["questions"] = [{"text": "ok?", "bad": i} for i in range(500)]
    error = _error(data)
    assert len(error.problems) == 21
    assert re.fullmatch(r"\.\.\. and \d+ more problems", error.problems[-1])
    assert len(str(error)) < 21 * 620


def _old_key(text: str) -> str:
    """question_key before issue 12: 6 hex characters."""
    return "q-" + hashlib.sha1(" ".join(text.lower().split()).encode()).hexdigest()[:6]


def _colliding_texts() -> tuple[str, str]:
    seen: dict[str, str] = {}
    for number in range(100_000):
        text = f"Which tool suits use case number {number}?"
        key = _old_key(text)
        if key in seen:
            return seen[key], text
        seen[key] = text
    raise AssertionError("no collision of 6-hex keys in 100,000 texts")


def test_questions_whose_old_keys_collide_are_distinct_questions() -> None:
    first, second = _colliding_texts()
    data = _base()
    data["questions"] = [first, second]
    spec = parse_org_text(yaml.safe_dump(data))  # before the fix: "duplicate question id"
    assert question_keys(spec.question_specs(), []) == [question_key(first), question_key(second)]
    assert question_key(first) != question_key(second)


def test_ten_thousand_distinct_questions_get_distinct_keys() -> None:
    texts = [f"Which tool suits use case number {number}?" for number in range(10_000)]
    keys = {question_key(text) for text in texts}
    assert len(keys) == 10_000
    assert all(re.fullmatch(r"q-[0-9a-f]{12}", key) for key in keys)


def test_a_stored_key_is_kept_and_a_taken_key_is_never_inherited() -> None:
    questions = [QuestionSpec(text="What is the best tool?"), QuestionSpec(text="What is new?")]
    old_key = _old_key("What is the best tool?")
    # An org loaded before the 12-hex keys keeps its stored key for the same text (any case/spacing).
    existing = [(old_key, "what is  the BEST tool?", True)]
    assert question_keys(questions, existing)[0] == old_key
    # A key stored for another text (a collision) is never reused: the new question gets a suffix.
    existing = [(question_key("What is new?"), "A different text whose key collides?", False)]
    assert question_keys(questions, existing)[1] == question_key("What is new?") + "-2"
    # An explicit id that equals a computed key pushes the computed one aside too.
    taken = [QuestionSpec(id=question_key("What is new?"), text="Another question?"), questions[1]]
    assert question_keys(taken, []) == [question_key("What is new?"), question_key("What is new?") + "-2"]


def test_reloading_keeps_old_keys_and_a_changed_text_starts_its_own_history(app_db: str) -> None:
    _load(app_db, _base())
    first = BASE["questions"][0]
    with session_scope(app_db) as session:  # as loaded before issue 12: 6-hex keys
        for question in session.scalars(select(Question)):
            question.key = _old_key(question.text)
        # And a stored question whose key is the one the changed text below would get.
        session.add(
            Question(org_id="acme", key=question_key("A changed question?"), text="Other?", active=False)
        )
    changed = _base()
    changed["questions"][1] = "A changed question?"
    changed["min_runs"] = 3
    _load(app_db, changed)
    with session_scope(app_db) as session:
        rows = {q.text: (q.key, q.active) for q in session.scalars(select(Question))}
    assert rows[first] == (_old_key(first), True)
    assert rows[BASE["questions"][1]] == (_old_key(BASE["questions"][1]), False)
    assert rows["Other?"] == (question_key("A changed question?"), False)
    assert rows["A changed question?"] == (question_key("A changed question?") + "-2", True)


def test_too_many_questions_models_or_companies_are_named() -> None:
    data = _base()
    data["questions"] = [f"Question number {i}?" for i in range(MAX_QUESTIONS + 1)]
    (problem,) = _error(data).problems
    assert problem.startswith("questions: List should have at most 1000 items")
    data = _base()
    data["competitors"] = [{"name": f"Company {i}"} for i in range(51)]
    (problem,) = _error(data).problems
    assert problem.startswith("competitors: List should have at most 50 items")


def test_runs_per_cycle_counts_samples() -> None:
    data = _base()
    data["samples"] = 2
    data["models"][0]["samples"] = 5
    spec = parse_org_text(yaml.safe_dump(data))
    assert runs_per_cycle(spec) == 5 * 3 * (5 + 2 + 2)
    assert large_cycle_problem(spec) is None
    data["questions"] = [f"Question number {i}?" for i in range(1000)]
    problem = large_cycle_problem(parse_org_text(yaml.safe_dump(data)))
    assert problem.startswith("questions x models x locations x samples: 27,000 question runs per cycle")
    assert "54000 model calls (27000 answers + 27000 claims), estimated cost $" in problem
    assert "--allow-large" in problem


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["competitors"][1]["aliases"].append("Globex Corp"),
            "competitors[1].aliases[1]: 'Globex Corp' is also a name or alias of competitor 'Globex' "
            "(competitors[0].aliases[0])",
        ),
        (
            lambda d: d["competitors"][0]["aliases"].append("ACME"),
            "competitors[0].aliases[1]: 'ACME' is also a name or alias of target 'Acme' (target.name)",
        ),
        (
            lambda d: d["competitors"][0]["domains"].append("acme.io"),
            "competitors[0].domains[1]: 'acme.io' is also a domain of target 'Acme' (target.domains[0])",
        ),
        (lambda d: d["target"]["aliases"].append("the"), "target.aliases[1]: 'the' is a common word"),
        (
            lambda d: d["competitors"][2]["aliases"].append("A"),
            "competitors[2].aliases[1]: 'A' is a common word",
        ),
        (lambda d: d["competitors"][2]["aliases"].append("of the"), "competitors[2].aliases[1]: 'of the' is"),
        (
            lambda d: d["competitors"][2]["aliases"].append("--"),
            "competitors[2].aliases[1]: '--' has no letter",
        ),
    ],
)
def test_ambiguous_terms_are_refused(change: Any, expected: str) -> None:
    data = _base()
    change(data)
    (problem,) = _error(data).problems
    assert problem.startswith(expected)


def test_overlapping_terms_are_warned() -> None:
    data = _base()
    data["competitors"][1]["aliases"].append("Initech for Acme")
    data["competitors"][1]["domains"].append("partners.acme.io")
    data["competitors"][2]["aliases"].append("AI")
    spec = parse_org_text(yaml.safe_dump(data))
    assert org_warnings(spec) == [
        "competitors[2].aliases[1]: 'AI' is very short; it may match unrelated words",
        "competitors[1].aliases[1]: contains 'acme' (target.name); an answer naming it also counts as a "
        "mention of target 'Acme'",
        "competitors[1].domains[1]: 'partners.acme.io' is under 'acme.io' (target.domains[0]); a citation of "
        "it also counts for target 'Acme'",
    ]
    assert org_warnings(parse_org_text(_example_text())) == []


@pytest.mark.parametrize(
    ("where", "name"),
    [
        ("target.name", "Acme\x1b]0;pwned\x07\x1b[2J"),
        ("competitors[0].name", "Glo\u202ebex"),
        ("competitors[1].aliases[0]", "Init\u200bech"),
        ("name", "Acme\u2028Analytics"),
        ("models[0].model", "gpt\x00-4o"),
        ("questions[0].text", "What is the \u202ebest tool?"),
    ],
)
def test_names_with_escape_or_invisible_characters_are_refused(where: str, name: str) -> None:
    data = _base()
    if where == "target.name":
        data["target"]["name"] = name
    elif where == "competitors[0].name":
        data["competitors"][0]["name"] = name
    elif where == "competitors[1].aliases[0]":
        data["competitors"][1]["aliases"][0] = name
    elif where == "name":
        data["name"] = name
    elif where == "models[0].model":
        data["models"][0]["model"] = name
    else:
        data["questions"][0] = name
    (problem,) = _error(data).problems
    assert problem.startswith(f"{where}: contains U+")
    assert not any(ch in problem for ch in "\x1b\x07\x00\u202e\u200b\u2028")


def test_inert_removes_escape_sequences_and_invisible_characters() -> None:
    assert inert("Acme\x1b]0;pwned\x07\x1b[2J\u202e\u200b\x9b31m!") == "Acme!"
    assert inert("a\tb\nc\x1b[31m", keep_newlines=True) == "a\tb\nc"
    assert inert("Ünïcödé 名前 😀") == "Ünïcödé 名前 😀"
