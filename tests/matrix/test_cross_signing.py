"""The bot's device is cross-signed by its owner, as another client reads it back.

The GP's client asks the homeserver for the bot's keys (``/keys/query``) and checks the
chain Element checks: the bot's device signed by the account's self-signing key, that key
signed by the master key. Signatures are verified with matrix.org's signedjson (not the
bot's own code), and the signed device must be the one the bot's Olm account holds.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import subprocess
import sys

import aiohttp
import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import verify_signed_json

from bot.matrix import crosssign
from bot.matrix.people import Person

pytestmark = pytest.mark.synapse


def _verify_key(public_b64: str):
    raw = base64.b64decode(public_b64 + "=" * (-len(public_b64) % 4))
    return decode_verify_key_bytes(f"ed25519:{public_b64}", raw)


async def keys_of(asker, user_id: str) -> dict:
    """/keys/query as ``asker`` (a nio client) for ``user_id``."""
    async with aiohttp.ClientSession() as sess:
        async with sess.post(asker.homeserver + "/_matrix/client/v3/keys/query",
                             json={"device_keys": {user_id: []}},
                             headers={"Authorization": f"Bearer {asker.access_token}"}) as r:
            assert r.status == 200
            return await r.json()


def only_key(key_object: dict) -> str:
    (pub,) = key_object["keys"].values()
    return pub


def assert_cross_signed(found: dict, user_id: str, device_id: str, device_ed25519: str) -> str:
    """The device is signed by the self-signing key, which is signed by the master key
    (every signature verified); returns the master public key."""
    master = found["master_keys"][user_id]
    ssk = found["self_signing_keys"][user_id]
    assert master["usage"] == ["master"] and master["user_id"] == user_id
    assert ssk["usage"] == ["self_signing"] and ssk["user_id"] == user_id
    master_pub, ssk_pub = only_key(master), only_key(ssk)
    verify_signed_json(ssk, user_id, _verify_key(master_pub))
    device = found["device_keys"][user_id][device_id]
    assert device["keys"][f"ed25519:{device_id}"] == device_ed25519
    verify_signed_json(device, user_id, _verify_key(ssk_pub))
    # and the device's own signature, as every client checks it
    verify_signed_json(device, user_id, decode_verify_key_bytes(
        f"ed25519:{device_id}", base64.b64decode(device_ed25519 + "=" * (-len(device_ed25519) % 4))))
    return master_pub


async def test_the_bot_device_is_cross_signed_by_its_owner(make_world):
    w = await make_world()
    bot = w.app.client
    assert w.app.cross_signing.ready and w.app.cross_signing.uploaded_keys
    identity = bot.olm.account.identity_keys
    found = await keys_of(w.gp.client, bot.user_id)
    master_pub = assert_cross_signed(found, bot.user_id, bot.device_id, identity["ed25519"])
    own = await keys_of(bot, bot.user_id)
    # the master key is vouched for by the bot's device too (Synapse shows a device's
    # signature on its own master key to the owner only)
    verify_signed_json(own["master_keys"][bot.user_id], bot.user_id, decode_verify_key_bytes(
        f"ed25519:{bot.device_id}",
        base64.b64decode(identity["ed25519"] + "=" * (-len(identity["ed25519"]) % 4))))
    # the user-signing key is only shown to its owner; it is signed by the same master key
    usk = own["user_signing_keys"][bot.user_id]
    assert usk["usage"] == ["user_signing"]
    verify_signed_json(usk, bot.user_id, _verify_key(master_pub))
    # the private keys are in the bot's store, sealed under the deployment key: the
    # seeds there are the ones behind the published keys
    from storage.keys import load_keys

    sealed = w.app.state.get(crosssign.STATE_KEY)
    assert sealed and master_pub not in sealed
    keys = load_keys(w.config_path.parent / "referral-bot.key")
    held = crosssign.CrossSigningKeys.unseal(sealed, keys.cross_signing_key, bot.user_id)
    assert held.master_public == master_pub
    assert held.self_signing_public == only_key(found["self_signing_keys"][bot.user_id])
    assert held.user_signing_public == only_key(usk)


async def test_a_restart_keeps_the_keys_and_signs_nothing_again(make_world):
    w = await make_world()
    before = await keys_of(w.gp.client, w.bot_user.user_id)
    await w.stop_bot()
    await w.start_bot()
    status = w.app.cross_signing
    assert status.ready and not status.uploaded_keys and not status.signed_device
    after = await keys_of(w.gp.client, w.bot_user.user_id)
    uid = w.bot_user.user_id
    assert after["master_keys"][uid] == before["master_keys"][uid]
    assert after["self_signing_keys"][uid] == before["self_signing_keys"][uid]
    assert_cross_signed(after, uid, w.app.client.device_id,
                        w.app.client.olm.account.identity_keys["ed25519"])


async def test_keys_the_bot_does_not_hold_get_an_operator_message_then_a_reset(make_world, caplog):
    caplog.set_level(logging.INFO, logger="referral_bot")
    w = await make_world(start=False)
    uid = w.bot_user.user_id
    # someone signs in as the bot elsewhere and sets up cross-signing there
    other = await Person.login(w.hs.url, uid, w.bot_user.password, w.root / "elsewhere", "Elsewhere")
    foreign = crosssign.CrossSigningKeys.generate()
    async with aiohttp.ClientSession() as sess:
        async with sess.post(other.client.homeserver
                             + "/_matrix/client/v3/keys/device_signing/upload",
                             json=foreign.upload_body(uid),
                             headers={"Authorization": f"Bearer {other.client.access_token}"}) as r:
            assert r.status == 200, await r.text()
    await other.client.close()

    await w.start_bot()             # runs, and says what is wrong and what to do
    await w.wait_bot_joined()
    status = w.app.cross_signing
    assert status.state == "foreign" and status.master_key == foreign.master_public
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("does not hold" in m and "referral-bot cross-signing" in m and "--reset" in m
               for m in logged), logged
    assert w.app.state.get(crosssign.STATE_KEY) is None     # nothing made, nothing uploaded
    found = await keys_of(w.gp.client, uid)
    assert only_key(found["master_keys"][uid]) == foreign.master_public
    device = found["device_keys"][uid][w.app.client.device_id]
    assert not crosssign.signature_valid(device, uid, foreign.self_signing_public)
    # the bot still works
    await w.gp_says("!help", expect="consent")

    # the operator resets with the CLI: user-interactive auth with the bot's password
    device_id = w.app.client.device_id
    ed25519 = w.app.client.olm.account.identity_keys["ed25519"]
    await w.stop_bot()
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "bot.cli", "cross-signing", "--config",
                         str(w.config_path), "--reset"], capture_output=True, text=True,
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "new keys uploaded" in proc.stdout and "device signed" in proc.stdout
    found = await keys_of(w.gp.client, uid)
    master_pub = assert_cross_signed(found, uid, device_id, ed25519)
    assert master_pub != foreign.master_public
    # and the next start finds the keys it holds: nothing to do
    await w.start_bot()
    assert w.app.cross_signing.ready and not w.app.cross_signing.uploaded_keys
    assert w.app.cross_signing.master_key == master_pub
