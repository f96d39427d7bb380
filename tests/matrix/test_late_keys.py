"""Late room keys: a message the bot cannot decrypt yet is kept and handled when the
Megolm key arrives; if it never does, the sender is asked to send it again."""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.matrix import flow

pytestmark = pytest.mark.synapse


def _withhold_key_from_bot(w):
    """Start a new Megolm session in the direct chat that the bot's device is left out
    of; return the devices and the session key as it was before any message (index 0)."""
    gp = w.gp.client
    devices = list(gp.device_store.active_user_devices(w.bot_user.user_id))
    assert devices, "the GP should know the bot's device by now"
    gp.invalidate_outbound_session(w.dm_room)
    for d in devices:
        gp.blacklist_device(d)
    gp.olm.create_outbound_group_session(w.dm_room)
    session = gp.olm.outbound_group_sessions[w.dm_room]
    return devices, {"algorithm": "m.megolm.v1.aes-sha2", "room_id": w.dm_room,
                     "session_id": session.id, "session_key": session.session_key}


async def _deliver_key_late(w, devices, key_content) -> None:
    """What a slow network does: the m.room_key to-device message arrives after the event."""
    from nio.event_builders import ToDeviceMessage

    gp = w.gp.client
    missing = gp.get_missing_sessions(w.dm_room)
    if missing:
        await gp.keys_claim(missing)
    for d in devices:
        gp.unblacklist_device(d)
        olm_session = gp.olm.session_store.get(d.curve25519)
        assert olm_session is not None
        payload = gp.olm._olm_encrypt(olm_session, d, "m.room_key", key_content)
        await gp.to_device(ToDeviceMessage("m.room.encrypted", w.bot_user.user_id, d.id, payload))


async def test_message_handled_when_its_key_arrives_late(make_world):
    w = await make_world(decrypt_grace_seconds=60)
    await flow.consent(w)
    devices, key = _withhold_key_from_bot(w)
    mark = time.monotonic()
    await w.gp.say(w.dm_room, "!consent patient=1234567881 by=patient adult=yes purposes=care identifiable=no notes=yes "
                      "specialties=dermatology")
    await asyncio.sleep(3)
    assert not [s for s in w.gp.messages(w.dm_room, w.bot_user.user_id) if s.ts >= mark], \
        "the bot should not have been able to read it yet"
    await _deliver_key_late(w, devices, key)
    reply = await flow.bot_reply(w, mark, "C-", timeout=20)
    assert "recorded" in reply.body.lower()


async def test_sender_asked_to_resend_when_the_key_never_comes(make_world):
    w = await make_world(decrypt_grace_seconds=3)
    await flow.consent(w)
    _withhold_key_from_bot(w)
    mark = time.monotonic()
    await w.gp.say(w.dm_room, "!help")
    reply = await flow.bot_reply(w, mark, "could not decrypt", timeout=20)
    assert "send it again" in reply.body.lower()
