"""Scripted people (a GP, a specialist, an outsider) for the demo, tests and benchmark.

Each is a real matrix-nio client with its own E2EE device and store that syncs in
the background and remembers every timeline event it saw (decrypted where it has
the keys), so a script can say "send this" and "wait until the bot answers".
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from nio import (AsyncClient, JoinResponse, MegolmEvent, RoomCreateResponse, RoomPreset,
                 RoomVisibility)

from bot.matrix import nioclient


@dataclass
class Seen:
    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict
    ts: float  # local monotonic time it was seen
    redacted: bool = False
    encrypted: bool = False
    raw: Any = field(default=None, repr=False)  # the MegolmEvent while undecryptable
    before_redaction: dict | None = field(default=None, repr=False)  # what it said before

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))

    @property
    def msgtype(self) -> str | None:
        return self.content.get("msgtype")

    @property
    def thread_root(self) -> str | None:
        rel = self.content.get("m.relates_to") or {}
        return rel.get("event_id") if rel.get("rel_type") == "m.thread" else None


@dataclass
class Person:
    client: AsyncClient
    name: str
    seen: list[Seen] = field(default_factory=list)
    _task: asyncio.Task | None = None
    _cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    auto_join: bool = True
    redacted_ids: set[str] = field(default_factory=set)

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @classmethod
    async def login(cls, homeserver: str, user_id: str, password: str, store_dir: Path,
                    name: str, pickle_key: str = "person-pickle-key") -> "Person":
        client = await nioclient.login_persistent(homeserver, user_id, store_dir, pickle_key,
                                                  password=password, device_name=name)
        person = cls(client=client, name=name)
        await nioclient.sync_once(client, full_state=True)
        return person

    # ----------------------------------------------------------------- syncing
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"sync-{self.name}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        await self.client.close()

    async def _loop(self) -> None:
        while True:
            try:
                resp = await nioclient.sync_once(self.client, timeout_ms=5000)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)
                continue
            await self._absorb(resp)

    async def _absorb(self, resp) -> None:
        for room_id in list(resp.rooms.invite):
            if self.auto_join:
                await self.client.join(room_id)
        for room_id, info in resp.rooms.join.items():
            for ev in info.timeline.events:
                self._record(room_id, ev)
        # retry events we could not decrypt yet (keys may have arrived since)
        for s in self.seen:
            if s.type == "m.room.encrypted" and s.encrypted and s.raw is not None:
                try:
                    dec = self.client.decrypt_event(s.raw)
                except Exception:
                    continue
                if not isinstance(dec, MegolmEvent) and hasattr(dec, "source"):
                    src = dec.source
                    s.type = src.get("type", s.type)
                    s.content = src.get("content", {})
                    s.raw = None
        async with self._cond:
            self._cond.notify_all()

    def _record(self, room_id: str, ev: Any) -> None:
        src = getattr(ev, "source", {}) or {}
        etype = src.get("type", "")
        content = src.get("content", {}) or {}
        if etype == "m.room.redaction":
            target = src.get("redacts") or content.get("redacts")
            if target:
                self.redacted_ids.add(target)
                for s in self.seen:
                    if s.event_id == target and not s.redacted:
                        s.redacted = True
                        s.before_redaction, s.content = s.content, {}
        encrypted = isinstance(ev, MegolmEvent) or etype == "m.room.encrypted"
        s = Seen(room_id, src.get("event_id", getattr(ev, "event_id", "")),
                 src.get("sender", ""), etype, content, time.monotonic(),
                 redacted=bool((src.get("unsigned") or {}).get("redacted_because")),
                 encrypted=encrypted or getattr(ev, "decrypted", False))
        s.raw = ev if isinstance(ev, MegolmEvent) else None
        if isinstance(ev, MegolmEvent):
            s.encrypted = True
        self.seen.append(s)

    async def wait_for(self, pred: Callable[[Seen], bool], timeout: float = 20.0,
                       what: str = "an event") -> Seen:
        deadline = time.monotonic() + timeout
        async with self._cond:
            while True:
                for s in self.seen:
                    if pred(s):
                        return s
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name} did not see {what} within {timeout:.0f} s")
                try:
                    await asyncio.wait_for(self._cond.wait(), left)
                except asyncio.TimeoutError:
                    pass

    async def wait_text(self, room_id: str, needle: str, sender: str | None = None,
                        timeout: float = 20.0, after: float = 0.0) -> Seen:
        needle_l = needle.lower()
        return await self.wait_for(
            lambda s: s.room_id == room_id and s.ts >= after and needle_l in s.body.lower()
            and (sender is None or s.sender == sender),
            timeout, what=f"a message containing {needle!r}")

    def messages(self, room_id: str, sender: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.room_id == room_id and s.type == "m.room.message"
                and (sender is None or s.sender == sender)]

    # ----------------------------------------------------------------- acting
    async def create_room(self, name: str, invite: list[str], encrypted: bool = True,
                          direct: bool = False) -> str:
        initial_state = []
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        resp = await self.client.room_create(
            visibility=RoomVisibility.private, name=name, invite=invite, is_direct=direct,
            initial_state=initial_state,
            # a direct chat as Element makes it: both sides get the same power, so the
            # bot may redact the GP's original upload
            preset=RoomPreset.trusted_private_chat if direct else RoomPreset.private_chat)
        if not isinstance(resp, RoomCreateResponse):
            raise nioclient.MatrixCallError("create room", nioclient.err_code(resp))
        await nioclient.sync_once(self.client)
        return resp.room_id

    async def join(self, room_id: str) -> None:
        resp = await self.client.join(room_id)
        if not isinstance(resp, JoinResponse):
            raise nioclient.MatrixCallError("join", nioclient.err_code(resp))

    async def say(self, room_id: str, text: str, thread_root: str | None = None,
                  reply_to: str | None = None) -> str:
        """Send *text* (in a thread, or as a Matrix reply to ``reply_to``, as Element does)."""
        content = nioclient.text_content(text, thread_root)
        if reply_to:
            rel = content.setdefault("m.relates_to", {})
            rel["m.in_reply_to"] = {"event_id": reply_to}
            rel.pop("is_falling_back", None)
        return await nioclient.send(self.client, room_id, content)

    async def send_image(self, room_id: str, data: bytes, filename: str,
                         mimetype: str = "image/jpeg", with_thumbnail: bool = False,
                         caption: str | None = None, reply_to: str | None = None) -> tuple[str, str]:
        """Send an encrypted m.image as a phone client would; returns (event id, mxc).
        ``caption``: the text typed with it (``body``, with ``filename`` kept apart, as
        the spec's media captions do); ``reply_to``: sent as a reply to that event."""
        up = await nioclient.upload_encrypted(self.client, data, filename, mimetype)
        content = nioclient.image_content(up, filename, len(data))
        if caption:
            content["body"] = caption
        if reply_to:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        extra = []
        if with_thumbnail:  # phones attach a thumbnail; the bot must never reuse it
            thumb = await nioclient.upload_encrypted(self.client, data[:2048], "thumb", mimetype)
            content["info"]["thumbnail_file"] = thumb.file_info
            content["info"]["thumbnail_info"] = {"mimetype": mimetype, "size": 2048}
            content["info"]["xyz.amorgan.blurhash"] = "LKO2?U%2Tw=w]~RBVZRi};RPxuwH"
            extra.append(thumb.mxc)
        event_id = await nioclient.send(self.client, room_id, content)
        return event_id, up.mxc

    async def download_image(self, seen: Seen) -> bytes | None:
        file_info = seen.content.get("file")
        if not file_info:
            return None
        return await nioclient.download_decrypt(self.client, file_info)
