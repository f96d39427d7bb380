"""handlers/clock.py and handlers/cancerwords.py: working-time arithmetic (weekends, bank
holidays, both clock changes), the deadlines per urgency, and the suspected-cancer wording."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers import clock
from handlers.cancerwords import suspected_cancer
from handlers.policy import Policy
from handlers.timefmt import fmt_time

UTC = timezone.utc
P = Policy()  # 09:00-17:00 Mon-Fri, Europe/London


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


H = timedelta(hours=1)


# ------------------------------------------------------------------ working time
def test_within_a_working_day():
    assert clock.add_working_time(utc(2026, 3, 2, 10), 2 * H, P) == utc(2026, 3, 2, 12)  # Mon, GMT


def test_before_and_after_the_working_day():
    assert clock.add_working_time(utc(2026, 3, 2, 7), H, P) == utc(2026, 3, 2, 10)  # starts counting at 09:00
    assert clock.add_working_time(utc(2026, 3, 2, 18), H, P) == utc(2026, 3, 3, 10)  # Mon evening -> Tue 10:00


def test_the_weekend_does_not_count():
    fri_16 = utc(2026, 3, 6, 16)
    assert clock.add_working_time(fri_16, 2 * H, P) == utc(2026, 3, 9, 10)  # Monday 10:00
    assert clock.subtract_working_time(utc(2026, 3, 9, 10), 2 * H, P) == fri_16
    assert clock.working_time_between(fri_16, utc(2026, 3, 9, 10), P) == 2 * H
    # 16 working hours from Friday 15:00: Fri 2 h, Mon 8 h, Tue 6 h
    assert clock.add_working_time(utc(2026, 3, 6, 15), 16 * H, P) == utc(2026, 3, 10, 15)


def test_spring_forward_gmt_to_bst():
    # Sunday 29 March 2026 the clocks go forward: Friday 16:00 GMT + 2 working hours is
    # Monday 10:00 BST, which is 09:00 UTC (not 10:00 UTC)
    due = clock.add_working_time(utc(2026, 3, 27, 16), 2 * H, P)
    assert due == utc(2026, 3, 30, 9)
    assert fmt_time(due) == "Mon 30 Mar 10:00 BST"
    assert clock.working_time_between(utc(2026, 3, 27, 16), due, P) == 2 * H
    assert clock.subtract_working_time(due, 2 * H, P) == utc(2026, 3, 27, 16)


def test_fall_back_bst_to_gmt():
    # Sunday 25 October 2026 the clocks go back: Friday 16:00 BST (15:00 UTC) + 2 h is
    # Monday 10:00 GMT = 10:00 UTC
    due = clock.add_working_time(utc(2026, 10, 23, 15), 2 * H, P)
    assert due == utc(2026, 10, 26, 10)
    assert fmt_time(due) == "Mon 26 Oct 10:00 GMT"
    # the working day stays 09:00-17:00 local on both sides: 8 h each
    assert clock.working_interval(date(2026, 10, 23), P) == (utc(2026, 10, 23, 8), utc(2026, 10, 23, 16))
    assert clock.working_interval(date(2026, 10, 26), P) == (utc(2026, 10, 26, 9), utc(2026, 10, 26, 17))


def test_a_clock_change_day_is_as_long_as_it_really_is():
    every_hour = Policy(working_days=frozenset(range(7)), working_hours=(timedelta(0), timedelta(hours=24)))
    spring = clock.working_time_between(utc(2026, 3, 29, 0), utc(2026, 3, 29, 23), every_hour)  # local 00:00 -> 24:00
    autumn = clock.working_time_between(utc(2026, 10, 24, 23), utc(2026, 10, 26, 0), every_hour)
    assert spring == 23 * H and autumn == 25 * H
    assert clock.working_interval(date(2026, 3, 29), every_hour) == (utc(2026, 3, 29, 0), utc(2026, 3, 29, 23))
    assert clock.working_interval(date(2026, 10, 25), every_hour) == (utc(2026, 10, 24, 23), utc(2026, 10, 26, 0))
    # round the clock, working time is plain elapsed time
    assert clock.add_working_time(utc(2026, 3, 28, 12), 48 * H, every_hour) == utc(2026, 3, 30, 12)


def test_bank_holidays_do_not_count():
    easter = Policy(non_working_dates=frozenset({date(2026, 4, 3), date(2026, 4, 6)}))  # Good Friday, Easter Monday
    # Thursday 16:00 BST + 2 h: Thu 1 h, then Tuesday 10:00 BST
    assert clock.add_working_time(utc(2026, 4, 2, 15), 2 * H, easter) == utc(2026, 4, 7, 9)


def test_an_empty_calendar_is_refused_not_looped_for_ever():
    with pytest.raises(clock.NoWorkingTime):
        clock.add_working_time(utc(2026, 3, 2, 9), H, Policy(working_days=frozenset()))


@settings(max_examples=200, deadline=None)
@given(start=st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)),
       minutes=st.integers(min_value=1, max_value=60 * 200))
def test_add_and_measure_agree_and_subtract_undoes_add(start, minutes):
    amount = timedelta(minutes=minutes)
    due = clock.add_working_time(start, amount, P)
    assert clock.working_time_between(start, due, P) == amount
    back = clock.subtract_working_time(due, amount, P)
    assert clock.working_time_between(back, due, P) == amount
    assert back >= start  # start may lie outside working hours; back is where the counting began


def test_fmt_working():
    assert clock.fmt_working(16 * H) == "16 working hours"
    assert clock.fmt_working(H) == "1 working hour"
    assert clock.fmt_working(timedelta(minutes=30)) == "30 working minutes"
    assert clock.fmt_working(timedelta(seconds=3)) == "3 working seconds"


# ------------------------------------------------------------------ urgency and deadlines
class _Ref:
    def __init__(self, urgency):
        self.urgency = urgency


@pytest.mark.parametrize("value,expected", [(None, "routine"), ("", "routine"), ("routine", "routine"),
                                            ("urgent", "urgent"), ("2ww", "2ww"), ("soon", "routine")])
def test_urgency_accessor(value, expected):
    assert clock.urgency_of(_Ref(value)) == expected
    assert clock.is_urgent(_Ref(value)) is (expected != "routine")


def test_answer_window_routine_is_calendar_urgent_is_working_time():
    fri_16 = utc(2026, 3, 6, 16)
    assert clock.answer_deadline(fri_16, "routine", P) == fri_16 + timedelta(days=7)
    # 16 working hours: Fri 1 h, Mon 8 h, Tue 7 h -> Tuesday 16:00
    assert clock.answer_deadline(fri_16, "urgent", P) == utc(2026, 3, 10, 16)
    assert clock.answer_deadline(fri_16, "2ww", P) == utc(2026, 3, 10, 16)
    # never longer than the routine window (a Telegram-shortened lifetime bounds it)
    short = Policy(max_lifetime=timedelta(hours=30))
    assert clock.answer_deadline(fri_16, "urgent", short) == fri_16 + timedelta(hours=30)


def test_expiry_warning_routine_calendar_urgent_working_time():
    expires = utc(2026, 3, 10, 16)  # Tuesday 16:00
    assert clock.warning_time(expires, "routine", P, not_before=utc(2026, 3, 1)) == expires - timedelta(days=1)
    assert clock.warning_time(expires, "urgent", P, not_before=utc(2026, 3, 1)) == utc(2026, 3, 10, 12)
    # an urgent one expiring Monday 10:00 is warned on Friday, not at 06:00 on Monday
    assert clock.warning_time(utc(2026, 3, 9, 10), "urgent", P, not_before=utc(2026, 3, 1)) == utc(2026, 3, 6, 14)
    assert clock.warning_time(expires, "urgent", P, not_before=utc(2026, 3, 10, 15)) == utc(2026, 3, 10, 15)


def test_escalation_time_per_urgency_and_off():
    mon_9 = utc(2026, 3, 2, 9)
    assert clock.escalation_time(mon_9, "routine", P) == utc(2026, 3, 3, 17)  # 16 working hours: Tue 17:00
    assert clock.escalation_time(mon_9, "urgent", P) == utc(2026, 3, 2, 13)  # 4 working hours
    assert clock.escalation_time(mon_9, "routine", Policy(escalate_after=timedelta(0))) is None


# ------------------------------------------------------------------ suspected-cancer wording
SUSPICIOUS = [
    "Pigmented lesion left forearm, grown over 3 months. Melanoma?",
    "?melanoma",
    "suspected melanoma on the back",
    "changing mole, no bleeding, ?melanoma",
    "not sure if this is a melanoma",
    "can't rule out SCC on the lip",
    "cannot exclude melanoma",
    "BCC vs SCC?",
    "query SCC, crusted nodule on the ear",
    "?squamous cell carcinoma",
    "?keratoacanthoma",
    "?lentigo maligna",
    "?Merkel cell",
    "suspected cancer",
    "?malignancy",
    "suspicious for malignancy",
    "worried about skin cancer",
    "could this be a cancer?",
    "2WW?",
    "would this meet the two week wait",
    "7-point checklist score 4",
    "no concern for melanoma but ?SCC",
    "melanoma not excluded",
    "h/o melanoma, new changing lesion",
]

NOT_SUSPICIOUS = [
    "no concern for melanoma",
    "not melanoma",
    "melanoma unlikely, ?seborrhoeic keratosis",
    "no features of melanoma",
    "does not look like a melanoma",
    "doesn't look like melanoma to me",
    "?BCC",
    "?basal cell carcinoma on the nose",
    "rodent ulcer?",
    "history of breast cancer, new rash",
    "on chemotherapy for lymphoma, itchy rash",
    "Itchy plaque, psoriasis?",
    "3 months, 2 cm, T2DM, BP 140/90",
    "non-melanoma lesion, ?actinic keratosis",
    "7 point score of 2",
    "melanoma ruled out last year, now eczema",
    "SCC excluded on biopsy",
    "Leg ulcer right shin, not healing after 6 weeks",
]


@pytest.mark.parametrize("text", SUSPICIOUS)
def test_suspected_cancer_wording(text):
    assert suspected_cancer(text), text


@pytest.mark.parametrize("text", NOT_SUSPICIOUS)
def test_no_false_alarm(text):
    assert not suspected_cancer(text), text


def test_urgency_accessor_reads_the_structured_referral_details_first():
    import enum

    class Urgency(str, enum.Enum):
        ROUTINE = "routine"
        URGENT = "urgent"

    class _Details:
        urgency = Urgency.URGENT

    ref = _Ref("routine")
    ref.details = _Details()
    assert clock.urgency_of(ref) == "urgent"
