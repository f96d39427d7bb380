"""Issue 9, finding 14 (first bullet): nio's pickle key has its own derivation label, and
an existing crypto store, pickled under the old key (derived from the records key), is
moved onto it once at start without losing the bot's device or its sessions.

Real nio store classes and real vodozemac accounts and sessions; no homeserver needed.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from nio.crypto.sessions import InboundGroupSession, OlmAccount, OutboundGroupSession, OutboundSession
from nio.store import MatrixStore

from bot.matrix.pickle_key import (
    PickleKeyProblem,
    derived_pickle_key,
    ensure_pickle_key,
    legacy_pickle_key,
)
from storage.keys import Keys

USER, DEVICE, ROOM = "@bot:example.org", "BOTDEVICE", "!room:example.org"


def _old_store(store_dir: Path, key: str) -> dict:
    """A crypto store as the bot kept it: its account, an Olm session with a GP's device,
    and the Megolm session it decrypts a room with."""
    store = MatrixStore(USER, DEVICE, str(store_dir), pickle_key=key)
    account, gp = OlmAccount(), OlmAccount()
    gp.generate_one_time_keys(1)
    otk = next(iter(gp.one_time_keys["curve25519"].values()))
    olm = OutboundSession(account, gp.identity_keys["curve25519"], otk)
    outbound = OutboundGroupSession()
    megolm = InboundGroupSession(outbound.session_key, gp.identity_keys["ed25519"], gp.identity_keys["curve25519"], ROOM)
    store.save_account(account)
    store.save_session(gp.identity_keys["curve25519"], olm)
    store.save_inbound_group_session(megolm)
    store.database.close()
    return {"identity": account.identity_keys, "olm": olm.id, "megolm": megolm.id}


def _load(store_dir: Path, key: str) -> dict:
    store = MatrixStore(USER, DEVICE, str(store_dir), pickle_key=key)
    try:
        account = store.load_account()
        return {"identity": account.identity_keys, "olm": next(iter(store.load_sessions())).id,
                "megolm": next(iter(store.load_inbound_group_sessions())).id}
    finally:
        store.database.close()


def test_the_pickle_key_has_its_own_label():
    keys = Keys.from_master(os.urandom(32))
    new, old = derived_pickle_key(keys), legacy_pickle_key(keys)
    assert new != old and len(new) == 64
    assert keys.matrix_pickle_key not in (keys.records_key, keys.kek, keys.audit_key, keys.seal_key)
    # the old derivation needed only the records key; the new one cannot be made from it
    other = Keys.from_master(os.urandom(32))
    assert legacy_pickle_key(type("K", (), {"records_key": keys.records_key})()) == old
    assert derived_pickle_key(other) != new


def test_an_existing_store_is_rekeyed_once_and_keeps_its_device_and_sessions(tmp_path):
    keys = Keys.from_master(os.urandom(32))
    new, old = derived_pickle_key(keys), legacy_pickle_key(keys)
    before = _old_store(tmp_path, old)

    assert ensure_pickle_key(tmp_path, USER, DEVICE, new, [old]) == "rekeyed"
    assert _load(tmp_path, new) == before  # same device identity, same Olm and Megolm sessions
    with pytest.raises(Exception):
        _load(tmp_path, old)  # nothing readable under the records-key derivation any more
    assert ensure_pickle_key(tmp_path, USER, DEVICE, new, [old]) == "current"
    assert ensure_pickle_key(tmp_path / "fresh", USER, DEVICE, new, [old]) == "new"


def test_a_store_no_key_opens_is_a_clear_refusal_and_is_left_alone(tmp_path):
    _old_store(tmp_path, "a pickle key that was set in the config once")
    keys = Keys.from_master(os.urandom(32))
    db = tmp_path / f"{USER}_{DEVICE}.db"
    before = db.read_bytes()
    with pytest.raises(PickleKeyProblem, match="pickle_key"):
        ensure_pickle_key(tmp_path, USER, DEVICE, derived_pickle_key(keys), [legacy_pickle_key(keys)])
    assert db.read_bytes() == before


def test_the_bot_start_moves_an_old_store_before_nio_opens_it(tmp_path):
    """bot.app.prepare_crypto_store, as BotApp.start calls it, with the device id from the
    saved login; a configured pickle_key is left as it is."""
    from bot.app import prepare_crypto_store
    from bot.config import parse_config
    from bot.matrix.nioclient import save_credentials

    keys = Keys.from_master(os.urandom(32))
    raw = {"matrix": {"homeserver": "http://127.0.0.1:9", "user_id": USER, "password": "x",
                      "store_dir": str(tmp_path / "store")},
           "directory": {"allowed_servers": ["example.org"]}}
    config = parse_config(raw)
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    save_credentials(store_dir, {"homeserver": "http://127.0.0.1:9", "user_id": USER, "device_id": DEVICE,
                                 "access_token": "t"})
    before = _old_store(store_dir, legacy_pickle_key(keys))
    key = prepare_crypto_store(config, keys)
    assert key == derived_pickle_key(keys) and _load(store_dir, key) == before
    configured = parse_config({**raw, "matrix": {**raw["matrix"], "pickle_key": "set-by-the-operator"}})
    assert prepare_crypto_store(configured, keys) == "set-by-the-operator"
