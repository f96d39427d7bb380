"""A Telegram world for tests: the fake Bot API, a real SQLite store, the real workflow and
the real Telegram transport, with a clock the test moves (shared by the fake server, so
Telegram's 48-hour delete rule is measured on the same time)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from telegram import Bot

from bot.app import directory_actors
from bot.config import parse_config
from bot.telegram.config import fit_policy_to_telegram, parse_telegram_config
from bot.telegram.transport import TelegramSettings, TelegramTransport
from handlers.workflow import Workflow
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore
from tests.telegram.fakebotapi import FakeBotAPI

GP_TG, DERM_TG, STRANGER_TG = 1001, 2001, 3001
GP, DERM = "@gp:example.org", "@derm:example.org"
DERM_CHAT = -1005550001
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def raw_config(api: FakeBotAPI, allow_images: bool = True, extra_clinicians: dict[int, dict] | None = None,
               **telegram_extra) -> dict:
    """``extra_clinicians``: Telegram id -> a [[directory.clinicians]] entry, added to both."""
    extra = extra_clinicians or {}
    return {
        "policy": {"grace_period_hours": 6, "max_lifetime_hours": 30, "reminder_before_hours": 6},
        "directory": {"clinicians": [
            {"user_id": GP, "role": "referrer", "practice": "Riverside Surgery", "name": "Dr Gee"},
            {"user_id": DERM, "role": "specialist", "specialties": ["dermatology"], "name": "Dr Derm"},
            *extra.values(),
        ]},
        "specialties": {"dermatology": {"room": "!unused:example.org", "title": "Dermatology advice"}},
        "telegram": {
            "token": api.token, "allow_images": allow_images,
            "base_url": api.base_url, "base_file_url": api.base_file_url,
            "users": {str(GP_TG): GP, str(DERM_TG): DERM, **{str(k): v["user_id"] for k, v in extra.items()}},
            "specialties": {"dermatology": DERM_CHAT},
            **telegram_extra,
        },
    }


@dataclass
class World:
    api: FakeBotAPI
    store: SQLiteStore
    workflow: Workflow
    transport: TelegramTransport
    now: list = field(default_factory=lambda: [T0])
    last_referral: str | None = None  # set by tests that open referrals through a helper

    @classmethod
    async def create(cls, api: FakeBotAPI, tmp: Path, allow_images: bool = True, metrics=None,
                     store_opener=None, extra_clinicians: dict[int, dict] | None = None,
                     group_members: tuple[int, ...] = (), **telegram_extra) -> "World":
        """``store_opener(keys)``: an async function opening another store (default: SQLite in tmp).
        The specialty group holds the dermatologist (its creator), the bot and ``group_members``."""
        raw = raw_config(api, allow_images, extra_clinicians, **telegram_extra)
        config = parse_config(raw, None, need_matrix=False)
        tg = parse_telegram_config(raw, known_users=set(config.clinicians),
                                   known_specialties=set(config.specialties))
        policy, _notes = fit_policy_to_telegram(config.policy(), tg.lifetimes)
        keys = Keys.from_master(os.urandom(32), source="test")
        if store_opener is None:
            store = await SQLiteStore.open(tmp / "bot.sqlite3", keys)
        else:
            store = await store_opener(keys)
        workflow = Workflow(store=store, policy=policy, hasher=keys.patient_ref_hasher())
        directory = directory_actors(config)
        api.add_user(GP_TG, "Gee")
        api.add_user(DERM_TG, "Derm")
        api.add_user(STRANGER_TG, "Stranger")
        for tg_id, entry in (extra_clinicians or {}).items():
            api.add_user(tg_id, entry.get("name") or f"user{tg_id}")
        api.add_forum(DERM_CHAT, "Dermatology advice", members=group_members, admins=(DERM_TG,))
        world = cls(api=api, store=store, workflow=workflow, transport=None)  # type: ignore[arg-type]
        api.now = lambda: world.now[0].timestamp()
        bot = Bot(tg.token, base_url=tg.base_url, base_file_url=tg.base_file_url)
        world.transport = TelegramTransport(
            bot, store, workflow,
            TelegramSettings(config=tg, directory=directory,
                             specialty_titles={"dermatology": "Dermatology advice"},
                             rosters={k: config.roster(k) for k in config.specialties}),
            clock=lambda: world.now[0], metrics=metrics)
        await world.transport.start(loops=False)
        return world

    async def close(self) -> None:
        await self.transport.stop()
        await self.store.close()

    # -- driving ----------------------------------------------------------------------
    async def step(self) -> None:
        """Deliver everything users sent, run the workflow and drain the outbox."""
        while await self.transport.poll_once(0):
            pass
        await self.transport.drain()

    async def advance(self, delta: timedelta) -> None:
        self.now[0] += delta
        await self.transport.tick()
        await self.transport.drain()

    async def gp_says(self, text: str) -> str:
        before = len(self.api.bot_texts(GP_TG))
        self.api.user_sends_text(GP_TG, text)
        await self.step()
        new = self.api.bot_texts(GP_TG)[before:]
        return "\n".join(new)

    def gp_texts(self) -> list[str]:
        return self.api.bot_texts(GP_TG)

    async def consent(self, extra: str = "purposes=care identifiable=yes") -> str:
        reply = await self.gp_says(f"!consent patient=9434765919 by=patient adult=yes specialties=dermatology {extra} notes=yes")
        m = re.search(r"\bC-[A-Z0-9]+", reply)
        assert m, reply
        return m.group(0)

    async def refer(self, consent_id: str, question: str = "Itchy ring-shaped rash for 3 weeks, tinea?") -> str:
        reply = await self.gp_says(f"!refer dermatology {consent_id} {question}")
        m = re.search(r"\bR-[A-Z0-9]+", reply)
        assert m, reply
        return m.group(0)

    def topic_of(self, referral_id: str) -> int:
        for tid, name in self.api.chats[DERM_CHAT].topics.items():
            if name.startswith(referral_id):
                return tid
        raise AssertionError(f"no topic for {referral_id}")

    def images_in_group(self) -> list:
        return [m for m in self.api.live_messages(DERM_CHAT, from_bot=True) if "photo" in m.body or "document" in m.body]
