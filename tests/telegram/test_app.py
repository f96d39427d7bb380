"""The Telegram deployment as an operator runs it: a config file, `referral-bot telegram`,
the transport's own loops, the metrics endpoint; plus the data-free notifier for Matrix."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from telegram import Bot

from bot.config import ConfigError, load_config
from bot.telegram.app import TelegramApp
from bot.telegram.config import parse_telegram_config
from bot.telegram.notifier import TelegramNotifier
from handlers.actions import PostThreadRoot
from handlers.events import ThreadRootPosted
from storage.keys import generate_key_file
from tests.conftest import REPO_ROOT
from tests.telegram.world import DERM, DERM_CHAT, GP, GP_TG, T0


def _write_config(tmp: Path, api, extra: str = "") -> Path:
    key = generate_key_file(tmp / "bot.key")
    token = tmp / "tg.token"
    token.write_text(api.token + "\n")
    cfg = tmp / "telegram.toml"
    cfg.write_text(f"""
[storage]
backend = "sqlite"
sqlite_path = "{tmp / 'bot.sqlite3'}"
key_file = "{key}"

[policy]
grace_period_hours = 24
max_lifetime_days = 7

[directory]
[[directory.clinicians]]
user_id = "{GP}"
practice = "Riverside Surgery"
[[directory.clinicians]]
user_id = "{DERM}"
role = "specialist"
specialties = ["dermatology"]

[specialties.dermatology]
room = "!unused:example.org"
title = "Dermatology advice"

[metrics]
host = "127.0.0.1"
port = 0

[telegram]
token_file = "{token}"
allow_images = true
base_url = "{api.base_url}"
base_file_url = "{api.base_file_url}"
poll_timeout_seconds = 1
tick_seconds = 0.2
[telegram.users]
"{GP_TG}" = "{GP}"
[telegram.specialties]
dermatology = {DERM_CHAT}
{extra}
""")
    return cfg


async def test_app_runs_from_a_config_file_with_its_loops_and_metrics(fake_api, tmp_path):
    fake_api.add_user(GP_TG, "Gee")
    app = TelegramApp(load_config(_write_config(tmp_path, fake_api), need_matrix=False))
    # 7 days + 24 h would outlive Telegram's delete window: shortened, and said so
    assert app.policy.max_lifetime + app.policy.grace_period <= __import__("datetime").timedelta(hours=46)
    assert app.policy_notes
    await app.start()
    try:
        fake_api.user_sends_text(GP_TG, "!help")
        for _ in range(100):
            if fake_api.bot_texts(GP_TG):
                break
            await asyncio.sleep(0.05)
        assert "Referral bot" in fake_api.bot_texts(GP_TG)[0]
        port = app.metrics_server.port
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert "referral_bot_referrals_open 0.0" in await resp.text()
    finally:
        await app.stop()


def test_app_refuses_to_share_a_store_with_matrix(fake_api, tmp_path):
    cfg = _write_config(tmp_path, fake_api, extra="")
    text = cfg.read_text().replace("[storage]", "[matrix]\nhomeserver = \"http://x\"\nuser_id = \"@b:x\"\n"
                                                 "password = \"p\"\n\n[storage]", 1)
    cfg.write_text(text)
    with pytest.raises(ConfigError, match="own config file"):
        TelegramApp(load_config(cfg, need_matrix=False))


def test_cli_gives_one_plain_line_for_a_bad_config(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[telegram]\nallow_images = true\n")
    out = subprocess.run([sys.executable, "-m", "bot.cli", "telegram", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert out.returncode == 2
    assert "needs the bot token" in out.stderr and "Traceback" not in out.stderr


async def test_notifier_tells_telegram_without_patient_data(fake_api):
    fake_api.add_forum(DERM_CHAT, "Dermatology advice")
    cfg = parse_telegram_config({"telegram": {"token": fake_api.token, "specialties": {"dermatology": DERM_CHAT}}})
    async with Bot(cfg.token, base_url=fake_api.base_url, base_file_url=fake_api.base_file_url) as bot:
        notifier = TelegramNotifier(bot, cfg, {"dermatology": "Dermatology advice"})
        question = "Spreading ring-shaped rash on the forearm, tinea?"
        action = PostThreadRoot(key="$e/0", referral_id="R-7K3QX9", specialty="dermatology",
                                text=f"Referral R-7K3QX9 from a GP at Riverside Surgery.\n{question}")
        notifier.on_action_done(action, ThreadRootPosted(event_id="done:$e/0", at=T0, referral_id="R-7K3QX9",
                                                         room_event_id="$root"))
        notifier.on_action_done(action, None)  # a failed post: no notification
        await notifier.drain()
    (text,) = fake_api.bot_texts(DERM_CHAT)
    assert "R-7K3QX9" in text and "Dermatology advice" in text
    assert question not in text and "Riverside" not in text
    assert notifier.sent == 1
