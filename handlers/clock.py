"""The clock as a safety net (issue 12 part 5): working time, urgency and the deadlines
that follow from them. Pure: every function takes the time it reasons about (``at``);
nothing here reads the clock.

**Working time.** Escalation, and every timer of an urgent referral, count *working*
time: the hours of ``Policy.working_hours`` (local wall-clock, default 09:00-17:00)
on ``Policy.working_days`` (default Monday to Friday) in ``Policy.time_zone``, minus
``Policy.non_working_dates`` (the deployment's bank holidays). A referral posted on
Friday at 16:00 has had one working hour by Monday 09:00. The day's hours are local, so
they stay 09:00-17:00 across the change between GMT and BST (the interval is built on
the local calendar day and only then turned into UTC); a day on which the clocks change
is as long in working time as its hours say.

**Urgency.** ``urgency_of(ref)`` is the one place that reads a referral's urgency
(``routine``, ``urgent`` or ``2ww``), so the field it comes from can change without
touching the rules. ``2ww`` is timed like ``urgent`` (and gets the suspected-cancer
pathway reminder, handlers/cancerwords.py).

**What the timers are** (defaults in ``handlers/policy.py``; docs/commands.md "The clock"):

* answer window: routine ``max_lifetime`` (calendar, 7 days); urgent
  ``urgent_max_lifetime`` of working time (16 h = 2 working days), never longer than the
  routine window (so a Telegram-shortened lifetime still bounds it);
* expiry warning to the GP: routine ``reminder_lead`` before expiry (calendar, 1 day);
  urgent ``urgent_reminder_lead`` of working time before it (4 h);
* escalation (the specialty lead in the thread, a note to the GP): ``escalate_after``
  of working time after the first photo reached the thread (16 h), urgent
  ``urgent_escalate_after`` (4 h). Zero turns escalation off.
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from handlers.timefmt import zone

__all__ = [
    "ROUTINE",
    "URGENT",
    "TWO_WEEK_WAIT",
    "URGENCIES",
    "urgency_of",
    "is_urgent",
    "working_interval",
    "add_working_time",
    "subtract_working_time",
    "working_time_between",
    "answer_deadline",
    "warning_time",
    "escalation_time",
    "escalate_after",
    "fmt_working",
    "NoWorkingTime",
]

ROUTINE = "routine"
URGENT = "urgent"
TWO_WEEK_WAIT = "2ww"
URGENCIES = (ROUTINE, URGENT, TWO_WEEK_WAIT)

#: how far the arithmetic looks for working time before it gives up (a calendar with
#: no working day at all is refused by the config; this only guards a bad Policy)
_HORIZON_DAYS = 3 * 366


class NoWorkingTime(ValueError):
    """The working calendar has no working time (no working day, or empty hours)."""


def urgency_of(ref: Any) -> str:
    """The referral's urgency: ``routine`` (also for referrals stored before urgency
    existed), ``urgent`` or ``2ww``. The one accessor the rules use. It reads the
    structured referral's ``ref.details.urgency`` (an enum or its value) when the referral
    has one (issue 12 part 1), else ``ref.urgency``."""
    details = getattr(ref, "details", None)
    value = getattr(details, "urgency", None) if details is not None else None
    if value is None:
        value = getattr(ref, "urgency", None)
    value = getattr(value, "value", value) or ROUTINE
    return value if value in URGENCIES else ROUTINE


def is_urgent(ref: Any) -> bool:
    """Urgent and 2ww run on the urgent timers."""
    return urgency_of(ref) in (URGENT, TWO_WEEK_WAIT)


# ------------------------------------------------------------------ working time
def working_interval(day: date, policy: Any) -> tuple[datetime, datetime] | None:
    """The working hours of the local calendar day *day* as a UTC interval, or None
    when it is not a working day."""
    if day.weekday() not in policy.working_days or day in policy.non_working_dates:
        return None
    start_off, end_off = policy.working_hours
    if end_off <= start_off:
        return None
    midnight = datetime.combine(day, time(0), tzinfo=zone(policy.time_zone))
    # wall-clock arithmetic on the local day: 09:00 is 09:00 GMT in winter and BST in summer
    start = _wall(midnight, start_off)
    end = _wall(midnight, end_off)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def _wall(midnight: datetime, offset: timedelta) -> datetime:
    """Local midnight + a wall-clock offset (24:00 is the next day's midnight)."""
    if offset >= timedelta(days=1):
        nxt = midnight.date() + timedelta(days=1)
        return datetime.combine(nxt, time(0), tzinfo=midnight.tzinfo) + (offset - timedelta(days=1))
    return midnight + offset


def _local_day(at: datetime, policy: Any) -> date:
    if at.tzinfo is None:
        raise ValueError("naive datetime: the workflow only uses tz-aware UTC times")
    return at.astimezone(zone(policy.time_zone)).date()


def add_working_time(at: datetime, amount: timedelta, policy: Any) -> datetime:
    """The moment *amount* of working time after *at* (UTC). Time outside working hours
    does not count: Friday 16:00 + 2 h is Monday 10:00 (with 09:00-17:00)."""
    return _walk_working_time(at, amount, policy, forward=True)


def subtract_working_time(at: datetime, amount: timedelta, policy: Any) -> datetime:
    """The moment *amount* of working time before *at* (UTC): Monday 10:00 - 2 h is
    Friday 16:00 (with 09:00-17:00)."""
    return _walk_working_time(at, amount, policy, forward=False)


def _walk_working_time(at: datetime, amount: timedelta, policy: Any, *, forward: bool) -> datetime:
    """Walk day by day from *at*, forwards or backwards, counting only working time."""
    at = at.astimezone(timezone.utc)
    if amount <= timedelta(0):
        return at
    remaining = amount
    day = _local_day(at, policy)
    step = timedelta(days=1 if forward else -1)
    for _ in range(_HORIZON_DAYS):
        span = working_interval(day, policy)
        if span is not None:
            # the part of this day's working hours on the walking side of *at*
            start, end = (max(span[0], at), span[1]) if forward else (span[0], min(span[1], at))
            if start < end:
                if remaining <= end - start:
                    return start + remaining if forward else end - remaining
                remaining -= end - start
        day += step
    raise NoWorkingTime("the working calendar has no working time")


def working_time_between(a: datetime, b: datetime, policy: Any) -> timedelta:
    """Working time from *a* to *b* (zero when b <= a)."""
    if b <= a:
        return timedelta(0)
    total = timedelta(0)
    day = _local_day(a, policy)
    last = _local_day(b, policy)
    while day <= last:
        span = working_interval(day, policy)
        if span is not None:
            start, end = max(span[0], a), min(span[1], b)
            if start < end:
                total += end - start
        day += timedelta(days=1)
    return total


def fmt_working(amount: timedelta) -> str:
    """``16 working hours``, ``30 working minutes``, ``5 working seconds`` (tests)."""
    seconds = amount.total_seconds()
    if seconds >= 3600:
        n, unit = seconds / 3600, "hour"
    elif seconds >= 60:
        n, unit = seconds / 60, "minute"
    else:
        n, unit = seconds, "second"
    shown = f"{n:g}" if n != int(n) else str(int(n))
    return f"{shown} working {unit}{'' if shown == '1' else 's'}"


# ------------------------------------------------------------------ the deadlines
def answer_deadline(opened_at: datetime, urgency: str, policy: Any) -> datetime:
    """When a referral without an opinion expires. Urgent: ``urgent_max_lifetime`` of
    working time, capped by the routine window (calendar)."""
    routine = opened_at + policy.max_lifetime
    if urgency in (URGENT, TWO_WEEK_WAIT):
        return min(routine, add_working_time(opened_at, policy.urgent_max_lifetime, policy))
    return routine


def warning_time(expires_at: datetime, urgency: str, policy: Any, *, not_before: datetime) -> datetime:
    """When the GP is warned that the referral will expire unanswered (never before
    *not_before*, the moment it is computed)."""
    if urgency in (URGENT, TWO_WEEK_WAIT):
        due = subtract_working_time(expires_at, policy.urgent_reminder_lead, policy)
    else:
        due = expires_at - policy.reminder_lead
    return max(not_before, due)


def escalate_after(urgency: str, policy: Any) -> timedelta:
    return policy.urgent_escalate_after if urgency in (URGENT, TWO_WEEK_WAIT) else policy.escalate_after


def escalation_time(answerable_since: datetime, urgency: str, policy: Any) -> datetime | None:
    """When the specialty lead is asked to see that someone answers: the configured
    working time after the first photo reached the thread; None when escalation is off."""
    amount = escalate_after(urgency, policy)
    if amount <= timedelta(0):
        return None
    return add_working_time(answerable_since, amount, policy)
