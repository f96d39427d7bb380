"""Helpers for the Matrix flow tests: each step as the GP or the specialist does it,
and the checks on what they see and what is left on the server."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from pathlib import Path

from bot.matrix import nioclient
from bot.matrix.people import Seen
from bot.matrix.photo import make_photo
from bot.matrix.world import World


async def consent(w: World, purposes: str = "care", identifiable: str = "no") -> str:
    ans = await w.gp_says(f"!consent patient=9434765919 by=patient adult=yes specialties=dermatology purposes={purposes} "
                          f"identifiable={identifiable} notes=yes", expect="C-")
    m = re.search(r"C-[A-Z0-9]+", ans.body)
    assert m, ans.body
    return m.group(0)


async def refer(w: World, consent_id: str) -> str:
    ans = await w.gp_says(f"!refer dermatology {consent_id} Pigmented lesion, changing; melanoma?",
                          expect="R-")
    m = re.search(r"R-[A-Z0-9]+", ans.body)
    assert m, ans.body
    return m.group(0)


class Upload:
    def __init__(self, event_id: str, mxc: str, thumb_mxc: str | None, mark: float):
        self.event_id, self.mxc, self.thumb_mxc, self.mark = event_id, mxc, thumb_mxc, mark

    @property
    def mxcs(self) -> list[str]:
        return [m for m in (self.mxc, self.thumb_mxc) if m]


async def send_photo(w: World, data: bytes | None = None, filename: str = "IMG_0001.JPG",
                     mimetype: str = "image/jpeg", thumbnail: bool = True, caption: str | None = None,
                     reply_to: str | None = None) -> Upload:
    mark = time.monotonic()
    data = data if data is not None else make_photo(1024, 768)
    event_id, mxc = await w.gp.send_image(w.dm_room, data, filename, mimetype,
                                          with_thumbnail=thumbnail, caption=caption, reply_to=reply_to)
    own = await w.gp.wait_for(lambda s: s.event_id == event_id, what="its own upload")
    info = own.content.get("info") or {}
    thumb = (info.get("thumbnail_file") or {}).get("url")
    return Upload(event_id, mxc, thumb, mark)


async def bot_reply(w: World, after: float, needle: str = "", timeout: float = 20.0) -> Seen:
    return await w.gp.wait_for(
        lambda s: s.room_id == w.dm_room and s.sender == w.bot_user.user_id and s.ts >= after
        and s.type == "m.room.message" and needle.lower() in s.body.lower(),
        timeout, what=f"a bot reply containing {needle!r}")


async def server_order(person, room_id: str) -> list[str]:
    """The room's latest 100 event ids, oldest first, in the server's order (what a
    client's receive times cannot be relied on for: an event it decrypts late is seen
    late)."""
    resp = await person.client.room_messages(room_id, start=None, limit=100)
    assert hasattr(resp, "chunk"), resp
    return [e.event_id for e in reversed(resp.chunk)]


async def clean_image(w: World, timeout: float = 30.0) -> tuple[Seen, str]:
    img = await w.sp.wait_for(lambda s: s.room_id == w.derm_room and s.msgtype == "m.image"
                              and s.sender == w.bot_user.user_id, timeout,
                              what="the clean image in the specialty room")
    return img, img.content["file"]["url"]


async def upload_redacted(w: World, up: Upload, timeout: float = 20.0) -> None:
    await w.gp.wait_for(lambda s: s.event_id == up.event_id and s.redacted, timeout,
                        what="the original upload redacted")


async def media_gone(w: World, mxcs: list[str], timeout: float = 15.0) -> None:
    """Every mxc answers 404 (deleted from the server, not just redacted)."""
    deadline = time.monotonic() + timeout
    left = list(mxcs)
    while left:
        left = [m for m in left if await nioclient.download_bytes(w.gp.client, m) is not None]
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"media still downloadable: {left}")
        await asyncio.sleep(0.3)


async def nothing_left_on_server(w: World, timeout: float = 15.0) -> None:
    """Every piece of media the bot ever recorded (GP uploads and thumbnails, clean images,
    unused pre-uploads) is deleted in its ledger and answers 404 on the server."""
    state = w.app.transport.state
    deadline = time.monotonic() + timeout
    while state.live_media():
        if time.monotonic() > deadline:
            raise AssertionError(f"media still live in the bot's ledger: {state.live_media()}")
        await asyncio.sleep(0.3)
    recorded = state.all_media()
    assert recorded, "the bot recorded no media at all: the check would prove nothing"
    await media_gone(w, recorded, timeout=max(1.0, deadline - time.monotonic()))


def bot_images_in_room(w: World) -> list[Seen]:
    return [s for s in w.sp.seen if s.room_id == w.derm_room and s.sender == w.bot_user.user_id
            and (s.msgtype == "m.image" or (s.before_redaction or {}).get("msgtype") == "m.image")]


def exif_tags(data: bytes, tmp: Path) -> dict:
    p = tmp / "check.jpg"
    p.write_bytes(data)
    out = subprocess.run(["exiftool", "-j", "-G1", "-a", "-u", str(p)], capture_output=True,
                         text=True, check=True).stdout
    return {k: v for k, v in json.loads(out)[0].items()
            if not k.startswith(("SourceFile", "ExifTool:", "System:", "File:"))}
