"""The store's signed state, and its anchor outside the database.

Someone who can write to the database but does not hold the key could, before schema
version 6, re-hash a rewritten audit trail, cut entries off its end, or put back an older
copy of a sealed row (a consent as it was before its withdrawal: the consent applied
again). Three things stop that now:

* the audit trail is an HMAC chain (:mod:`storage.audit`);
* every consent and referral row carries a ``version``, bound into its sealed document's
  associated data, so the clear ``version`` column cannot be changed on its own;
* one **signed state** (``store_meta`` row ``state_seal``) sums up the whole store::

      {"generation": G, "audit_count": N, "audit_head": H, "records": D, "mac": ...}

  ``G`` counts the write transactions that changed a record or the audit trail; ``N`` and
  ``H`` are the audit trail's length and last hash; ``D`` is a set hash of every
  ``(kind, id, version)``: the sum modulo 2**256 of ``HMAC(seal_key, [kind, id, version])``
  (an incremental multiset hash: a save subtracts the record's old term and adds its new
  one, so no save reads the whole table). ``mac`` is ``HMAC(seal_key, canonical JSON of
  the rest)``; ``seal_key`` has its own derivation label (:mod:`storage.keys`).

The store checks the signed state when it opens the database and whenever another
process has changed it, and checks every row it loads against the versions that state
vouches for (:class:`StateKeeper`): an older copy of a row is refused on load.

Putting back the *whole* database (state row included) as it was earlier would pass
those checks, so the signed state is also written to the **anchor file**, outside the
database (by default next to it; better on another volume): on every tick when it
changed, when the store opens and when it closes (a write costs about a millisecond,
mostly the rename; per commit it would add that to every transition). An intact store
always has ``G(database) >= G(anchor file)`` (the file is written after the commit, so a
crash can only leave it behind, by at most one tick), and the audit trail still holds the
anchored head. While the bot runs, its own copy of the state (:class:`StateKeeper`)
already refuses a database that goes back. The bot also logs the head to the operator log
at intervals (``referral_bot.audit``), a copy that lives on wherever the logs are shipped.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from storage import audit
from storage import queries as Q
from storage.db import StorageError, Tx

STATE_ROW = "state_seal"
UPGRADE_ROW = "keyed_upgrade"
_MOD = 1 << 256



class StateMismatch(StorageError):
    """The database does not match its signed state (or its anchor file): it was altered."""


def head_for_log(head_hex: str) -> str:
    """The audit head as the operator log carries it: base64url, because the log's
    redaction (bot/metrics.py) masks 64-hex runs (they look like keyed patient
    references) and 10-digit runs (NHS numbers), either of which a hex head contains."""
    return base64.urlsafe_b64encode(bytes.fromhex(head_hex)).decode("ascii").rstrip("=")


def head_from_text(text: str) -> str | None:
    """A head given by a person: the hex of `audit verify`, or the log's base64url form."""
    text = text.strip()
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return text.lower()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def record_term(key: bytes, kind: str, ident: str, version: int) -> int:
    """One record's term of the set hash."""
    return int.from_bytes(hmac.new(key, _canonical(["record", kind, ident, int(version)]), hashlib.sha256).digest(), "big")


def records_digest(key: bytes, rows: Iterable[tuple[str, str, int]]) -> int:
    total = 0
    for kind, ident, version in rows:
        total = (total + record_term(key, kind, ident, version)) % _MOD
    return total


@dataclass(frozen=True)
class SignedState:
    generation: int = 0
    audit_count: int = 0
    audit_head: str = audit.GENESIS_HASH
    records: int = 0

    def body(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "audit_count": self.audit_count,
            "audit_head": self.audit_head,
            "records": f"{self.records:064x}",
        }

    def mac(self, key: bytes) -> str:
        return hmac.new(key, _canonical(["referral-bot signed state v1", self.body()]), hashlib.sha256).hexdigest()

    def to_text(self, key: bytes) -> str:
        return json.dumps({**self.body(), "mac": self.mac(key)}, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str, key: bytes, where: str) -> "SignedState":
        try:
            data = json.loads(text)
            state = cls(
                generation=int(data["generation"]),
                audit_count=int(data["audit_count"]),
                audit_head=str(data["audit_head"]),
                records=int(str(data["records"]), 16),
            )
            mac = str(data["mac"])
        except (ValueError, TypeError, KeyError):
            raise StateMismatch(f"the signed state in {where} cannot be read") from None
        if not hmac.compare_digest(mac, state.mac(key)):
            raise StateMismatch(f"the signed state in {where} fails its check: it was altered, or it belongs to another key")
        return state


class AnchorFile:
    """The signed state outside the database: a small JSON file replaced atomically."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"AnchorFile({str(self.path)!r})"

    def read(self, key: bytes) -> SignedState | None:
        """The anchored state, or None if there is no file."""
        try:
            text = self.path.read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise StateMismatch(f"cannot read the anchor file {self.path}: {exc}") from None
        return SignedState.from_text(text, key, f"the anchor file {self.path}")

    @contextlib.contextmanager
    def _locked(self):
        fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write(self, key: bytes, state: SignedState) -> bool:
        """Replace the file with ``state`` unless it already holds a later generation
        (two processes may finish their commits in either order). No fsync: after a
        power cut the old file, or none, is left, which only lags the database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            with contextlib.suppress(StateMismatch):
                current = self.read(key)
                if current is not None and current.generation >= state.generation:
                    return False
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(state.to_text(key) + "\n")
            os.replace(tmp, self.path)
        return True


async def stored_state(tx: Tx, key: bytes) -> tuple[SignedState | None, str | None]:
    """The signed state row (checked) and its raw text, or (None, None) if absent."""
    text = await tx.scalar(Q.GET_META, (STATE_ROW,))
    if text is None:
        return None, None
    return SignedState.from_text(text, key, "the database"), text


async def write_state(tx: Tx, key: bytes, state: SignedState) -> str:
    text = state.to_text(key)
    await tx.execute(Q.PUT_META, (STATE_ROW, text))
    return text


async def current_versions(tx: Tx) -> dict[tuple[str, str], int]:
    return {(r["kind"], r["ident"]): int(r["version"]) for r in await tx.fetchall(Q.RECORD_VERSIONS)}


async def check_database(tx: Tx, key: bytes, state: SignedState) -> dict[tuple[str, str], int]:
    """Check the records and the audit head against ``state``; return the versions."""
    versions = await current_versions(tx)
    if records_digest(key, ((k, i, v) for (k, i), v in versions.items())) != state.records:
        raise StateMismatch(
            "the consents and referrals do not match the signed state: a row was put back as an "
            "older copy, added or removed outside the bot"
        )
    count, head = await audit.head(tx)
    if count != state.audit_count:
        if count < state.audit_count:
            raise StateMismatch(
                f"the audit trail ends at entry {count} but the signed state says it has "
                f"{state.audit_count} entries: entries were cut off the end"
            )
        raise StateMismatch(
            f"the audit trail has {count} entries but the signed state says {state.audit_count}: "
            "entries were added outside the bot"
        )
    if not hmac.compare_digest(head, state.audit_head):
        raise StateMismatch(f"the audit trail's last entry ({count}) is not the one the signed state names")
    return versions


async def check_anchor(tx: Tx, anchored: SignedState, state: SignedState, where: str) -> None:
    """The database (at ``state``) must be the anchored state or a later one."""
    if anchored.generation > state.generation:
        raise StateMismatch(
            f"the database is older than {where} (generation {state.generation} < {anchored.generation}): "
            "records or audit entries were rolled back. If you restored a backup on purpose, move the "
            "anchor file aside (keep it) and start again"
        )
    if anchored.generation == state.generation:
        if anchored != state:
            raise StateMismatch(f"the database and {where} disagree at generation {state.generation}")
        return
    if anchored.audit_count > state.audit_count:
        raise StateMismatch(
            f"{where} names audit entry {anchored.audit_count} but the trail has {state.audit_count}: "
            "entries were cut off the end"
        )
    if anchored.audit_count:
        head = await tx.scalar(Q.AUDIT_HASH_AT, (anchored.audit_count,))
        if head is None or not hmac.compare_digest(str(head), anchored.audit_head):
            raise StateMismatch(
                f"audit entry {anchored.audit_count} is not the one {where} names: the trail was rewritten"
            )


class StateKeeper:
    """What this process knows the store's signed state to be, and the version of every
    consent and referral it vouches for (checked on every load).

    :meth:`sync` runs first in every transaction that reads records: if the database's
    state row is the one this process last committed or checked, nothing more is read;
    otherwise (first use, or another process such as the `export` command has committed)
    the whole store is checked against it once (:func:`check_database`).
    """

    def __init__(self, key: bytes, anchor: AnchorFile | None):
        self.key = key
        self.anchor = anchor
        self.state: SignedState | None = None
        self.text: str | None = None
        self.versions: dict[tuple[str, str], int] = {}
        self.anchored: SignedState | None = None  # what this process last wrote to the anchor file

    async def sync(self, tx: Tx) -> SignedState:
        state, text = await stored_state(tx, self.key)
        if state is None:
            raise StateMismatch("the database has no signed state (store_meta 'state_seal' is missing): it was altered")
        if text == self.text and self.state is not None:
            return self.state
        if self.state is not None and state.generation <= self.state.generation:
            raise StateMismatch(
                f"the database's signed state went back from generation {self.state.generation} to "
                f"{state.generation} while the bot was using it: it was rolled back"
            )
        self.versions = await check_database(tx, self.key, state)
        self.state, self.text = state, text
        return state

    def expected(self, kind: str, ident: str) -> int | None:
        return self.versions.get((kind, ident))

    def committed(self, state: SignedState, text: str, changes: dict[tuple[str, str], int]) -> None:
        self.versions.update(changes)
        self.state, self.text = state, text

    def write_anchor(self) -> bool:
        """Bring the anchor file up to the state this process knows (no-op if it is)."""
        if self.anchor is None or self.state is None or self.anchored == self.state:
            return False
        self.anchor.write(self.key, self.state)
        self.anchored = self.state
        return True


class StateChanges:
    """One write transaction's changes to the signed state (applied on commit)."""

    def __init__(self, keeper: StateKeeper, base: SignedState):
        self.keeper = keeper
        self.base = base
        self.records = base.records
        self.versions: dict[tuple[str, str], int] = {}
        self.audit_head: tuple[int, str] | None = None

    @property
    def changed(self) -> bool:
        return bool(self.versions) or self.audit_head is not None

    def expected(self, kind: str, ident: str) -> int | None:
        pending = self.versions.get((kind, ident))
        return pending if pending is not None else self.keeper.expected(kind, ident)

    def next_version(self, kind: str, ident: str) -> int:
        """The version a save writes; moves the set hash from the old term to the new one."""
        current = self.expected(kind, ident)
        new = 1 if current is None else current + 1
        if current is not None:
            self.records = (self.records - record_term(self.keeper.key, kind, ident, current)) % _MOD
        self.records = (self.records + record_term(self.keeper.key, kind, ident, new)) % _MOD
        self.versions[(kind, ident)] = new
        return new

    def state(self) -> SignedState:
        count, head = self.audit_head or (self.base.audit_count, self.base.audit_head)
        return SignedState(self.base.generation + 1, count, head, self.records)


@dataclass
class StoreReport:
    """What `referral-bot audit verify` found: ``problem`` is the first one, as one line."""

    chain: audit.VerifyResult
    state: SignedState | None = None
    problem: str | None = None
    notes: list[str] | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def read_anchor(anchor: AnchorFile | None, seal_key: bytes) -> SignedState | StateMismatch | None:
    """The anchor file's state (or the problem reading it). Read it *before* the database
    snapshot: a bot running next to the reader writes it only after its commits."""
    try:
        return anchor.read(seal_key) if anchor is not None else None
    except StateMismatch as exc:
        return exc


async def verify_store(tx: Tx, audit_key: bytes, seal_key: bytes, anchor: AnchorFile | None,
                       anchored: SignedState | StateMismatch | None, *, signed: bool = True) -> StoreReport:
    """The whole audit chain, the signed state against the chain and the records, and the
    anchor file (``anchored``, from :func:`read_anchor` before ``tx`` began) against the
    signed state. ``signed`` False: a database the bot has not yet upgraded (schema < 6),
    whose plain SHA-256 chain is all there is to check."""
    chain = await audit.verify(tx, audit_key, allow_unsigned=not signed)
    report = StoreReport(chain, notes=[])
    if not chain.intact:
        report.problem = f"audit chain broken at entry {chain.first_broken}: {chain.problem}"
        return report
    if isinstance(anchored, StateMismatch):
        report.problem = f"anchor file: {anchored}"
        return report
    if not signed:
        if anchored is not None:
            report.problem = (f"the anchor file {anchor.path} says this database was signed (generation "  # type: ignore[union-attr]
                              f"{anchored.generation}), but it is not: it was replaced by an older copy")
        else:
            report.notes.append("not signed yet: the bot signs and anchors it when it next starts (schema 6)")
        return report
    try:
        state, _ = await stored_state(tx, seal_key)
    except StateMismatch as exc:
        report.problem = f"signed state: {exc}"
        return report
    if state is None:
        report.problem = "signed state: missing from the database (store_meta 'state_seal'): it was altered"
        return report
    report.state = state
    n = chain.entries
    if n < state.audit_count:
        report.problem = (f"audit chain broken at entry {n + 1}: the trail ends at entry {n} but the signed state "
                          f"names entry {state.audit_count}: entries were cut off the end")
        return report
    if n > state.audit_count:
        report.problem = (f"audit chain broken at entry {state.audit_count + 1}: entries after the signed head "
                          "were added outside the bot")
        return report
    if not hmac.compare_digest(chain.head_hash, state.audit_head):
        report.problem = f"audit chain broken at entry {n}: it is not the entry the signed state names"
        return report
    versions = await current_versions(tx)
    if records_digest(seal_key, ((k, i, v) for (k, i), v in versions.items())) != state.records:
        report.problem = ("records do not match the signed state: a consent or referral row was put back as an "
                          "older copy, added or removed outside the bot")
        return report
    kinds = [k for k, _ in versions]
    report.notes.append(f"signed state: generation {state.generation}; records match "
                        f"({kinds.count('consent')} consents, {kinds.count('referral')} referrals)")
    if anchor is None:
        return report
    if anchored is None:
        report.problem = (f"anchor file {anchor.path} is missing, so entries cut off the end cannot be detected "
                          "(pass --anchor PATH if it is kept elsewhere)")
        return report
    if anchored.audit_count > n:
        report.problem = (f"audit chain broken at entry {n + 1}: the anchor file names entry {anchored.audit_count} "
                          f"but the trail ends at entry {n}: entries were cut off the end")
        return report
    try:
        await check_anchor(tx, anchored, state, "the anchor file")
    except StateMismatch as exc:
        report.problem = f"anchor file {anchor.path}: {exc}"
        return report
    report.notes.append(f"anchor file {anchor.path}: generation {anchored.generation} (entry "
                        f"{anchored.audit_count}), consistent")
    return report
