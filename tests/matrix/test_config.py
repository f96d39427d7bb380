"""bot/config.py: TOML config, secrets from files/env, durations, clear errors (no Synapse)."""
from __future__ import annotations

import os
from datetime import timedelta

import pytest

from bot.config import ConfigError, load_config, parse_config

BASE = """
[matrix]
homeserver = "https://matrix.example.org/"
user_id = "@bot:example.org"
{secret}

[policy]
grace_period_minutes = 30
max_lifetime_hours = 48
reminder_before_seconds = 600
retention_days = 30
adult_age = 16

[directory]
allowed_servers = ["trust.example.org"]
allowed_users = ["@locum:elsewhere.org"]
[[directory.clinicians]]
user_id = "@gp:example.org"
practice = "P1"
[[directory.clinicians]]
user_id = "@derm:example.org"
role = "specialist"
specialties = ["Dermatology"]

[specialties.dermatology]
room = "!room:example.org"
aliases = ["Derm"]
roster = ["@extra:example.org"]

[telegram]
allow_images = false
"""


def write(tmp_path, secret: str):
    p = tmp_path / "c.toml"
    p.write_text(BASE.format(secret=secret))
    return p


def test_secret_from_file_and_everything_parsed(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = load_config(write(tmp_path, 'password_file = "pw"'))
    assert cfg.matrix.password == "s3cret" and "s3cret" not in repr(cfg)
    assert cfg.matrix.homeserver == "https://matrix.example.org"
    pol = cfg.policy()
    assert pol.grace_period == timedelta(minutes=30) and pol.max_lifetime == timedelta(hours=48)
    assert pol.reminder_lead == timedelta(seconds=600) and pol.default_retention == timedelta(days=30)
    assert pol.specialties["dermatology"].roster == frozenset({"@derm:example.org", "@extra:example.org"})
    assert pol.find_specialty("derm").key == "dermatology"
    assert pol.practices == {"@gp:example.org": "P1"}
    assert cfg.is_allowed("@gp:example.org") and cfg.is_allowed("@x:trust.example.org")
    assert cfg.is_allowed("@locum:elsewhere.org") and not cfg.is_allowed("@x:evil.org")
    assert cfg.raw["telegram"] == {"allow_images": False}   # left for the Telegram transport


def test_secret_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_PW", "from-env")
    assert load_config(write(tmp_path, 'password_env = "MY_PW"')).matrix.password == "from-env"
    monkeypatch.setenv("REFERRAL_BOT_MATRIX_PASSWORD", "default-env")
    assert load_config(write(tmp_path, "")).matrix.password == "default-env"


@pytest.mark.parametrize("secret,needle", [
    ("", "password"),
    ('password_file = "missing"', "cannot be read"),
    ('password_env = "NOPE_NOT_SET"', "not set"),
    ('password_file = "empty"', "is empty"),  # a mount or copy gone wrong, never a password
])
def test_missing_secret_is_one_clear_sentence(tmp_path, monkeypatch, secret, needle):
    monkeypatch.delenv("REFERRAL_BOT_MATRIX_PASSWORD", raising=False)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, secret))
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[matrix\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="user_id"):
        parse_config({"matrix": {"homeserver": "h", "user_id": "bot", "password": "x"}})
    with pytest.raises(ConfigError, match="more than once"):
        parse_config({"matrix": {"homeserver": "h", "user_id": "@b:s", "password": "x"},
                      "policy": {"grace_period_minutes": 1, "grace_period_hours": 1}})


def test_init_writes_a_config_that_loads_and_a_0600_key(tmp_path, monkeypatch):
    import argparse

    from bot import cli_init

    cfg = tmp_path / "rb.toml"
    ns = argparse.Namespace(config=str(cfg), key_file=None, force=False)
    assert cli_init.run(ns) == 0
    key = tmp_path / "referral-bot.key"
    assert (os.stat(key).st_mode & 0o777) == 0o600
    monkeypatch.setenv("REFERRAL_BOT_MATRIX_PASSWORD", "x")
    loaded = load_config(cfg)
    assert loaded.storage.key_file == key.resolve()
    assert loaded.policy().filing_enabled is False   # the sinks are examples, commented out
    assert cli_init.run(ns) == 1          # never overwrites silently


def test_init_filing_examples_parse_once_uncommented(tmp_path, monkeypatch):
    """The commented [[filing.sink]] lines in `init`'s config are a working starting point."""
    import argparse
    import re
    import tomllib

    from bot import cli_init
    from bot.filing.config import parse_sinks

    cfg = tmp_path / "rb.toml"
    assert cli_init.run(argparse.Namespace(config=str(cfg), key_file=None, force=False)) == 0
    head, filing = cfg.read_text().split("[filing]\n", 1)
    filing, rest = filing.split("\n[directory]", 1)
    filing = re.sub(r"(?m)^# (\[\[filing\.sink\]\]|\w+ = .*)$", r"\1", filing)
    text = head + "[filing]\n" + filing + "\n[directory]" + rest
    raw = tomllib.loads(text)
    sinks = parse_sinks(raw, key=b"k" * 32, base=tmp_path)
    assert [s.name for s in sinks] == ["practice-inbox", "pacs"]
    monkeypatch.setenv("REFERRAL_BOT_MATRIX_PASSWORD", "x")
    cfg.write_text(text)
    assert load_config(cfg).policy().filing_enabled is True


def test_specialty_room_needed_for_matrix_only(tmp_path):
    """A Telegram-only config names no Matrix rooms; a Matrix config must name each one."""
    import tomllib

    raw = tomllib.loads(BASE.format(secret='password = "x"'))
    del raw["specialties"]["dermatology"]["room"]
    with pytest.raises(ConfigError, match=r"\[specialties.dermatology\] needs room"):
        parse_config(raw)
    del raw["matrix"]
    cfg = parse_config(raw, need_matrix=False)
    assert cfg.matrix is None and cfg.specialties["dermatology"].room == ""


def test_time_zone_and_conversation_settings(tmp_path):
    from bot.config import parse_config as parse

    raw = {"policy": {"time_zone": "Europe/Dublin", "unassigned_photo_minutes": 5,
                      "photo_window_minutes": 3, "more_photos_extension_hours": 24}}
    pol = parse(raw, need_matrix=False).policy()
    assert pol.time_zone == "Europe/Dublin" and pol.unassigned_photo_ttl == timedelta(minutes=5)
    assert pol.photo_window == timedelta(minutes=3) and pol.more_photos_extension == timedelta(hours=24)
    defaults = parse({}, need_matrix=False).policy()
    assert defaults.time_zone == "Europe/London" and defaults.unassigned_photo_ttl == timedelta(minutes=10)
    with pytest.raises(ConfigError, match="time_zone 'London' is not a time zone name"):
        parse({"policy": {"time_zone": "London"}}, need_matrix=False)
    with pytest.raises(ConfigError, match="unassigned_photo"):
        parse({"policy": {"unassigned_photo_minutes": 0}}, need_matrix=False)


def test_times_are_shown_from_the_zone_data_package_without_the_system_database():
    """A fresh (slim) machine may have no /usr/share/zoneinfo: the tzdata dependency is enough."""
    import subprocess
    import sys

    code = ("from datetime import datetime, timezone; from handlers.timefmt import fmt_clock; "
            "print(fmt_clock(datetime(2026, 3, 29, 0, 59, tzinfo=timezone.utc)), "
            "fmt_clock(datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc)), "
            "fmt_clock(datetime(2026, 10, 25, 0, 59, tzinfo=timezone.utc)), "
            "fmt_clock(datetime(2026, 10, 25, 1, 0, tzinfo=timezone.utc)))")
    env = dict(os.environ, PYTHONTZPATH="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    # the clocks go forward at 01:00 UTC on 29 March and back at 01:00 UTC on 25 October 2026
    assert out.stdout.split() == ["00:59", "GMT", "02:00", "BST", "01:59", "BST", "01:00", "GMT"]


def test_roles_decide_who_may_refer_and_rosters_who_may_be_in_a_room(tmp_path):
    """A clinician without ``role`` is a referrer (configs from before roles were
    enforced keep working); a specialist may not refer; GPs are on no roster."""
    from bot.app import directory_actors

    text = BASE.format(secret='password = "x"').replace(
        'user_id = "@derm:example.org"\nrole = "specialist"',
        'user_id = "@derm:example.org"\nrole = "specialist"\npractice = "P1"')
    text += ('\n[[directory.clinicians]]\nuser_id = "@both:example.org"\nrole = "both"\n'
             'practice = "P1"\nspecialties = ["dermatology"]\n')
    p = tmp_path / "c.toml"
    p.write_text(text.replace("[telegram]\nallow_images = false\n", ""))
    cfg = load_config(p)
    actors = directory_actors(cfg)
    assert actors["@gp:example.org"].may_refer is True
    assert actors["@derm:example.org"].may_refer is False
    assert actors["@both:example.org"].may_refer is True
    assert cfg.roster("dermatology") == frozenset({"@derm:example.org", "@extra:example.org",
                                                    "@both:example.org"})
    assert "@gp:example.org" not in cfg.roster("dermatology")


def test_consent_window_and_patient_reference_schemes(tmp_path):
    """Issue 12: the episode window and the deployment's own patient-reference schemes."""
    raw = {"policy": {"consent_window_days": 14, "max_consent_window_days": 90,
                      "patient_references": [{"name": "hospital no.", "pattern": "RX[0-9]{7}"},
                                             {"name": "CHI no.", "pattern": "[0-3][0-9][01][0-9]{7}"}]}}
    pol = parse_config(raw, need_matrix=False).policy()
    assert pol.consent_window == timedelta(days=14) and pol.max_consent_window == timedelta(days=90)
    assert [s.name for s in pol.patient_ref_schemes] == ["hospital no.", "CHI no."]
    defaults = parse_config({}, need_matrix=False).policy()
    assert defaults.consent_window == timedelta(days=30) and defaults.patient_ref_schemes == ()
    for bad, says in (([{"name": "x"}], "needs name and pattern"), ([{"name": "x", "pattern": "RX[0-9"}], "not a valid"),
                      ({"name": "x"}, "must be a list")):
        with pytest.raises(ConfigError, match=says):
            parse_config({"policy": {"patient_references": bad}}, need_matrix=False)



def test_held_photo_time_is_configurable_and_must_be_positive():
    """How long a photo held for a face or text (preview sent) waits for !blur / !discard."""
    from bot.config import parse_config as parse

    assert parse({}, need_matrix=False).policy().held_photo_ttl == timedelta(hours=24)
    pol = parse({"policy": {"held_photo_hours": 4}}, need_matrix=False).policy()
    assert pol.held_photo_ttl == timedelta(hours=4)
    with pytest.raises(ConfigError, match="held_photo must be more than 0"):
        parse({"policy": {"held_photo_minutes": 0}}, need_matrix=False)


def test_the_clock_settings_working_time_urgent_timers_and_the_lead():
    """Issue 12 part 5: working days and hours, bank holidays, the working-time timers
    (never in days: a working day has no fixed length), and a specialty lead on its roster."""
    from datetime import date

    import tomllib

    raw = {"policy": {"working_days": ["Mon", "tue", "WED", "thursday", "fri", "sat"],
                      "working_hours": "08:00-18:30", "non_working_dates": ["2026-12-25", date(2026, 12, 28)],
                      "escalate_after_working_hours": 8, "urgent_escalate_after_working_minutes": 90,
                      "urgent_max_lifetime_working_hours": 10.5, "urgent_reminder_before_working_seconds": 30}}
    pol = parse_config(raw, need_matrix=False).policy()
    assert pol.working_days == frozenset({0, 1, 2, 3, 4, 5})
    assert pol.working_hours == (timedelta(hours=8), timedelta(hours=18, minutes=30))
    assert pol.non_working_dates == frozenset({date(2026, 12, 25), date(2026, 12, 28)})
    assert pol.escalate_after == timedelta(hours=8) and pol.urgent_escalate_after == timedelta(minutes=90)
    assert pol.urgent_max_lifetime == timedelta(hours=10.5) and pol.urgent_reminder_lead == timedelta(seconds=30)
    defaults = parse_config({}, need_matrix=False).policy()
    assert defaults.working_days == frozenset(range(5)) and defaults.working_hours == (timedelta(hours=9),
                                                                                        timedelta(hours=17))
    assert defaults.escalate_after == timedelta(hours=16) and defaults.urgent_escalate_after == timedelta(hours=4)
    assert defaults.urgent_max_lifetime == timedelta(hours=16) and defaults.urgent_reminder_lead == timedelta(hours=4)
    assert parse_config({"policy": {"working_hours": "00:00-24:00"}}, need_matrix=False).policy().working_hours == (
        timedelta(0), timedelta(hours=24))
    for bad, says in (({"working_days": []}, "working_days must be a list"),
                      ({"working_days": ["mon", "funday"]}, "use mon, tue"),
                      ({"working_hours": "9-5"}, "must look like"),
                      ({"working_hours": "17:00-09:00"}, "end after they start"),
                      ({"working_hours": "09:00-25:00"}, "must look like"),
                      ({"non_working_dates": ["25/12/2026"]}, "dates such as"),
                      ({"escalate_after_days": 2}, "is working time"),
                      ({"escalate_after_working_hours": -1}, "0 or more"),
                      ({"urgent_max_lifetime_working_hours": 0}, "more than 0")):
        with pytest.raises(ConfigError, match=says):
            parse_config({"policy": bad}, need_matrix=False)

    base = tomllib.loads(BASE.format(secret='password = "x"'))
    base["specialties"]["dermatology"]["lead"] = "@derm:example.org"  # a specialist of the directory
    assert parse_config(base).policy().specialties["dermatology"].lead == "@derm:example.org"
    base["specialties"]["dermatology"]["lead"] = "@extra:example.org"  # on the explicit roster
    assert parse_config(base).policy().specialties["dermatology"].lead == "@extra:example.org"
    base["specialties"]["dermatology"]["lead"] = "@boss:example.org"
    with pytest.raises(ConfigError, match="lead @boss:example.org is not on its roster"):
        parse_config(base)
    del base["specialties"]["dermatology"]["lead"]
    assert parse_config(base).policy().specialties["dermatology"].lead is None
