"""Times as people read them: in the deployment's time zone, with its abbreviation.

Storage and the workflow work in UTC (tz-aware datetimes); only text shown to a
person goes through here. A UK clinician reads "09:00" as local time, which is an
hour off UTC half the year, so every time carries the zone's own abbreviation
("Mon 2 Mar 14:05 GMT", "Mon 30 Mar 15:05 BST").

The zone is an IANA name from the config (``[policy] time_zone``, default
``Europe/London``), resolved with the standard library's ``zoneinfo``; the
``tzdata`` package is a dependency so this works on a machine without
``/usr/share/zoneinfo`` (slim containers).
"""
from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["DEFAULT_ZONE", "zone", "fmt_time", "fmt_clock", "fmt_date", "fmt_stamp", "local_date", "UnknownTimeZone"]

DEFAULT_ZONE = "Europe/London"


class UnknownTimeZone(ValueError):
    """The configured zone is not an IANA time zone name."""


@lru_cache(maxsize=16)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UnknownTimeZone(f"{name!r} is not a time zone name like Europe/London") from None


def _local(at: datetime, zone_name: str) -> datetime:
    if at.tzinfo is None:
        raise ValueError("naive datetime: the workflow only uses tz-aware UTC times")
    return at.astimezone(zone(zone_name))


def fmt_clock(at: datetime, zone_name: str = DEFAULT_ZONE) -> str:
    """``14:05 GMT``: the time of day only (for things happening within the day)."""
    local = _local(at, zone_name)
    return f"{local:%H:%M} {local.tzname()}"


def fmt_time(at: datetime, zone_name: str = DEFAULT_ZONE) -> str:
    """``Mon 2 Mar 14:05 GMT``: day, date, time and zone abbreviation."""
    local = _local(at, zone_name)
    return f"{local:%a} {local.day} {local:%b %H:%M} {local.tzname()}"


def fmt_date(at: datetime, zone_name: str = DEFAULT_ZONE) -> str:
    """``2 Mar 2031``: the local calendar date."""
    local = _local(at, zone_name)
    return f"{local.day} {local:%b %Y}"


def fmt_stamp(at: datetime, zone_name: str = DEFAULT_ZONE) -> str:
    """``2 Mar 2026 14:05 GMT``: a full local date and time, for records kept for years."""
    local = _local(at, zone_name)
    return f"{local.day} {local:%b %Y %H:%M} {local.tzname()}"


def local_date(at: datetime, zone_name: str = DEFAULT_ZONE) -> date:
    """The calendar day *at* falls on where the people are (23:30 UTC in summer is
    already tomorrow in London)."""
    return _local(at, zone_name).date()
