import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import icp_pipeline
from icp_pipeline.cli.main import main
from icp_pipeline.db.models import Org
from icp_pipeline.db.session import session_scope, upgrade
from icp_pipeline.visibility.keys import question_key
from icp_pipeline.visibility.org_file import OrgFileError, QuestionSpec, parse_org_text, upsert_org

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
        ("gemini", "gemini-2.5-flash", False),
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
    assert all(re.fullmatch(r"q-[0-9a-f]{6}", key) for key in keys)
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
