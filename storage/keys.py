"""Key management: the deployment master secret, kept outside the database.

One 256-bit master secret lives either in a key file (base64, mode 0600, owned
by the bot's user) or in the ``REFERRAL_BOT_KEK`` environment variable
(base64). Independent keys are derived from it with HKDF-SHA256 under
distinct labels, so no key is ever used for two purposes:

* ``kek``              - wraps the per-image data keys of the vault (AES-256-GCM);
* ``patient_ref_key``  - HMAC-SHA256 secret for pseudonymous patient references
                         (fed to ``handlers.patientref.PatientRefHasher``);
* ``records_key``      - AES-256-GCM key for consent / referral rows and outbox
                         action payloads at rest;
* ``audit_key``        - HMAC-SHA256 key of the audit chain (``storage/audit.py``);
* ``seal_key``         - HMAC-SHA256 key of the store's signed state and of the
                         anchor file outside the database (``storage/seal.py``);
* ``matrix_pickle_key``- the pickle key of matrix-nio's crypto store (its own label:
                         whoever holds the records key cannot open the Olm account).
* ``cross_signing_key``- AES-256-GCM key sealing the bot's Matrix cross-signing
                         private keys in its transport store (bot/matrix/crosssign.py).

A short fingerprint (also HKDF-derived, under its own label, so it reveals
nothing about the keys) is stored in the database at first use, so a wrong key
file is reported as "wrong key" rather than as corrupt data.
"""
from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV_VAR = "REFERRAL_BOT_KEK"
KEY_BYTES = 32
_SALT = b"referral-bot/keys/v1"
LABEL_KEK = b"referral-bot vault key-encryption key v1"
LABEL_PATIENT_REF = b"referral-bot patient reference hmac v1"
LABEL_RECORDS = b"referral-bot records at rest v1"
LABEL_AUDIT = b"referral-bot audit chain hmac v1"
LABEL_SEAL = b"referral-bot store state seal v1"
LABEL_MATRIX_PICKLE = b"referral-bot nio crypto store pickle key v1"
LABEL_FINGERPRINT = b"referral-bot key fingerprint v1"
LABEL_CROSS_SIGNING = b"referral-bot matrix cross-signing keys v1"


class KeyProblem(Exception):
    """A key problem, with a message fit to show the operator as is."""


def _hkdf(master: bytes, label: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=_SALT, info=label).derive(master)


@dataclass(frozen=True)
class Keys:
    """The derived keys. ``repr`` never shows key material."""

    kek: bytes = field(repr=False)
    patient_ref_key: bytes = field(repr=False)
    records_key: bytes = field(repr=False)
    audit_key: bytes = field(repr=False)
    seal_key: bytes = field(repr=False)
    matrix_pickle_key: bytes = field(repr=False)
    fingerprint: str
    source: str
    cross_signing_key: bytes = field(default=b"", repr=False)

    @classmethod
    def from_master(cls, master: bytes, source: str = "memory") -> "Keys":
        if len(master) != KEY_BYTES:
            raise KeyProblem(f"the key must be {KEY_BYTES} bytes (256 bits), got {len(master)} bytes from {source}")
        return cls(
            kek=_hkdf(master, LABEL_KEK),
            patient_ref_key=_hkdf(master, LABEL_PATIENT_REF),
            records_key=_hkdf(master, LABEL_RECORDS),
            audit_key=_hkdf(master, LABEL_AUDIT),
            seal_key=_hkdf(master, LABEL_SEAL),
            matrix_pickle_key=_hkdf(master, LABEL_MATRIX_PICKLE),
            fingerprint=_hkdf(master, LABEL_FINGERPRINT, 8).hex(),
            source=source,
            cross_signing_key=_hkdf(master, LABEL_CROSS_SIGNING),
        )

    @property
    def patient_ref_secret(self) -> bytes:
        """The deployment secret for ``handlers.patientref.PatientRefHasher``."""
        return self.patient_ref_key

    def patient_ref_hasher(self):  # -> handlers.patientref.PatientRefHasher
        from handlers.patientref import PatientRefHasher

        return PatientRefHasher(self.patient_ref_key)


def generate_key_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write a fresh random master secret to ``path`` with mode 0600.

    The file is created with O_EXCL (and 0600 from the start, never widened),
    so an existing key is never silently replaced.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise KeyProblem(f"{path} already exists; refusing to overwrite a key (losing it makes every vault image unreadable)")
    if overwrite and path.exists():
        path.unlink()
    material = base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case the umask was unusual
        os.write(
            fd,
            (
                "# referral-bot master key (base64, 256 bits). Keep this file 0600 and out of backups\n"
                "# of the database: whoever has both can read every image still in the vault.\n"
                f"{material}\n"
            ).encode("ascii"),
        )
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def _decode(text: str, source: str) -> bytes:
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    if len(lines) != 1:
        raise KeyProblem(f"{source} must hold exactly one base64 line (comments start with #)")
    try:
        raw = base64.b64decode(lines[0], validate=True)
    except (binascii.Error, ValueError):
        raise KeyProblem(f"{source} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyProblem(f"{source} must decode to {KEY_BYTES} bytes (256 bits), got {len(raw)}")
    return raw


def load_key_file(path: str | os.PathLike[str]) -> Keys:
    """Load a key file, refusing one that group or others could read or write."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise KeyProblem(f"key file {path} does not exist (create one with `referral-bot init`)") from None
    except OSError as exc:
        raise KeyProblem(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyProblem(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyProblem(
                f"key file {path} has permissions {mode:04o}; it must be readable by its owner only. "
                f"Fix with: chmod 600 {path}"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyProblem(f"key file {path} is not a text key file") from None
    return Keys.from_master(_decode(text, f"key file {path}"), source=f"key file {path}")


def load_from_env(environ: dict[str, str] | None = None) -> Keys | None:
    env = os.environ if environ is None else environ
    value = env.get(ENV_VAR)
    if value is None:
        return None
    return Keys.from_master(_decode(value, f"environment variable {ENV_VAR}"), source=f"environment variable {ENV_VAR}")


def load_keys(key_file: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Keys:
    """A key file if given, else ``REFERRAL_BOT_KEK``; a clear error if neither."""
    if key_file is not None:
        return load_key_file(key_file)
    keys = load_from_env(environ)
    if keys is None:
        raise KeyProblem(f"no key given: pass --key-file PATH or set {ENV_VAR} (base64 of 32 random bytes)")
    return keys
