"""When an org's cycle is due: a 5-field cron parser and the cron's fire times in a window.

Plain functions, no Dagster imports. A cron is evaluated on the wall clock of a time zone, with the
DST rules Dagster's own schedules follow, so moving from a Dagster cron schedule changes nothing:
a wall time the clocks skip (spring forward) fires at the first minute after the jump, and a wall
time that happens twice (fall back) fires once, at the later occurrence.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

DEFAULT_CYCLE_CRON = "0 6 * * *"
CRON_FIELDS = "minute hour day-of-month month day-of-week"

_MINUTE = timedelta(minutes=1)
# (name, lowest, highest); day-of-week accepts 0-7, both 0 and 7 meaning Sunday.
_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
)
_ITEM = re.compile(r"^(?:(?P<star>\*)|(?P<first>\d+)(?:-(?P<last>\d+))?)(?:/(?P<step>\d+))?$")


class CronError(ValueError):
    """Not a valid 5-field cron; the message quotes the expression and names the bad part."""


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_restricted: bool
    weekdays_restricted: bool

    def matches(self, wall: datetime) -> bool:
        """Whether the cron fires at this wall-clock minute (seconds and tzinfo are ignored)."""
        if wall.minute not in self.minutes or wall.hour not in self.hours or wall.month not in self.months:
            return False
        day = wall.day in self.days
        weekday = wall.isoweekday() % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day or weekday  # cron's rule when both day fields are restricted
        return day and weekday


def _parse_field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise CronError(f"{name} {item!r} is not a number, *, a range a-b or a step */n or a-b/n")
        if match["star"]:
            start, stop = low, high
        else:
            start = int(match["first"])
            stop = int(match["last"]) if match["last"] is not None else start
            if match["step"] is not None and match["last"] is None:
                raise CronError(f"{name} {item!r}: a step needs * or a range, e.g. */15 or 0-30/15")
        for value in (start, stop):
            if not low <= value <= high:
                raise CronError(f"{name} {value} is out of range {low}-{high}")
        if start > stop:
            raise CronError(f"{name} range {item!r} runs backwards")
        step = int(match["step"]) if match["step"] is not None else 1
        if step == 0:
            raise CronError(f"{name} {item!r}: the step must be at least 1")
        values.update(range(start, stop + 1, step))
    return frozenset(values)


def parse_cron(expression: str) -> Cron:
    """Parse a 5-field cron (numbers, *, lists a,b, ranges a-b, steps */n and a-b/n)."""
    fields = expression.split()
    try:
        if len(fields) != 5:
            raise CronError(f"expected 5 fields, got {len(fields)}")
        minutes, hours, days, months, weekdays = (
            _parse_field(text, name, low, high)
            for text, (name, low, high) in zip(fields, _FIELDS, strict=True)
        )
    except CronError as error:
        raise CronError(f"{expression!r} is not a valid cron ({CRON_FIELDS}): {error}") from None
    return Cron(
        expression=" ".join(fields),
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=frozenset(day % 7 for day in weekdays),
        # As in cron(8): a day field is restricted unless it starts with *, so "*/2" is not.
        days_restricted=not fields[2].startswith("*"),
        weekdays_restricted=not fields[4].startswith("*"),
    )


def _walls_firing_at(moment: datetime, zone: ZoneInfo) -> list[datetime]:
    """The naive wall-clock minutes of `zone` that fire at the UTC minute `moment`."""
    local = moment.astimezone(zone)
    wall = local.replace(tzinfo=None, fold=0)
    previous = (moment - _MINUTE).astimezone(zone).replace(tzinfo=None, fold=0)
    walls = []
    # The first of two identical wall times (fold 0 of an ambiguous time) waits for the second.
    if local.fold == 1 or local.utcoffset() == local.replace(fold=1).utcoffset():
        walls.append(wall)
    # Right after a spring-forward jump: the skipped wall times fire now.
    skipped = previous + _MINUTE
    while skipped < wall:
        walls.append(skipped)
        skipped += _MINUTE
    return walls


def fire_times(cron: Cron | str, start: datetime, end: datetime, timezone: str) -> list[datetime]:
    """The times in (start, end] at which `cron` fires on the wall clock of `timezone`, ascending,
    as aware datetimes in that zone. `start` and `end` must be timezone-aware."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    parsed = parse_cron(cron) if isinstance(cron, str) else cron
    zone = ZoneInfo(timezone)
    # Whole UTC minutes after start: every zone in use today is offset by whole minutes.
    moment = start.astimezone(UTC).replace(second=0, microsecond=0) + _MINUTE
    last = end.astimezone(UTC)
    times = []
    while moment <= last:
        if any(parsed.matches(wall) for wall in _walls_firing_at(moment, zone)):
            times.append(moment.astimezone(zone))
        moment += _MINUTE
    return times


@dataclass(frozen=True)
class DueCycle:
    org_id: str
    fire_time: datetime  # the latest fire time in the window, in the schedule's time zone


def due_cycles(
    org_crons: Iterable[tuple[str, str | None]],
    default_cron: str,
    start: datetime,
    end: datetime,
    timezone: str,
) -> tuple[list[DueCycle], dict[str, str]]:
    """The orgs whose cron (their own, else `default_cron`) fires in (start, end], one cycle each,
    and the orgs skipped because their stored cron is invalid (org id -> error)."""
    # Most orgs share the default cron: compute each distinct cron's fire times once.
    times_by_cron: dict[str, list[datetime] | CronError] = {}
    due: list[DueCycle] = []
    invalid: dict[str, str] = {}
    for org_id, own_cron in org_crons:
        expression = own_cron or default_cron
        if expression not in times_by_cron:
            try:
                times_by_cron[expression] = fire_times(expression, start, end, timezone)
            except CronError as error:
                times_by_cron[expression] = error
        times = times_by_cron[expression]
        if isinstance(times, CronError):
            invalid[org_id] = str(times)
        elif times:
            # A cron firing more often than the window still opens one cycle per window.
            due.append(DueCycle(org_id, times[-1]))
    return due, invalid
