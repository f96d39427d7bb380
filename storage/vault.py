"""The encrypted image vault (envelope encryption, crypto-shredding).

Per image:

* a fresh random 256-bit data key (DEK);
* the image is encrypted with AES-256-GCM under the DEK, 96-bit random nonce,
  associated data = ``("referral-bot vault image v1", image_id, content_type)``
  so a ciphertext moved to another image's row (or relabelled) fails to decrypt;
* the DEK is wrapped with AES-256-GCM under the KEK (derived from the master
  secret kept outside the database, see :mod:`storage.keys`), associated data
  = ``("referral-bot vault dek v1", image_id)``; stored as nonce || ciphertext+tag.

Ciphertext and wrapped key both live in SQLite (one file to back up, and the
writes share the transition's transaction). The wrapped key sits in its own
small table: :meth:`Vault.shred` overwrites it with zeros, deletes it
(``secure_delete=ON`` zeroes the freed cell) and drops the ciphertext too.
Without the DEK the ciphertext is just noise, even to someone holding the KEK
and a copy of the database file made after the shred.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from storage import queries as Q
from storage.db import StorageError, Tx, from_text, to_text
from storage.keys import Keys

NONCE_BYTES = 12
DEK_BYTES = 32
MAX_IMAGE_BYTES = 64 * 1024 * 1024
_FINGERPRINT = "kek_fingerprint"


class VaultError(StorageError):
    pass


class WrongKey(VaultError):
    pass


class ImageShredded(VaultError):
    pass


class ImageNotFound(VaultError):
    pass


@dataclass(frozen=True)
class Sealed:
    nonce: bytes
    ciphertext: bytes
    wrapped_key: bytes


@dataclass(frozen=True)
class VaultImage:
    image_id: str
    content_type: str
    data: bytes
    created_at: datetime


@dataclass(frozen=True)
class VaultEntry:
    """What is known about an item without decrypting it."""

    image_id: str
    content_type: str
    size: int
    created_at: datetime
    shredded_at: datetime | None
    shred_reason: str | None


def _aad(*parts: str) -> bytes:
    return json.dumps(parts, separators=(",", ":"), ensure_ascii=True).encode("ascii")


class Vault:
    def __init__(self, keys: Keys):
        self._keys = keys
        self._kek = AESGCM(keys.kek)

    # -- pure crypto -----------------------------------------------------------------
    def seal(self, image_id: str, content_type: str, plaintext: bytes) -> Sealed:
        dek = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, _aad("referral-bot vault image v1", image_id, content_type))
        wrap_nonce = os.urandom(NONCE_BYTES)
        wrapped = wrap_nonce + self._kek.encrypt(wrap_nonce, dek, _aad("referral-bot vault dek v1", image_id))
        return Sealed(nonce=nonce, ciphertext=ciphertext, wrapped_key=wrapped)

    def unseal(self, image_id: str, content_type: str, sealed: Sealed) -> bytes:
        wrapped = sealed.wrapped_key
        try:
            dek = self._kek.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _aad("referral-bot vault dek v1", image_id))
        except (InvalidTag, ValueError):
            raise WrongKey(
                f"cannot unwrap the data key of image {image_id}: wrong key file, or the stored key was altered"
            ) from None
        try:
            return AESGCM(dek).decrypt(
                sealed.nonce, sealed.ciphertext, _aad("referral-bot vault image v1", image_id, content_type)
            )
        except (InvalidTag, ValueError):
            raise VaultError(f"image {image_id} failed its integrity check (ciphertext altered or moved)") from None

    # -- database ----------------------------------------------------------------------
    async def check_key(self, tx: Tx, *, record: bool = True) -> bool:
        """Remember the key fingerprint on first use (unless ``record`` is False); refuse a
        different key later. True if the database already knew this key."""
        stored = await tx.scalar(Q.VAULT_META_GET, (_FINGERPRINT,))
        if stored is None:
            if record:
                await tx.execute(Q.VAULT_META_PUT, (_FINGERPRINT, self._keys.fingerprint))
            return False
        if stored != self._keys.fingerprint:
            raise WrongKey(
                f"the key from {self._keys.source} (fingerprint {self._keys.fingerprint}) is not the key this "
                f"database was created with (fingerprint {stored})"
            )
        return True

    async def put(self, tx: Tx, image_id: str, data: bytes, content_type: str, at: datetime) -> None:
        if not isinstance(data, (bytes, bytearray)) or not data:
            raise VaultError("refusing to store an empty image")
        if len(data) > MAX_IMAGE_BYTES:
            raise VaultError(f"image is larger than the vault limit of {MAX_IMAGE_BYTES} bytes")
        await self.check_key(tx)
        sealed = self.seal(image_id, content_type, bytes(data))
        try:
            await tx.execute(
                Q.VAULT_INSERT_ITEM,
                (image_id, content_type, sealed.nonce, sealed.ciphertext, len(data), to_text(at)),
            )
        except Exception as exc:  # sqlite3.IntegrityError: duplicate id
            if "UNIQUE" in str(exc) or "constraint" in str(exc).lower():
                raise VaultError(f"image {image_id} is already in the vault") from None
            raise
        await tx.execute(Q.VAULT_INSERT_KEY, (image_id, sealed.wrapped_key))

    async def entry(self, tx: Tx, image_id: str) -> VaultEntry | None:
        row = await tx.fetchone(Q.VAULT_GET, (image_id,))
        if row is None:
            return None
        return VaultEntry(
            image_id=row["image_id"],
            content_type=row["content_type"],
            size=row["size"],
            created_at=from_text(row["created_at"]),
            shredded_at=from_text(row["shredded_at"]),
            shred_reason=row["shred_reason"],
        )

    async def get(self, tx: Tx, image_id: str) -> VaultImage:
        row = await tx.fetchone(Q.VAULT_GET, (image_id,))
        if row is None:
            raise ImageNotFound(f"no image {image_id} in the vault")
        if row["shredded_at"] is not None or row["wrapped_key"] is None:
            raise ImageShredded(f"image {image_id} was shredded ({row['shred_reason'] or 'no reason recorded'})")
        await self.check_key(tx)
        sealed = Sealed(nonce=row["nonce"], ciphertext=row["ciphertext"], wrapped_key=row["wrapped_key"])
        data = self.unseal(image_id, row["content_type"], sealed)
        return VaultImage(image_id, row["content_type"], data, from_text(row["created_at"]))

    async def shred(self, tx: Tx, image_id: str, at: datetime, reason: str) -> bool:
        """Destroy the data key (and the ciphertext). True if it was live, False if already gone."""
        length = await tx.scalar(Q.VAULT_KEY_LENGTH, (image_id,))
        if length is not None:
            await tx.execute(Q.VAULT_OVERWRITE_KEY, (bytes(length), image_id))
            await tx.execute(Q.VAULT_DELETE_KEY, (image_id,))
        changed = await tx.execute(Q.VAULT_MARK_SHREDDED, (to_text(at), reason, image_id))
        return changed > 0 or length is not None

    async def live_ids(self, tx: Tx) -> list[str]:
        return [r[0] for r in await tx.fetchall(Q.VAULT_LIVE_IDS)]
