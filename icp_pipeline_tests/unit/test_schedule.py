"""The cron matcher behind per-org cycle schedules: parsing, matching, windows and DST."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from icp_pipeline.visibility.schedule import CronError, DueCycle, due_cycles, fire_times, parse_cron

BERLIN = ZoneInfo("Europe/Berlin")


def _at(day: int, hour: int = 9, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute)


def test_steps_ranges_and_lists_expand_to_values() -> None:
    cron = parse_cron("*/15 */6 1,5,7 9-11 *")
    assert cron.minutes == {0, 15, 30, 45}
    assert cron.hours == {0, 6, 12, 18}
    assert cron.days == {1, 5, 7}
    assert cron.months == {9, 10, 11}
    assert cron.weekdays == set(range(7))
    assert parse_cron("0-30/10,45 * * * *").minutes == {0, 10, 20, 30, 45}
    assert parse_cron("0 9-17/4 * * *").hours == {9, 13, 17}
    assert parse_cron("0 0 1,5,7 * *").days == {1, 5, 7}
    assert parse_cron("0 0 * 9-11 *").months == {9, 10, 11}
    assert parse_cron("0 0 * * *").minutes == {0}
    assert parse_cron("* * * * *").minutes == set(range(60))


def test_expression_is_normalized() -> None:
    assert parse_cron("  30  9 * *   1-5 ").expression == "30 9 * * 1-5"


@pytest.mark.parametrize("sunday", ["0", "7"])
def test_sunday_is_0_and_7(sunday: str) -> None:
    cron = parse_cron(f"0 9 * * {sunday}")
    assert cron.weekdays == {0}
    assert cron.matches(_at(22))  # Sunday 22 November 2026
    assert not cron.matches(_at(23))  # Monday
    assert not cron.matches(_at(28))  # Saturday


def test_weekday_range_with_sunday_as_7() -> None:
    cron = parse_cron("0 9 * * 5-7")  # Friday to Sunday
    assert [day for day in range(22, 29) if cron.matches(_at(day))] == [22, 27, 28]


def test_minute_hour_and_month_must_all_match() -> None:
    cron = parse_cron("30 9 * 11 *")
    assert cron.matches(_at(23, 9, 30))
    assert not cron.matches(_at(23, 9, 31))
    assert not cron.matches(_at(23, 10, 30))
    assert not cron.matches(_at(23, 9, 30, month=10))


def test_both_day_fields_restricted_fire_on_either() -> None:
    cron = parse_cron("0 9 13 * 1")  # the 13th, or any Monday
    assert cron.matches(_at(13))  # Friday the 13th: day-of-month matches
    assert cron.matches(_at(16))  # Monday the 16th: day-of-week matches
    assert not cron.matches(_at(17))  # Tuesday the 17th: neither


def test_one_day_field_restricted_needs_both() -> None:
    cron = parse_cron("0 9 13 * *")
    assert cron.matches(_at(13))
    assert not cron.matches(_at(16))
    weekdays = parse_cron("30 9 * * 1-5")
    assert [day for day in range(20, 27) if weekdays.matches(_at(day, 9, 30))] == [20, 23, 24, 25, 26]


def test_star_step_day_field_counts_as_unrestricted() -> None:
    # cron(8): a day field starting with * is unrestricted, so "*/2" and a weekday combine with AND.
    cron = parse_cron("0 9 */2 * 1")
    assert cron.matches(_at(23))  # Monday, odd day
    assert not cron.matches(_at(16))  # Monday, even day
    assert not cron.matches(_at(13))  # odd day, Friday: OR semantics would fire here


@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        ("0 25 * * *", "hour 25 is out of range 0-23"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 6 * *", "expected 5 fields, got 4"),
        ("0 6 * * * *", "expected 5 fields, got 6"),
        ("", "expected 5 fields, got 0"),
        ("10-5 * * * *", "minute range '10-5' runs backwards"),
        ("*/0 * * * *", "minute '*/0': the step must be at least 1"),
        ("5/10 * * * *", "minute '5/10': a step needs * or a range"),
        ("0 6 * * MON", "day-of-week 'MON' is not a number"),
        ("0 6,,7 * * *", "hour '' is not a number"),
        ("@daily", "expected 5 fields, got 1"),
    ],
)
def test_invalid_cron_names_the_expression_and_the_bad_part(expression: str, detail: str) -> None:
    with pytest.raises(CronError) as info:
        parse_cron(expression)
    message = str(info.value)
    assert message.startswith(f"{expression!r} is not a valid cron")
    assert detail in message


def test_window_excludes_its_start_and_includes_its_end() -> None:
    six = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    tick = timedelta(minutes=15)
    assert fire_times("0 6 * * *", six - tick, six, "UTC") == [six]
    assert fire_times("0 6 * * *", six, six + tick, "UTC") == []
    assert fire_times("0 6 * * *", six - tick, six - timedelta(minutes=1), "UTC") == []
    # Every fire time strictly after the start, up to and including the end.
    assert fire_times("*/5 * * * *", six, six + tick, "UTC") == [
        six + timedelta(minutes=m) for m in (5, 10, 15)
    ]


def test_window_bounds_with_seconds() -> None:
    six = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    assert fire_times("0 6 * * *", six - timedelta(seconds=1), six + timedelta(seconds=1), "UTC") == [six]
    assert fire_times("0 6 * * *", six + timedelta(seconds=1), six + timedelta(minutes=15), "UTC") == []


def test_fire_times_are_on_the_zone_wall_clock() -> None:
    start = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    (fire,) = fire_times("0 6 * * *", start, start + timedelta(days=1), "Europe/Berlin")
    assert fire == datetime(2026, 11, 23, 6, 0, tzinfo=BERLIN)
    assert fire.utcoffset() == timedelta(hours=1)
    assert fire.astimezone(UTC) == datetime(2026, 11, 23, 5, 0, tzinfo=UTC)


def test_naive_window_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        fire_times("0 6 * * *", datetime(2026, 11, 23), datetime(2026, 11, 24), "UTC")


def test_daily_cron_keeps_its_wall_time_across_spring_forward() -> None:
    # Berlin moves from +01:00 to +02:00 at 02:00 local on 29 March 2026.
    start = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    fires = fire_times("0 6 * * *", start, start + timedelta(days=3), "Europe/Berlin")
    assert [f.astimezone(UTC).hour for f in fires] == [5, 4, 4]
    assert [(f.day, f.hour, f.minute) for f in fires] == [(28, 6, 0), (29, 6, 0), (30, 6, 0)]


def test_skipped_wall_time_fires_once_right_after_the_jump() -> None:
    start = datetime(2026, 3, 28, 0, 0, tzinfo=UTC)
    fires = fire_times("30 2 * * *", start, start + timedelta(days=3), "Europe/Berlin")
    assert [f.astimezone(UTC) for f in fires] == [
        datetime(2026, 3, 28, 1, 30, tzinfo=UTC),  # 02:30 CET
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC),  # 02:30 never happens: 03:00 CEST, the jump
        datetime(2026, 3, 30, 0, 30, tzinfo=UTC),  # 02:30 CEST
    ]
    assert fires[1].strftime("%H:%M") == "03:00"


def test_every_quarter_hour_across_the_gap() -> None:
    start = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # 01:30 CET
    fires = fire_times("*/15 * * * *", start, start + timedelta(minutes=45), "Europe/Berlin")
    assert [f.strftime("%H:%M%z") for f in fires] == ["01:45+0100", "03:00+0200", "03:15+0200"]


def test_repeated_wall_time_fires_once_at_the_later_occurrence() -> None:
    # Berlin moves from +02:00 back to +01:00 at 03:00 local on 25 October 2026: 02:00-02:59 happens twice.
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)
    fires = fire_times("30 2 * * *", start, start + timedelta(hours=6), "Europe/Berlin")
    assert [f.astimezone(UTC) for f in fires] == [datetime(2026, 10, 25, 1, 30, tzinfo=UTC)]
    assert fires[0].strftime("%Y-%m-%dT%H:%M%z") == "2026-10-25T02:30+0100"
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # the first 02:30 (CEST)
    assert fire_times("30 2 * * *", first - timedelta(minutes=15), first, "Europe/Berlin") == []


def test_due_cycles_use_each_orgs_cron_or_the_default() -> None:
    tick = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)  # a Monday
    orgs = [("acme", "30 9 * * 1-5"), ("globex", None), ("initech", "0 6 * * *")]
    due, invalid = due_cycles(orgs, "30 9 * * *", tick - timedelta(minutes=15), tick, "UTC")
    assert due == [DueCycle("acme", tick), DueCycle("globex", tick)]
    assert invalid == {}
    due, _ = due_cycles(orgs, "0 6 * * *", tick - timedelta(minutes=15), tick, "UTC")
    assert due == [DueCycle("acme", tick)]


def test_due_cycles_open_one_cycle_per_window_at_the_latest_fire_time() -> None:
    tick = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)
    due, _ = due_cycles([("acme", "*/5 * * * *")], "0 6 * * *", tick - timedelta(minutes=15), tick, "UTC")
    assert due == [DueCycle("acme", tick)]


def test_due_cycles_skip_an_org_with_an_invalid_stored_cron() -> None:
    tick = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)
    due, invalid = due_cycles(
        [("acme", "0 6 * * 9"), ("globex", None)], "0 6 * * *", tick - timedelta(minutes=15), tick, "UTC"
    )
    assert due == [DueCycle("globex", tick)]
    assert list(invalid) == ["acme"]
    assert "day-of-week 9 is out of range 0-7" in invalid["acme"]
