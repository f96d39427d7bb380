"""The envelope-encrypted vault and crypto-shredding, against a real SQLite file."""
from __future__ import annotations

import os
import sqlite3

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage.db import Database
from storage.keys import Keys
from storage.vault import NONCE_BYTES, ImageNotFound, ImageShredded, Vault, VaultError, WrongKey, _aad

from .conftest import T0

IMAGE = b"\xff\xd8\xff\xe0" + os.urandom(300_000) + b"\xff\xd9"  # spans many overflow pages


def _raw_bytes(db_path) -> bytes:
    data = b""
    for suffix in ("", "-wal", "-journal"):
        p = db_path.with_name(db_path.name + suffix)
        if p.exists():
            data += p.read_bytes()
    return data


async def test_put_get_roundtrip_and_nothing_in_clear(db, db_path, keys):
    vault = Vault(keys)
    async with db.transaction() as tx:
        await vault.put(tx, "img-1", IMAGE, "image/jpeg", T0)
    async with db.read() as tx:
        got = await vault.get(tx, "img-1")
        entry = await vault.entry(tx, "img-1")
    assert got.data == IMAGE and got.content_type == "image/jpeg"
    assert entry.size == len(IMAGE) and entry.shredded_at is None
    await db.checkpoint()
    raw = _raw_bytes(db_path)
    assert IMAGE[1000:1064] not in raw  # the plaintext never touches the disk


async def test_each_image_gets_its_own_data_key_and_nonce(keys):
    vault = Vault(keys)
    a = vault.seal("a", "image/png", b"same bytes")
    b = vault.seal("b", "image/png", b"same bytes")
    assert a.ciphertext != b.ciphertext and a.wrapped_key != b.wrapped_key and a.nonce != b.nonce
    assert len(a.wrapped_key) == NONCE_BYTES + 32 + 16


async def test_ciphertext_is_bound_to_its_image_id(keys):
    vault = Vault(keys)
    sealed = vault.seal("img-1", "image/jpeg", b"pixels")
    with pytest.raises(WrongKey):  # the wrapped key is bound to img-1 too
        vault.unseal("img-2", "image/jpeg", sealed)
    with pytest.raises(VaultError, match="integrity"):
        vault.unseal("img-1", "image/png", sealed)


async def test_wrong_kek_fails_clearly(db, db_path, keys):
    async with db.transaction() as tx:
        await Vault(keys).put(tx, "img-1", IMAGE, "image/jpeg", T0)
    other = Vault(Keys.from_master(os.urandom(32), source="key file other.key"))
    async with db.read() as tx:
        with pytest.raises(WrongKey, match="not the key this database was created with") as err:
            await other.get(tx, "img-1")
    assert "other.key" in str(err.value)
    # and even bypassing the fingerprint check, unwrapping fails
    async with db.read() as tx:
        row = await tx.fetchone("SELECT k.wrapped_key, i.nonce, i.ciphertext FROM vault_items i JOIN vault_keys k USING (image_id)")
    from storage.vault import Sealed

    with pytest.raises(WrongKey, match="wrong key file"):
        other.unseal("img-1", "image/jpeg", Sealed(row["nonce"], row["ciphertext"], row["wrapped_key"]))


async def test_shredded_item_cannot_be_decrypted_even_with_kek_and_raw_bytes(db, db_path, keys):
    vault = Vault(keys)
    async with db.transaction() as tx:
        await vault.put(tx, "img-1", IMAGE, "image/jpeg", T0)
        await vault.put(tx, "img-2", b"another image", "image/png", T0)
    await db.checkpoint()
    async with db.read() as tx:
        row = await tx.fetchone(
            "SELECT k.wrapped_key, i.nonce, i.ciphertext FROM vault_items i JOIN vault_keys k USING (image_id)"
            " WHERE image_id = 'img-1'"
        )
    wrapped, nonce, ciphertext = bytes(row["wrapped_key"]), bytes(row["nonce"]), bytes(row["ciphertext"])
    assert wrapped in _raw_bytes(db_path)

    async with db.transaction() as tx:
        assert await vault.shred(tx, "img-1", T0, "exported") is True
        assert await vault.shred(tx, "img-1", T0, "again") is False  # idempotent, no raise
        assert await vault.shred(tx, "never-stored", T0, "x") is False
    await db.checkpoint()

    async with db.read() as tx:
        with pytest.raises(ImageShredded, match="exported"):
            await vault.get(tx, "img-1")
        assert (await vault.get(tx, "img-2")).data == b"another image"  # neighbours untouched
        with pytest.raises(ImageNotFound):
            await vault.get(tx, "never-stored")
        assert await vault.live_ids(tx) == ["img-2"]
    raw = _raw_bytes(db_path)
    # Neither the wrapped key nor (a sample of) the ciphertext survive in the files,
    # in the main file or the WAL: secure_delete zeroed them and the WAL was truncated.
    assert wrapped not in raw
    assert wrapped[NONCE_BYTES:] not in raw
    assert ciphertext[5000:5064] not in raw
    # Even an attacker with the KEK and the old ciphertext can't get the DEK back:
    kek = AESGCM(keys.kek)
    for start in range(0, len(raw) - 60, 4096):  # any 60-byte window at page starts is not a wrapped key
        with pytest.raises(InvalidTag):
            kek.decrypt(raw[start:start + NONCE_BYTES], raw[start + NONCE_BYTES:start + 60], _aad("referral-bot vault dek v1", "img-1"))


async def test_shred_rolled_back_keeps_the_image(db, keys):
    vault = Vault(keys)
    async with db.transaction() as tx:
        await vault.put(tx, "img-1", b"pixels", "image/png", T0)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await vault.shred(tx, "img-1", T0, "withdrawn")
            raise RuntimeError("crash")
    async with db.read() as tx:
        assert (await vault.get(tx, "img-1")).data == b"pixels"


async def test_a_shredded_key_is_gone_from_a_copy_of_the_file(db, db_path, keys, tmp_path):
    """A copy of the database made after the shred has no way back to the image."""
    vault = Vault(keys)
    async with db.transaction() as tx:
        await vault.put(tx, "img-1", IMAGE, "image/jpeg", T0)
        await vault.shred(tx, "img-1", T0, "retention ended")
    await db.checkpoint()
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(db_path.read_bytes())
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("SELECT COUNT(*) FROM vault_keys").fetchone()[0] == 0
        assert conn.execute("SELECT ciphertext, nonce FROM vault_items").fetchone() == (None, None)
    finally:
        conn.close()


async def test_duplicate_and_empty_images_refused(db, keys):
    vault = Vault(keys)
    async with db.transaction() as tx:
        await vault.put(tx, "img-1", b"x", "image/png", T0)
    with pytest.raises(VaultError, match="already in the vault"):
        async with db.transaction() as tx:
            await vault.put(tx, "img-1", b"y", "image/png", T0)
    with pytest.raises(VaultError, match="empty"):
        async with db.transaction() as tx:
            await vault.put(tx, "img-3", b"", "image/png", T0)


async def test_vault_survives_reopen(db_path, keys):
    db = await Database.open(db_path)
    async with db.transaction() as tx:
        await Vault(keys).put(tx, "img-1", IMAGE, "image/jpeg", T0)
    await db.close()
    db = await Database.open(db_path)
    try:
        async with db.read() as tx:
            assert (await Vault(keys).get(tx, "img-1")).data == IMAGE
    finally:
        await db.close()
