"""The Matrix transport's own small persistent state (stdlib sqlite3, one file).

Kept apart from the workflow's store because it is Matrix plumbing, not clinical data:
- the sync token, saved only AFTER a batch was processed (the workflow's
  processed-event table makes a replay harmless, a skipped batch would be a loss);
- which room is the direct chat with which user;
- a media ledger: every mxc the bot received (GP originals, their thumbnails) or
  posted, with the reference it belongs to, so nothing is left on the server
  (the admin room-media listing does not show encrypted media), and who should have
  uploaded it (the bot, or the sender of the event that named it): media is deleted
  only when that is true, and set aside ("skipped") otherwise;
- events that could not be decrypted yet, kept for a grace period;
- the latest messages of each thread the bot knows of (event ids only), so a thread
  reply's fallback ``m.in_reply_to`` points at the thread's latest message;
- the bot's cross-signing private keys, sealed (AES-256-GCM) under a key derived from
  the deployment key (bot/matrix/crosssign.py).
No patient data, no tokens, no image bytes are stored here.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dm_rooms (user_id TEXT PRIMARY KEY, room_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS media (
    mxc TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- original | thumbnail | posted
    ref TEXT NOT NULL,             -- upload_ref (room/event) or the action key
    room_event TEXT,               -- event id that carries it, once known
    created_at REAL NOT NULL,
    deleted_at REAL
);
CREATE INDEX IF NOT EXISTS media_ref ON media(ref);
CREATE TABLE IF NOT EXISTS undecrypted (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    first_seen REAL NOT NULL,
    requested INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL           -- the encrypted event as received (ciphertext only)
);
CREATE TABLE IF NOT EXISTS thread_events (
    event_id TEXT PRIMARY KEY,
    root TEXT NOT NULL,            -- the thread root's event id
    ts INTEGER NOT NULL            -- origin_server_ts (ms), or the local time of our send
);
CREATE INDEX IF NOT EXISTS thread_events_root ON thread_events(root, ts);
"""

_THREAD_EVENTS_KEPT = 5  # per thread: enough to step back past a few redactions


class TransportState:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(media)")}
        if "owner" not in columns:  # added by the security review (issue 9)
            self._db.execute("ALTER TABLE media ADD COLUMN owner TEXT")
        if "skipped" not in columns:
            self._db.execute("ALTER TABLE media ADD COLUMN skipped TEXT")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # sync token ----------------------------------------------------------
    def get(self, key: str) -> str | None:
        rows = self._exec("SELECT value FROM kv WHERE key=?", (key,))
        return rows[0][0] if rows else None

    def put(self, key: str, value: str) -> None:
        self._exec("INSERT INTO kv(key, value) VALUES(?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (key, value))

    @property
    def sync_token(self) -> str | None:
        return self.get("sync_token")

    @sync_token.setter
    def sync_token(self, token: str) -> None:
        self.put("sync_token", token)

    # direct chats --------------------------------------------------------
    def dm_room(self, user_id: str) -> str | None:
        rows = self._exec("SELECT room_id FROM dm_rooms WHERE user_id=?", (user_id,))
        return rows[0][0] if rows else None

    def set_dm_room(self, user_id: str, room_id: str) -> None:
        self._exec("INSERT INTO dm_rooms(user_id, room_id) VALUES(?, ?) "
                   "ON CONFLICT(user_id) DO UPDATE SET room_id=excluded.room_id",
                   (user_id, room_id))

    def forget_dm_room(self, room_id: str) -> None:
        """The room is no longer anybody's direct chat (the bot left it, or it refused)."""
        self._exec("DELETE FROM dm_rooms WHERE room_id=?", (room_id,))

    # media ledger --------------------------------------------------------
    def record_media(self, mxc: str, kind: str, ref: str, room_event: str | None = None,
                     owner: str | None = None) -> None:
        """``owner``: who should have uploaded it (the bot's user id for its own uploads,
        the event's sender for media an event named). The first record wins."""
        self._exec("INSERT INTO media(mxc, kind, ref, room_event, created_at, owner) VALUES(?,?,?,?,?,?) "
                   "ON CONFLICT(mxc) DO UPDATE SET room_event=COALESCE(excluded.room_event, "
                   "media.room_event), owner=COALESCE(media.owner, excluded.owner)",
                   (mxc, kind, ref, room_event, time.time(), owner))

    def retag_media(self, mxc: str, ref: str) -> None:
        """File an upload under another reference (an early upload taken by its image)."""
        self._exec("UPDATE media SET ref=? WHERE mxc=?", (ref, mxc))

    def media_for_ref(self, ref: str, include_deleted: bool = False) -> list[str]:
        sql = "SELECT mxc FROM media WHERE ref=? AND skipped IS NULL"
        if not include_deleted:
            sql += " AND deleted_at IS NULL"
        return [r[0] for r in self._exec(sql + " ORDER BY created_at", (ref,))]

    def media_for_event(self, room_event: str) -> list[str]:
        return [r[0] for r in self._exec(
            "SELECT mxc FROM media WHERE room_event=? AND deleted_at IS NULL AND skipped IS NULL",
            (room_event,))]

    def media_owner(self, mxc: str, bot_user: str) -> str | None:
        """Who should have uploaded it (None if unknown). The bot's own uploads recorded
        before owners were kept ("posted" rows without an owner) are the bot's."""
        rows = self._exec("SELECT owner, kind FROM media WHERE mxc=?", (mxc,))
        if not rows:
            return None
        owner, kind = rows[0]
        return owner or (bot_user if kind == "posted" else None)

    def mark_media_deleted(self, mxc: str) -> None:
        self._exec("UPDATE media SET deleted_at=? WHERE mxc=?", (time.time(), mxc))

    def mark_media_skipped(self, mxc: str, why: str) -> None:
        """Never delete this one (see media_owner); it leaves the live list."""
        self._exec("UPDATE media SET skipped=? WHERE mxc=?", (why, mxc))

    def all_media(self) -> list[str]:
        """Every mxc ever recorded, deleted or not (for checks that nothing is left)."""
        return [r[0] for r in self._exec("SELECT mxc FROM media ORDER BY created_at")]

    def unposted_media(self, ref_prefix: str) -> list[tuple[str, str]]:
        """(mxc, ref) of live media under references starting with ``ref_prefix`` that no
        event carries."""
        return [(r[0], r[1]) for r in self._exec(
            "SELECT mxc, ref FROM media WHERE deleted_at IS NULL AND room_event IS NULL "
            "AND skipped IS NULL AND substr(ref, 1, ?) = ? ORDER BY created_at",
            (len(ref_prefix), ref_prefix))]

    def live_media(self) -> list[tuple[str, str, str]]:
        return self._exec("SELECT mxc, kind, ref FROM media WHERE deleted_at IS NULL "
                          "AND skipped IS NULL ORDER BY created_at")

    # threads -------------------------------------------------------------
    def note_thread_event(self, root: str, event_id: str, ts_ms: int | None = None) -> None:
        """A message in the thread ``root``: seen in a sync (with the server's timestamp,
        which also corrects the local time noted when the bot sent it), or just sent."""
        upsert = ("DO NOTHING" if ts_ms is None else "DO UPDATE SET ts=excluded.ts")
        ts = int(time.time() * 1000) if ts_ms is None else int(ts_ms)
        with self._lock:
            self._db.execute("INSERT INTO thread_events(event_id, root, ts) VALUES(?,?,?) "
                             f"ON CONFLICT(event_id) {upsert}", (event_id, root, ts))
            self._db.execute("DELETE FROM thread_events WHERE root=? AND event_id NOT IN "
                             "(SELECT event_id FROM thread_events WHERE root=? "
                             "ORDER BY ts DESC, rowid DESC LIMIT ?)",
                             (root, root, _THREAD_EVENTS_KEPT))

    def forget_thread_event(self, event_id: str) -> None:
        """The event was redacted: a fallback should not point at it."""
        self._exec("DELETE FROM thread_events WHERE event_id=?", (event_id,))

    def thread_latest(self, root: str) -> str:
        """The latest message the bot knows of in the thread (the root if none)."""
        rows = self._exec("SELECT event_id FROM thread_events WHERE root=? "
                          "ORDER BY ts DESC, rowid DESC LIMIT 1", (root,))
        return rows[0][0] if rows else root

    # undecryptable events ------------------------------------------------
    def add_undecrypted(self, event_id: str, room_id: str, sender: str, source: dict) -> None:
        self._exec("INSERT OR IGNORE INTO undecrypted(event_id, room_id, sender, first_seen, "
                   "source) VALUES(?,?,?,?,?)",
                   (event_id, room_id, sender, time.time(), json.dumps(source)))

    def undecrypted(self) -> list[tuple[str, str, str, float, int, dict]]:
        rows = self._exec("SELECT event_id, room_id, sender, first_seen, requested, source "
                          "FROM undecrypted ORDER BY first_seen")
        return [(a, b, c, d, e, json.loads(f)) for a, b, c, d, e, f in rows]

    def mark_key_requested(self, event_id: str) -> None:
        self._exec("UPDATE undecrypted SET requested=1 WHERE event_id=?", (event_id,))

    def drop_undecrypted(self, event_id: str) -> None:
        self._exec("DELETE FROM undecrypted WHERE event_id=?", (event_id,))
