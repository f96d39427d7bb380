"""The [telegram] section parser and the 48-hour fit of the policy."""
from __future__ import annotations

from datetime import timedelta

import pytest

from bot.telegram.config import (
    DELETE_WINDOW,
    SAFETY_MARGIN,
    TelegramConfigError,
    fit_policy_to_telegram,
    parse_telegram_config,
)
from handlers.policy import Policy

TOKEN = "123456:ABCdefGhIJKlmnOPQrstUVwxyz"


def _raw(**t):
    return {"telegram": {"token": TOKEN, **t}}


def test_absent_section_means_no_telegram():
    assert parse_telegram_config({}) is None


def test_defaults_are_safe():
    cfg = parse_telegram_config(_raw())
    assert cfg.allow_images is False and cfg.lifetimes == "shorten"
    assert TOKEN not in repr(cfg)


def test_token_from_file_and_env(tmp_path, monkeypatch):
    f = tmp_path / "tok"
    f.write_text(TOKEN + "\n")
    assert parse_telegram_config({"telegram": {"token_file": str(f)}}).token == TOKEN
    monkeypatch.setenv("TG_TOKEN_TEST", TOKEN)
    assert parse_telegram_config({"telegram": {"token_env": "TG_TOKEN_TEST"}}).token == TOKEN


@pytest.mark.parametrize("section, words", [
    ({}, "needs the bot token"),
    ({"token": "nonsense"}, "does not look like"),
    ({"token": TOKEN, "allow_images": "yes"}, "true or false"),
    ({"token": TOKEN, "users": {"gp": "@gp:x"}}, "numeric Telegram user id"),
    ({"token": TOKEN, "users": {"1": "@a:x", "2": "@a:x"}}, "same clinician"),
    ({"token": TOKEN, "specialties": {"derm": 12345}}, "negative chat id"),
    ({"token": TOKEN, "lifetimes": "ignore"}, "shorten"),
    ({"token_file": "/nonexistent/tok"}, "cannot be read"),
    ({"token_file": "/dev/null"}, "is empty"),
])
def test_bad_settings_get_one_plain_sentence(section, words):
    with pytest.raises(TelegramConfigError) as info:
        parse_telegram_config({"telegram": section})
    assert words in str(info.value) and TOKEN not in str(info.value)


def test_unknown_users_and_specialties_are_caught():
    with pytest.raises(TelegramConfigError, match="not in \\[directory\\]"):
        parse_telegram_config(_raw(users={"5": "@who:x"}), known_users={"@gp:x"})
    with pytest.raises(TelegramConfigError, match="not a specialty"):
        parse_telegram_config(_raw(specialties={"cardio": -100}), known_specialties={"dermatology"})


def test_policy_within_the_window_is_kept():
    p = Policy(max_lifetime=timedelta(hours=30), grace_period=timedelta(hours=6))
    assert fit_policy_to_telegram(p) == (p, [])


def test_default_policy_is_shortened_to_fit_48h():
    p = Policy()  # 7 days lifetime, 24 h grace: far past Telegram's window
    fitted, notes = fit_policy_to_telegram(p, "shorten")
    assert fitted.max_lifetime + fitted.grace_period <= DELETE_WINDOW - SAFETY_MARGIN
    assert fitted.reminder_lead < fitted.max_lifetime
    assert notes and all("shortened" in n for n in notes)


def test_refuse_mode_refuses_with_a_reason():
    with pytest.raises(TelegramConfigError, match="48 hours"):
        fit_policy_to_telegram(Policy(), "refuse")
