"""The pickle key of matrix-nio's crypto store, and moving an existing store onto it.

nio encrypts the bot's Olm account and its Olm and Megolm sessions in its SQLite store
("pickles") under a pickle key. Until issue 9 the bot derived that key from the records
key (``HMAC(records_key, "referral-bot matrix pickle key v1")``), so whoever held the key
of the consent and referral records could also open the bot's Matrix identity. It now has
its own HKDF label (``storage.keys.LABEL_MATRIX_PICKLE``), like every other key.

An existing deployment must keep reading its store (a new Olm account would be a new
device: every room would need new keys, and the bot could not decrypt the messages sent
to it meanwhile). So at start, before nio opens the store, :func:`ensure_pickle_key`
tries the new key; if the store only opens with the old one, it re-pickles the account
and every session under the new key in one SQLite transaction (all or nothing: a crash
leaves the old pickles, and the next start tries again). A ``pickle_key`` set in the
config is used as given and never changed.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("referral_bot.matrix")

LEGACY_LABEL = b"referral-bot matrix pickle key v1"


class PickleKeyProblem(Exception):
    """The crypto store opens with none of the keys: the message says what to do."""


def derived_pickle_key(keys: Any) -> str:
    """The pickle key for nio, from the deployment key under its own label."""
    return keys.matrix_pickle_key.hex()


def legacy_pickle_key(keys: Any) -> str:
    """The key used before issue 9 (derived from the records key): only to re-key."""
    return hmac.new(keys.records_key, LEGACY_LABEL, hashlib.sha256).hexdigest()


def _store(store_dir: Path, user_id: str, device_id: str, pickle_key: str):
    from nio.store import MatrixStore

    return MatrixStore(user_id, device_id, str(store_dir), pickle_key=pickle_key)


def _opens(store_dir: Path, user_id: str, device_id: str, pickle_key: str) -> bool:
    store = _store(store_dir, user_id, device_id, pickle_key)
    try:
        store.load_account()
        return True
    except Exception:  # vodozemac's pickle errors: wrong key (or a damaged pickle)
        return False
    finally:
        store.database.close()


def ensure_pickle_key(store_dir: str | Path, user_id: str, device_id: str | None, pickle_key: str,
                      previous: list[str]) -> str:
    """Make the crypto store of ``user_id``/``device_id`` readable with ``pickle_key``.

    Returns ``"new"`` (no store yet), ``"current"`` (it already uses the key) or
    ``"rekeyed"`` (it used one of ``previous`` and now uses ``pickle_key``).
    """
    store_dir = Path(store_dir)
    if not device_id or not (store_dir / f"{user_id}_{device_id}.db").exists():
        return "new"
    if _opens(store_dir, user_id, device_id, pickle_key):
        return "current"
    for old in previous:
        if _opens(store_dir, user_id, device_id, old):
            _rekey(store_dir, user_id, device_id, old, pickle_key)
            log.warning("the Matrix crypto store now uses its own pickle key (re-pickled once, issue 9)")
            return "rekeyed"
    raise PickleKeyProblem(
        f"the Matrix crypto store in {store_dir} does not open with the key derived from the deployment key; "
        "if it was made with [matrix] pickle_key set, set it again"
    )


def _rekey(store_dir: Path, user_id: str, device_id: str, old: str, new: str) -> None:
    store = _store(store_dir, user_id, device_id, old)
    try:
        account = store.load_account()
        sessions = store.load_sessions()
        groups = store.load_inbound_group_sessions()
        store.pickle_key = new
        with store.database.atomic():  # the saves below nest in this one transaction
            store.save_account(account)
            for curve_key, session_list in sessions.items():
                for session in session_list:
                    store.save_session(curve_key, session)
            for session in groups:
                store.save_inbound_group_session(session)
    finally:
        store.database.close()
