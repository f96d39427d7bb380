"""A complete little world on a local Synapse: the bot, a GP, a specialist (and, on
request, an outsider), an encrypted direct chat and an encrypted specialty room, and
the bot's config file. Shared by ``referral-bot demo``, the Matrix tests and the
benchmark, so all three exercise exactly the same wiring as ``referral-bot run``.
"""
from __future__ import annotations

import asyncio
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.matrix.people import Person
from bot.synapse_local import LocalSynapse, LocalUser


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class World:
    hs: LocalSynapse
    root: Path
    suffix: str
    bot_user: LocalUser
    gp: Person
    sp: Person
    gp_user: LocalUser
    sp_user: LocalUser
    dm_room: str
    derm_room: str
    config_path: Path
    outsider: Person | None = None
    app: Any = None
    policy: dict = field(default_factory=dict)
    extra_people: list[Person] = field(default_factory=list)
    lead: Person | None = None  # the dermatology lead (``with_lead=True``): on the roster, escalations mention them

    # ------------------------------------------------------------ building
    @classmethod
    async def create(cls, hs: LocalSynapse, root: Path, *, suffix: str = "",
                     policy: dict | None = None, specialty_encrypted: bool = True,
                     dm_encrypted: bool = True, with_outsider: bool = False,
                     bot_is_admin: bool = True, decrypt_grace_seconds: float = 20.0,
                     gp_practice: str = "P81001", extra_toml: str = "", with_lead: bool = False) -> "World":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        bot_u = hs.register(f"referral-bot{suffix}", admin=bot_is_admin, displayname="Referral bot")
        gp_u = hs.register(f"dr.gp{suffix}", displayname="Dr Gill Patel (GP)")
        sp_u = hs.register(f"dr.derm{suffix}", displayname="Dr Sam Okafor (Dermatology)")
        gp = await Person.login(hs.url, gp_u.user_id, gp_u.password, root / "people" / "gp", "GP")
        sp = await Person.login(hs.url, sp_u.user_id, sp_u.password, root / "people" / "sp",
                                "Specialist")
        outsider = None
        # the specialist's team creates the specialty room and invites the bot
        derm = await sp.create_room("Dermatology advice", [bot_u.user_id],
                                    encrypted=specialty_encrypted)
        if with_outsider:
            out_u = hs.register(f"visitor{suffix}", displayname="A visitor")
            outsider = await Person.login(hs.url, out_u.user_id, out_u.password,
                                          root / "people" / "outsider", "Outsider")
            await sp.client.room_invite(derm, out_u.user_id)
            await outsider.join(derm)
        lead = None
        if with_lead:  # a second dermatologist, the specialty's lead, in the room and on the roster
            lead_u = hs.register(f"dr.lead{suffix}", displayname="Dr Lee Lead (Dermatology lead)")
            lead = await Person.login(hs.url, lead_u.user_id, lead_u.password, root / "people" / "lead", "Lead")
            await sp.client.room_invite(derm, lead_u.user_id)
            await lead.join(derm)
        # the GP opens an encrypted direct chat with the bot
        dm = await gp.create_room("Referral bot", [bot_u.user_id], encrypted=dm_encrypted,
                                  direct=True)
        policy = dict(policy or {})
        config_path = root / "bot" / "config.toml"
        config_path.parent.mkdir(parents=True, exist_ok=True)
        pw_file = config_path.parent / "matrix-password"
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(bot_u.password)
        from storage.keys import generate_key_file

        key_file = config_path.parent / "referral-bot.key"
        if not key_file.exists():
            generate_key_file(key_file)
        lines = [
            "[matrix]",
            f"homeserver = {_toml_str(hs.url)}",
            f"user_id = {_toml_str(bot_u.user_id)}",
            'password_file = "matrix-password"',
            'store_dir = "matrix-store"',
            f"admin_is_bot = {'true' if bot_is_admin else 'false'}",
            f"decrypt_grace_seconds = {decrypt_grace_seconds}",
            "tick_seconds = 0.5",
            "sync_timeout_ms = 10000",
            f"pickle_key = {_toml_str(secrets.token_hex(16))}",
            "",
            "[storage]",
            'backend = "sqlite"',
            'sqlite_path = "referral-bot.sqlite3"',
            'key_file = "referral-bot.key"',
            "",
            "[policy]",
        ]
        for k, v in policy.items():
            lines.append(f"{k} = {v}")
        lines += [
            "",
            "[directory]",
            f"allowed_servers = [{_toml_str(hs.server_name)}]",
            "[[directory.clinicians]]",
            f"user_id = {_toml_str(gp_u.user_id)}",
            'role = "referrer"',
            f"practice = {_toml_str(gp_practice)}",
            'name = "Dr Gill Patel"',
            "[[directory.clinicians]]",
            f"user_id = {_toml_str(sp_u.user_id)}",
            'role = "specialist"',
            'specialties = ["dermatology"]',
            'name = "Dr Sam Okafor"',
        ]
        if lead is not None:
            lines += [
                "[[directory.clinicians]]",
                f"user_id = {_toml_str(lead.user_id)}",
                'role = "specialist"',
                'specialties = ["dermatology"]',
                'name = "Dr Lee Lead"',
            ]
        lines += [
            "",
            "[specialties.dermatology]",
            f"room = {_toml_str(derm)}",
            'title = "Dermatology advice"',
            'aliases = ["derm", "skin"]',
        ]
        if lead is not None:
            lines.append(f"lead = {_toml_str(lead.user_id)}")
        config_path.write_text("\n".join(lines) + "\n" + extra_toml)  # e.g. [[filing.sink]] (the demo)
        w = cls(hs=hs, root=root, suffix=suffix, bot_user=bot_u, gp=gp, sp=sp, gp_user=gp_u,
                sp_user=sp_u, dm_room=dm, derm_room=derm, config_path=config_path,
                outsider=outsider, policy=policy, lead=lead)
        for p in w.people:
            p.start()
        return w

    @property
    def people(self) -> list[Person]:
        return [p for p in (self.gp, self.sp, self.outsider, self.lead, *self.extra_people) if p is not None]

    # ------------------------------------------------------------ the bot
    async def start_bot(self, clock=None) -> Any:
        from bot.app import BotApp
        from bot.config import load_config

        cfg = load_config(self.config_path)
        self.app = BotApp(cfg, **({"clock": clock} if clock else {}))
        await self.app.start()
        return self.app

    async def stop_bot(self) -> None:
        if self.app is not None:
            await self.app.stop()
            self.app = None

    async def wait_bot_joined(self, timeout: float = 20.0) -> None:
        for person, room in ((self.gp, self.dm_room), (self.sp, self.derm_room)):
            await person.wait_for(lambda s, r=room: s.room_id == r and s.type == "m.room.member"
                                  and s.sender == self.bot_user.user_id
                                  and s.content.get("membership") == "join",
                                  timeout, what="the bot joining")

    async def close(self) -> None:
        await self.stop_bot()
        for p in self.people:
            await p.stop()

    # ------------------------------------------------------------ talking
    async def gp_says(self, text: str, expect: str | None = None, timeout: float = 20.0):
        """The GP writes in the direct chat; wait for the bot's answer (containing ``expect``)."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        import time as _t

        mark = _t.monotonic()
        await self.gp.say(self.dm_room, text)
        return await self.gp.wait_for(
            lambda s: s.room_id == self.dm_room and s.sender == self.bot_user.user_id
            and s.ts >= mark and s.type == "m.room.message"
            and (expect is None or expect.lower() in s.body.lower()),
            timeout, what=f"the bot answering {text.split()[0]!r}" + (f" with {expect!r}" if expect else ""))

    def bot_said(self, person: Person, room_id: str) -> list:
        return [s for s in person.messages(room_id, sender=self.bot_user.user_id)]
