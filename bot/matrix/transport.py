"""The Matrix transport: nio events -> domain events -> Workflow; outbox actions -> Matrix.

One asyncio task syncs, one ticks the workflow's timers and drains the outbox.
See docs/ARCHITECTURE.md for the loop and docs/matrix.md for the Matrix specifics.

Guarantees:
- nothing is processed twice: the sync token is saved only after a batch went
  through the workflow, and the workflow marks each Matrix event id processed in
  the same transaction as its effects; a replay after a crash is a no-op;
- an unfinished outbox action re-runs after a crash; sends use the action key as
  the Matrix transaction id, so Synapse does not post twice;
- a homeserver outage is retried with backoff (sync, downloads and actions);
- the bot refuses to post into a specialty room that is not encrypted or that has a
  member (joined or invited) who is not on that specialty's roster, and says so there;
- before every message to a person (Reply / Notify to a direct chat) the room must be
  encrypted and hold exactly the bot and that person (joined or invited, nobody else);
  otherwise the bot opens a fresh encrypted direct chat and says why there. An invite
  alone never makes a room a direct chat;
- in an encrypted room only events that were decrypted are acted on, and only when the
  sender key is one of the sender's known devices;
- media is deleted only when the bot uploaded it, or when the admin API names the
  sender of the event that carried it as its uploader;
- a refusal by the homeserver that retrying cannot fix (403, not in the room, unknown
  room) is a permanent failure; rooms the bot was removed from are dropped from nio's
  view (nio keeps them);
- trust policy: devices are not interactively verified; room keys are shared with
  every device of the room's members (all of whom are checked against the room's
  roster, or for a direct chat against exactly the bot and that person, before
  anything clinical is posted);
- a held image's preview goes only to the GP's encrypted direct chat, encrypted like a
  post, and every upload made for it is in the media ledger (``preview.<image id>``), so
  RemovePreview deletes it from the server (docs/matrix.md, "Previews").
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from nio import (AsyncClient, JoinedMembersResponse, JoinResponse, MegolmEvent, MessageDirection,
                 RoomCreateResponse, RoomMessagesResponse, RoomRedactResponse, RoomVisibility)
from nio.exceptions import LocalProtocolError

from bot.matrix import nioclient
from bot.matrix.admin import SynapseAdmin
from bot.matrix.mentions import alert_content
from bot.matrix.state import TransportState
from bot.outbox import OutboxLoop, PermanentFailure, StoreUnavailable
from handlers import actions as A
from handlers import events as E
from handlers.model import Actor, ImageState

log = logging.getLogger("referral_bot.matrix")

UTC = timezone.utc
MAX_DOWNLOAD = 45 * 1024 * 1024


def utcnow() -> datetime:
    return datetime.now(UTC)


class TransientError(Exception):
    """Worth retrying later, a limited number of times (a 5xx, a failed room creation)."""


class RoomUnsafe(Exception):
    """The room fails the safety checks; str() is a plain sentence."""


@dataclass
class TransportSettings:
    specialty_rooms: dict[str, str]                 # specialty key -> room id
    specialty_titles: dict[str, str]
    directory: dict[str, Actor]                     # user id -> Actor
    is_allowed: Callable[[str], bool]               # allow-list check for invites/commands
    rosters: dict[str, frozenset[str]] = field(default_factory=dict)  # specialty -> who may be in its room
    decrypt_grace_seconds: float = 60.0
    key_request_after_seconds: float = 2.0
    tick_seconds: float = 1.0
    sync_timeout_ms: int = 30000
    max_image_bytes: int = MAX_DOWNLOAD


def _pre_ref(image_id: str) -> str:
    """Media-ledger reference of an image uploaded ahead of its PostImage."""
    return f"pre.{image_id}"


def _preview_ref(image_id: str) -> str:
    """Media-ledger reference of the uploads (image, thumbnail) of a held image's preview."""
    return f"preview.{image_id}"


def _early_key(event_id: str) -> str:
    """Key (and, under pre., ledger reference) of stripped bytes uploaded before the intake
    transaction and the check (see _on_image_stripped)."""
    return f"early.{event_id}"


def _txn(key: str, suffix: str = "") -> str:
    return re.sub(r"[^A-Za-z0-9._~-]", "_", f"rb.{key}{suffix}")[:200]


def _answered(content: dict) -> str | None:
    """The event a message answers: a reply's ``m.in_reply_to`` (not a thread's fallback),
    or the root of a thread started on it (Element's "Reply in thread")."""
    rel = content.get("m.relates_to") or {}
    target = (rel.get("m.in_reply_to") or {}).get("event_id")
    if rel.get("rel_type") == "m.thread":
        return rel.get("event_id") if rel.get("is_falling_back", True) or not target else target
    return target


def _without_reply_fallback(body: str) -> str:
    """A reply's body without the quoted original that older clients put first
    ("> <@bot:hs> ...", then an empty line): only the person's own words are passed on."""
    lines = body.split("\n")
    if not lines or not lines[0].startswith(">"):
        return body
    i = 0
    while i < len(lines) and lines[i].startswith(">"):
        i += 1
    if i < len(lines) and lines[i] == "":
        i += 1
    return "\n".join(lines[i:])


class MatrixTransport(OutboxLoop):
    # the homeserver cannot be reached (nio itself retries those until it can): back off,
    # never give up. TransientError and MatrixCallError are counted against the action.
    transient_errors = (OSError, asyncio.TimeoutError)
    max_backoff = 10.0

    def __init__(self, client: AsyncClient, store: Any, workflow: Any,
                 settings: TransportSettings, state: TransportState,
                 admin: SynapseAdmin | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 exporter: Callable[[str], Awaitable[str]] | None = None,
                 filer: Any = None):
        super().__init__(store, workflow, clock, settings.tick_seconds)
        self.filer = filer  # filing.filer.Filer: runs FileRecord / PurgeFiledCopies (docs/filing.md)
        self.client = client
        self.s = settings
        self.state = state
        self.admin = admin
        self.exporter = exporter
        self.room_specialty = {room: key for key, room in settings.specialty_rooms.items()}
        self.ready = asyncio.Event()     # set after the first sync was processed
        self.sync_failures = 0
        self._batch_retries = 0
        self.rejected_events = 0          # messages ignored: not decrypted, or a foreign sender key
        self.failed_events = 0            # events whose handling raised (a bug): logged, skipped alone
        self.foreign_media_refused = 0    # media not deleted: not uploaded by its event's sender
        self._dm_refused: set[str] = set()  # rooms that refused the bot's messages for good
        self.last_sync_at: float | None = None
        self._side_batches: list[Any] = []  # synced outside the loop, not handled yet
        # image id -> task encrypting and uploading a cleared image while the workflow
        # saves it and the thread root is posted (see _on_image_cleared)
        self._pre_uploads: dict[str, asyncio.Task] = {}
        # pre-uploads whose workflow transaction is still open -> the task handling that event
        self._unsettled: dict[str, asyncio.Task | None] = {}
        self._handling: set[asyncio.Task | None] = set()  # tasks inside a workflow call
        self._upload_slots = asyncio.Semaphore(2)  # bounds the image copies held in memory
        if hasattr(workflow, "on_image_cleared"):
            workflow.on_image_cleared = self._on_image_cleared
        # stripped bytes uploaded before the intake transaction (and the face/text check),
        # by the GP's upload event id, until a cleared image with the same bytes takes
        # them (see _on_image_stripped)
        self._early_bytes: dict[str, bytes] = {}
        self._early_at: dict[str, float] = {}  # when it was handed over (debug timings only)
        if hasattr(workflow, "on_image_stripped"):
            workflow.on_image_stripped = self._on_image_stripped

    # ================================================================= lifecycle
    async def start(self) -> None:
        """Catch up and start the loops. Actions a crash left unfinished run before
        anything that arrived meanwhile is handled: a post can reach the room and be
        answered before the bot recorded it, and the answer must find it recorded (an
        opinion given on an image the workflow did not know was posted was refused).
        Then what arrived, then the timers that fell due."""
        await self._drop_orphan_pre_uploads()
        resp, token = await self._first_sync_response()
        await self.drain()
        await self._process_first_sync(resp, token)
        await self.tick()
        self.ready.set()
        self._tasks = [asyncio.create_task(self._sync_loop(), name="matrix-sync"),
                       asyncio.create_task(self._tick_loop(), name="matrix-tick")]

    async def stop(self) -> None:
        await self._stop_tasks()
        for task in self._pre_uploads.values():
            task.cancel()  # whatever reached the server is swept at the next start
        self._pre_uploads.clear()

    async def run_forever(self) -> None:
        await self.start()
        await self._stopping.wait()

    # ================================================================= syncing
    async def _first_sync_response(self) -> tuple[Any, str | None]:
        """The first sync from the saved token (the rooms' state for nio), not yet handled."""
        delay = 0.5
        while True:
            try:
                token = self.state.sync_token
                resp = await nioclient.sync_once(self.client, timeout_ms=0, since=token,
                                                 full_state=True)
                return resp, token
            except (nioclient.MatrixCallError, OSError, asyncio.TimeoutError) as exc:
                log.warning("initial sync failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _process_first_sync(self, resp: Any, token: str | None) -> None:
        while True:
            try:
                await self._process_sync(resp, replay_timeline=token is not None)
                return
            except StoreUnavailable:  # logged and counted; nothing acknowledged
                await self._wait_for_store()

    async def _wait_for_store(self) -> None:
        await asyncio.sleep(max(0.5, self._store_until - time.monotonic()))

    async def _side_sync(self) -> None:
        """A sync outside the loop, for nio to learn a room just joined or created, or
        what it needs to encrypt for one. nio moves its cursor past what this returns,
        so the loop's next sync starts after it: the batch is queued and the loop handles
        it before syncing again, so nothing in it is skipped. (A long poll already in
        flight started from the same cursor, so it wakes for the same events and
        returns; what both fetched is handled once, as replays are no-ops.)"""
        self._side_batches.append(await nioclient.sync_once(self.client))

    async def _next_batch(self) -> Any:
        if self._side_batches:
            return self._side_batches.pop(0)
        return await nioclient.sync_once(self.client, timeout_ms=self.s.sync_timeout_ms)

    async def _sync_loop(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                resp = await self._next_batch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # outage: back off and retry
                self.sync_failures += 1
                log.warning("sync failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            delay = 0.5
            try:
                await self._process_sync(resp)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                # the store failed (disk full, lock timeout): the batch is NOT acknowledged,
                # however long it takes; fetch it again from the saved token once the store
                # answers (what was handled already is a no-op the second time)
                self.client.next_batch = self.state.sync_token
                await self._wait_for_store()
            except TransientError:
                # the batch is not acknowledged: rewind to the saved token and retry it
                # (a few times: an error that never clears must not wedge the bot)
                self._batch_retries += 1
                if self._batch_retries <= 5:
                    log.warning("processing a sync batch hit an outage; will retry it")
                    self.client.next_batch = self.state.sync_token
                    await asyncio.sleep(min(0.5 * 2 ** self._batch_retries, 10))
                else:
                    log.error("a sync batch kept failing; moving on")
                    self.state.sync_token = resp.next_batch
                    self._batch_retries = 0
            except Exception:  # a bug must not stop the bot from syncing
                log.exception("processing a sync batch failed; moving on")
                self.state.sync_token = resp.next_batch
                self._batch_retries = 0
            else:
                self._batch_retries = 0

    async def _process_sync(self, resp: Any, replay_timeline: bool = True) -> None:
        self.last_sync_at = time.monotonic()
        for room_id in resp.rooms.leave:
            self._on_left(room_id)
        for room_id, info in resp.rooms.invite.items():
            await self._alone(self._on_invite(room_id, info))
        if replay_timeline:
            for room_id, info in resp.rooms.join.items():
                events = list(info.timeline.events)
                if info.timeline.limited and info.timeline.prev_batch:
                    events = await self._backfill(room_id, info.timeline.prev_batch) + events
                for ev in events:
                    await self._alone(self._on_timeline_event(room_id, ev))
        else:
            # first start ever: history from before the bot existed is not replayed,
            # but remember who the direct chats belong to
            for room_id, info in resp.rooms.join.items():
                if room_id not in self.room_specialty:
                    self._remember_dm(room_id)
        await self._retry_undecrypted()
        self.state.sync_token = resp.next_batch
        self.state.put("synced_at_ms", str(int(time.time() * 1000)))
        self._wake.set()

    async def _backfill(self, room_id: str, token: str, pages: int = 20) -> list:
        """Events a limited sync skipped: page back until before the previous sync
        (with a margin); replaying ones already handled is a no-op in the workflow."""
        floor_ms = int(self.state.get("synced_at_ms") or 0) - 300_000
        older: list = []
        for _ in range(pages):
            resp = await self.client.room_messages(room_id, start=token,
                                                   direction=MessageDirection.back, limit=100)
            if not isinstance(resp, RoomMessagesResponse) or not resp.chunk:
                break
            done = False
            for ev in resp.chunk:
                if getattr(ev, "server_timestamp", 0) < floor_ms:
                    done = True
                    break
                older.append(ev)
            if done or not resp.end or resp.end == token:
                break
            token = resp.end
        log.info("backfilled %d events a limited sync skipped", len(older))
        return list(reversed(older))

    # ================================================================= invites
    async def _on_invite(self, room_id: str, info: Any) -> None:
        inviter = None
        for ev in info.invite_state:
            # nio's invite events keep the fields as attributes (source lacks content)
            if (getattr(ev, "state_key", None) == self.client.user_id
                    and getattr(ev, "membership", None) == "invite"):
                inviter = getattr(ev, "sender", None)
        if inviter and self.s.is_allowed(inviter):
            resp = await self.client.join(room_id)
            if isinstance(resp, JoinResponse):
                # joined, but NOT recorded as the inviter's direct chat: an invite says
                # nothing about who else is (or will be) in the room. A room becomes a
                # direct chat when the person talks to the bot there and it passes the
                # checks (encrypted, just the two of them), and it is checked again
                # before every message sent to them (_dm_room_for).
                log.info("joined a room on an allowed invite")
                await self._side_sync()
            else:
                log.warning("could not join an invited room (%s)", nioclient.err_code(resp))
        else:
            reason = ("This bot only accepts invitations from clinicians on its allow-list; "
                      "ask your administrator to add you.")
            declined = False
            if self.admin is not None:
                try:
                    declined = await self.admin.leave_with_reason(room_id, reason)
                except Exception:
                    declined = False
            if not declined:
                await self.client.room_leave(room_id)
            log.info("declined an invite from a user who is not allowed")

    # ================================================================= timeline
    def _actor(self, user_id: str) -> Actor:
        # outside the directory: may talk to the bot (!help, !status), never refer
        return self.s.directory.get(user_id) or Actor(user_id=user_id, may_refer=False)

    def _remember_dm(self, room_id: str) -> None:
        room = self.client.rooms.get(room_id)
        if room is None:
            return
        others = [u for u in room.users if u != self.client.user_id]
        if len(others) == 1 and self._dm_problem(room, others[0]) is None:
            self.state.set_dm_room(others[0], room_id)

    def _on_left(self, room_id: str) -> None:
        """The bot left or was removed from a room. nio keeps such rooms in
        ``client.rooms`` (with the bot still listed as a member), so without this the
        room checks would pass and every send there would fail with 403 for ever."""
        self.client.rooms.pop(room_id, None)
        self.state.forget_dm_room(room_id)
        specialty = self.room_specialty.get(room_id)
        if specialty is not None:
            title = self.s.specialty_titles.get(specialty) or specialty
            log.error("the bot is no longer in the %s room; nothing can be posted there until it "
                      "is invited back", title)

    # ------------------------------------------------------------ direct chats
    def _dm_problem(self, room: Any, user_id: str) -> str | None:
        """Why ``room`` is not a safe direct chat with ``user_id`` (None if it is): it must
        be end-to-end encrypted and its members, joined or invited, exactly the bot and
        that person (an invitation still pending is someone who could read it later)."""
        if room is None:
            return "I am no longer in our previous chat"
        if not room.encrypted:
            return "our previous chat is not end-to-end encrypted"
        joined = {u for u, m in room.users.items() if not m.invited}
        invited = {u for u, m in room.users.items() if m.invited} | set(room.invited_users)
        if self.client.user_id not in joined:
            return "I am no longer in our previous chat"
        if (joined | invited) - {self.client.user_id} != {user_id}:
            return "other people were added to our previous chat"
        return None

    async def _alone(self, step: Awaitable[None]) -> None:
        """Handle one event of a batch (an invite, a timeline event, a late-decrypted one).
        A bug, or a refusal retrying cannot fix (a notice the server refuses), costs this
        event only: the events after it are still handled. A store failure or an outage
        still stops the batch, which is then fetched again (what was handled is a no-op
        the second time)."""
        try:
            await step
        except (asyncio.CancelledError, StoreUnavailable, TransientError):
            raise
        except Exception:
            self.failed_events += 1
            log.exception("handling one event failed; going on with the rest of its batch")

    def _ev_time(self, src: dict) -> datetime:
        # the workflow's clock is ours (server timestamps may drift); use now
        return self.clock()

    async def _on_timeline_event(self, room_id: str, ev: Any) -> None:
        src = getattr(ev, "source", {}) or {}
        sender = src.get("sender") or getattr(ev, "sender", "")
        event_id = src.get("event_id") or getattr(ev, "event_id", "")
        self._track_thread(src, event_id)
        if not sender or sender == self.client.user_id or not event_id:
            return
        if isinstance(ev, MegolmEvent):
            # not decryptable yet: keep it, ask for the key, retry after each sync
            self.state.add_undecrypted(event_id, room_id, sender, src)
            return
        if not await self._trustworthy(room_id, event_id, sender, ev, src):
            return
        try:
            await self._dispatch(room_id, event_id, sender, src.get("type", ""),
                                 src.get("content") or {}, src)
        except StoreUnavailable:
            await self._store_delay_notice(room_id, event_id, sender, src)
            raise

    async def _store_delay_notice(self, room_id: str, event_id: str, sender: str, src: dict) -> None:
        """The store failed while handling someone's command or photo: it is retried by
        itself, and they are told once (the transaction id makes a repeat a no-op), so
        they do not type it again or think it was ignored."""
        content = src.get("content") or {}
        asked = (str(content.get("body", "")).lstrip().startswith("!")
                 or content.get("msgtype") in ("m.image", "m.file"))
        if src.get("type") != "m.room.message" or not asked or not self.s.is_allowed(sender):
            return
        rel = content.get("m.relates_to") or {}
        thread = rel.get("event_id") if rel.get("rel_type") == "m.thread" else None
        try:
            await self._notice(room_id, "I could not save that just now (a problem on my side); I "
                               "will finish it by myself as soon as I can, so there is no need to "
                               "send it again.", key=f"storewait.{event_id}", thread_root=thread)
        except Exception:  # the notice is a courtesy; the retry is what matters
            log.debug("could not send the store-delay notice")

    async def _trustworthy(self, room_id: str, event_id: str, sender: str, ev: Any,
                           src: dict) -> bool:
        """In an encrypted room, act only on messages that were decrypted, and only when
        the key that encrypted them belongs to one of the sender's known devices. A plain
        event there was sent around end-to-end encryption (anyone holding the user's access
        token can, and the server could forge one); a foreign sender key means the
        sender field does not match who encrypted it."""
        room = self.client.rooms.get(room_id)
        if src.get("type") != "m.room.message" or room is None or not room.encrypted:
            return True
        if not getattr(ev, "decrypted", False):
            self.rejected_events += 1
            log.warning("ignored a message that was not end-to-end encrypted in an encrypted room")
            if self.s.is_allowed(sender):
                rel = (src.get("content") or {}).get("m.relates_to") or {}
                thread = rel.get("event_id") if rel.get("rel_type") == "m.thread" else None
                await self._notice(room_id, "I ignored your last message: it was not end-to-end "
                                   "encrypted. Send it again from an app with encryption on "
                                   "(Element, for example).", key=f"plain.{event_id}",
                                   thread_root=thread)
            return False
        if not await self._sender_key_known(sender, getattr(ev, "sender_key", None)):
            self.rejected_events += 1
            log.warning("ignored a message whose encryption key is not one of its sender's devices")
            return False
        return True

    async def _sender_key_known(self, sender: str, sender_key: str | None) -> bool:
        if not sender_key or self.client.olm is None:
            return False

        def known() -> bool:
            return any(d.curve25519 == sender_key
                       for d in self.client.device_store.active_user_devices(sender))

        if known():
            return True
        # a device we have not heard of yet (a new phone): fetch the sender's device list
        self.client.olm.users_for_key_query.add(sender)
        try:
            await self.client.keys_query()
        except Exception as exc:  # LocalProtocolError (nothing to query) or an outage
            log.debug("device list query failed (%s)", type(exc).__name__)
        return known()

    async def _dispatch(self, room_id: str, event_id: str, sender: str, etype: str,
                        content: dict, src: dict) -> None:
        if etype != "m.room.message":
            return
        if (src.get("unsigned") or {}).get("redacted_because"):
            return
        msgtype = content.get("msgtype")
        if (content.get("m.relates_to") or {}).get("rel_type") == "m.replace":
            return  # an edit: the original message was already handled
        specialty = self.room_specialty.get(room_id)
        at = self._ev_time(src)
        if specialty is not None:
            await self._on_specialty_message(room_id, specialty, event_id, sender, msgtype,
                                             content, at)
            return
        # a direct chat
        if not self.s.is_allowed(sender):
            return
        room = self.client.rooms.get(room_id)
        if room is None:
            return
        is_upload = msgtype in ("m.image", "m.file", "m.video", "m.audio")
        if self._dm_problem(room, sender) is not None:
            if room.encrypted:
                text = ("Please talk to me in a direct chat (just you and me); this room has "
                        "other people in it.")
            else:
                text = ("This chat is not end-to-end encrypted, so I will not take consent, "
                        "referrals or images here: start an encrypted direct chat with me.")
            if is_upload:
                # a patient photo must not stay here either: redact it, delete its media
                await self._ledger_upload(room_id, event_id, content, sender)
                await self._redact_upload(f"{room_id}/{event_id}", "Sent in the wrong chat")
                text += " I removed your upload from this chat."
            await self._notice(room_id, text, key=f"refuse.{event_id}")
            return
        if is_upload and sender not in self.s.directory:
            # only clinicians in the directory reach intake (an allowed server is not enough)
            await self._ledger_upload(room_id, event_id, content, sender)
            await self._redact_upload(f"{room_id}/{event_id}", "Not from a clinician in the directory")
            await self._notice(room_id, "Only clinicians in this bot's directory can send photos for "
                               "referrals; ask your administrator to add you. I removed your upload "
                               "from this chat.", key=f"notdir.{event_id}")
            return
        self.state.set_dm_room(sender, room_id)
        place = E.DirectChat(user_id=sender)
        actor = self._actor(sender)
        answered = _answered(content)
        if msgtype in ("m.text", "m.notice", "m.emote"):
            body = str(content.get("body", ""))
            if answered:
                body = _without_reply_fallback(body)
            await self._handle(E.CommandReceived(event_id=event_id, actor=actor, at=at,
                                                 text=body, place=place, in_reply_to=answered))
        elif msgtype in ("m.image", "m.file", "m.video", "m.audio"):
            await self._on_upload(room_id, event_id, actor, content, at, place, answered)

    async def _on_specialty_message(self, room_id: str, specialty: str, event_id: str,
                                    sender: str, msgtype: str | None, content: dict,
                                    at: datetime) -> None:
        rel = content.get("m.relates_to") or {}
        thread_root = rel.get("event_id") if rel.get("rel_type") == "m.thread" else None
        place = E.SpecialtyThread(specialty=specialty, thread_event_id=thread_root)
        actor = self._actor(sender)
        body = str(content.get("body", ""))
        if (rel.get("m.in_reply_to") or {}).get("event_id") and not rel.get("is_falling_back"):
            body = _without_reply_fallback(body)
        if msgtype in ("m.text", "m.notice") and body.lstrip().startswith("!"):
            await self._handle(E.CommandReceived(event_id=event_id, actor=actor, at=at,
                                                 text=body, place=place))
        elif thread_root is not None:
            # only words from the clinician directory are ever handed on (the workflow
            # further limits the relay to the specialty's roster)
            words = body if msgtype in ("m.text", "m.emote") and sender in self.s.directory else ""
            await self._handle(E.ThreadActivity(event_id=event_id, actor=actor, at=at,
                                                place=place, text=words))
        if msgtype in ("m.image", "m.file", "m.video"):
            # people must not post patient images straight into the room
            await self._notice(room_id, "Please send images to me in your direct chat, not "
                               "here: I strip their metadata and post them safely.",
                               key=f"noimg.{event_id}", thread_root=thread_root)

    async def _on_upload(self, room_id: str, event_id: str, actor: Actor, content: dict,
                         at: datetime, place: E.DirectChat, answered: str | None = None) -> None:
        file_info = content.get("file")
        mxc = (file_info or {}).get("url") or content.get("url")
        info = content.get("info") or {}

        async def fetch() -> bytes:
            if mxc and isinstance(info.get("size"), int) and info["size"] > self.s.max_image_bytes:
                return b""  # declared too large: let the workflow refuse it without downloading
            if not mxc:
                return b""
            t0 = time.perf_counter()
            got = await self._download(mxc, file_info)
            log.debug("downloaded an upload in %.1f ms", (time.perf_counter() - t0) * 1000)
            return got

        # a media caption (spec 1.10): a ``filename`` is given and ``body`` differs from it
        filename = content.get("filename")
        body = str(content.get("body") or "")
        caption = body if filename and body and body != filename else ""
        # the ownership check runs alongside the download, so it adds no latency
        upload_ref, data = await asyncio.gather(
            self._ledger_upload(room_id, event_id, content, actor.user_id), fetch())
        t0 = time.perf_counter()
        await self._handle(E.ImageReceived(
            event_id=event_id, actor=actor, at=at, data=data,
            filename=str(filename or body or "upload"),
            declared_mimetype=str(info.get("mimetype") or (file_info or {}).get("mimetype") or ""),
            upload_ref=upload_ref, place=place, caption=caption, in_reply_to=answered))
        log.debug("intake (cleaning and transaction) took %.1f ms", (time.perf_counter() - t0) * 1000)

    async def _ledger_upload(self, room_id: str, event_id: str, content: dict, sender: str) -> str:
        """Remember an upload's media (and thumbnail) at once, so it is deleted even
        if intake fails; returns the upload reference. Only media the event's sender
        uploaded goes in (an event can name anybody's media, and the bot deletes with an
        admin token); the sender is kept as its owner and checked again before deleting."""
        upload_ref = f"{room_id}/{event_id}"
        mxc = (content.get("file") or {}).get("url") or content.get("url")
        info = content.get("info") or {}
        thumb = (info.get("thumbnail_file") or {}).get("url") or info.get("thumbnail_url")
        for url, kind in ((mxc, "original"), (thumb, "thumbnail")):
            if url and await self._uploaded_by(url, sender):
                self.state.record_media(url, kind, upload_ref, event_id, owner=sender)
        return upload_ref

    async def _uploaded_by(self, mxc: str, sender: str) -> bool:
        """False if the admin API names someone else as the uploader of ``mxc`` (or it is
        not an mxc URI at all). When the bot cannot delete media, or the admin API does
        not answer, True: _delete_media asks again before deleting anything."""
        if self.admin is None or not self.admin.can_delete:
            return True
        try:
            exists, uploader = await self.admin.media_uploader(mxc)
        except ValueError:
            return False
        except Exception as exc:  # an outage: decided again at deletion time
            log.debug("media info not available (%s)", type(exc).__name__)
            return True
        if exists and uploader != sender:
            self.foreign_media_refused += 1
            log.warning("an event named media its sender did not upload; it will not be deleted")
            return False
        return True

    async def _download(self, mxc: str, file_info: dict | None) -> bytes:
        delay = 0.5
        for attempt in range(6):
            try:
                if file_info:
                    data = await nioclient.download_decrypt(self.client, file_info)
                else:
                    data = await nioclient.download_bytes(self.client, mxc)
                return data or b""
            except nioclient.MatrixCallError as exc:
                if str(exc.status).startswith("M_") and exc.status != "M_UNKNOWN":
                    return b""
            except (OSError, asyncio.TimeoutError):
                pass
            except Exception:  # bad keys / hash mismatch: a corrupt upload
                return b""
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)
        raise TransientError("download")

    # ----------------------------------------------------- late room keys
    async def _retry_undecrypted(self) -> None:
        for event_id, room_id, sender, first_seen, requested, source in self.state.undecrypted():
            ev = MegolmEvent.from_dict(source)
            if not isinstance(ev, MegolmEvent):
                self.state.drop_undecrypted(event_id)
                continue
            ev.room_id = room_id
            try:
                dec = self.client.decrypt_event(ev)
            except Exception:
                dec = None
            if dec is not None and not isinstance(dec, MegolmEvent) and getattr(dec, "source", None):
                self.state.drop_undecrypted(event_id)
                dsrc = dict(dec.source)
                if not await self._sender_key_known(sender, getattr(dec, "sender_key", None)):
                    self.rejected_events += 1
                    log.warning("ignored a message whose encryption key is not one of its "
                                "sender's devices")
                    continue
                await self._alone(self._dispatch(room_id, event_id, sender, dsrc.get("type", ""),
                                                 dsrc.get("content") or {}, dsrc))
                continue
            age = time.time() - first_seen
            if not requested and age >= self.s.key_request_after_seconds:
                try:
                    await self.client.request_room_key(ev)
                except (LocalProtocolError, Exception):
                    pass
                self.state.mark_key_requested(event_id)
            if age >= self.s.decrypt_grace_seconds:
                self.state.drop_undecrypted(event_id)
                log.warning("gave up on a message that could not be decrypted")
                if self.s.is_allowed(sender) and room_id in self.client.rooms:
                    await self._notice(room_id, "I could not decrypt your last message (my device "
                                       "never received its key). Please send it again.",
                                       key=f"utd.{event_id}")

    # ================================================================= outbox hooks
    async def _handle(self, event: Any) -> list:
        me = asyncio.current_task()
        self._handling.add(me)
        try:
            return await super()._handle(event)
        finally:
            self._handling.discard(me)
            # the transaction that cleared these images has committed or rolled back:
            # from now on an unused pre-upload of theirs is really unused
            for image_id in [i for i, task in self._unsettled.items() if task is me]:
                del self._unsettled[image_id]
                self._early_bytes.pop(image_id, None)  # not taken by now: never will be
                self._early_at.pop(image_id, None)

    async def _on_idle(self) -> None:
        await self._drop_unused_pre_uploads()

    # ================================================================= actions
    async def _execute(self, action: A.Action) -> Any:
        at = self.clock()
        if self.filer is not None and self.filer.handles(action):
            return await self.filer.execute(action)
        if isinstance(action, A.Reply):
            event_id = await self._reply(action.to, action.text, action.key, action.mentions)
            return self._sent(action, event_id if isinstance(action.to, E.DirectChat) else None, at)
        if isinstance(action, A.Notify):
            event_id = await self._send_to_person(action.user_id, action.text, action.key, action.mentions)
            return self._sent(action, event_id, at)
        if isinstance(action, A.Acknowledge):
            await self._acknowledge(action)
            return None
        if isinstance(action, A.PostThreadRoot):
            try:
                room_id = await self._safe_room(action.specialty)
            except RoomUnsafe as why:
                return self._failed(action, str(why), action.referral_id)
            # a new referral needs a person: m.text mentioning the roster, never a notice
            event_id = await self._say(room_id, action.text, key=action.key,
                                       mentions=action.mentions, alert=True)
            return E.ThreadRootPosted(event_id=f"done:{action.key}", at=at,
                                      referral_id=action.referral_id, room_event_id=event_id)
        if isinstance(action, A.PostImage):
            return await self._post_image(action, at)
        if isinstance(action, A.SendPreview):
            return await self._send_preview(action, at)
        if isinstance(action, A.RemovePreview):
            return await self._remove_preview(action, at)
        if isinstance(action, A.RedactOriginalUpload):
            await self._redact_upload(action.upload_ref, action.reason)
            return None
        if isinstance(action, A.RemoveImages):
            return await self._remove_images(action, at)
        if isinstance(action, A.ExportReferral):
            if self.exporter is None:
                return self._failed(action, "Export is not configured on this bot.",
                                    action.referral_id)
            try:
                where = await self.exporter(action.referral_id)
            except Exception:
                log.exception("export failed")
                return self._failed(action, "The export failed; try again later.",
                                    action.referral_id)
            await self._reply(action.reply_to, f"Exported {action.referral_id} to {where}.",
                              action.key)
            return E.ExportCompleted(event_id=f"done:{action.key}", at=at,
                                     referral_id=action.referral_id)
        log.warning("unknown action %s skipped", type(action).__name__)
        return None

    def _failed(self, action: A.Action, reason: str, referral_id: str | None) -> E.ActionFailed:
        extra = {}
        if isinstance(action, (A.PostImage, A.SendPreview)):
            extra["image_id"] = action.image_id
        return E.ActionFailed(event_id=f"done:{action.key}", at=self.clock(),
                              action_key=action.key, action_type=type(action).__name__,
                              reason=reason, referral_id=referral_id, permanent=True, **extra)

    @staticmethod
    def _sent(action: Any, event_id: str | None, at: datetime) -> E.MessageSent | None:
        """Tie a direct-chat message about a referral to it: a reply to it names it."""
        if not event_id or not getattr(action, "referral_id", None):
            return None
        return E.MessageSent(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                             room_event_id=event_id)

    def _name(self, room_id: str, user_id: str) -> str:
        """How a mentioned person is named: the directory's name, else their Matrix name."""
        actor = self.s.directory.get(user_id)
        if actor is not None and actor.display_name:
            return actor.display_name
        room = self.client.rooms.get(room_id)
        name = room.user_name(user_id) if room is not None else None
        return name or user_id

    def _content(self, room_id: str, text: str, thread_root: str | None,
                 mentions: tuple[str, ...], alert: bool) -> dict:
        latest = self._thread_latest(thread_root)
        if not mentions and not alert:
            return nioclient.text_content(text, thread_root, notice=True, in_reply_to=latest)
        relation = nioclient.thread_relation(thread_root, latest) if thread_root else None
        return alert_content(text, [(u, self._name(room_id, u)) for u in mentions], relation)

    # ------------------------------------------------------------ sending
    def _not_in_room(self, room_id: str) -> str:
        specialty = self.room_specialty.get(room_id)
        if specialty is not None:
            title = self.s.specialty_titles.get(specialty) or specialty
            return (f"I am not a member of the {title} room (I was removed from it, or may not "
                    f"post there); an administrator must invite me back.")
        return "I am no longer in that chat."

    async def _send(self, room_id: str, content: dict, key: str) -> str:
        """Send one event. A refusal that retrying cannot fix (403, not in the room,
        unknown room) raises PermanentFailure; other errors raise TransientError."""
        if room_id not in self.client.rooms:
            # nio does not know it: just created (a sync fixes that), or left for good
            await self._side_sync()
            if room_id not in self.client.rooms:
                raise PermanentFailure(self._not_in_room(room_id))
        try:
            try:
                return await nioclient.send(self.client, room_id, content, txn_id=_txn(key))
            except LocalProtocolError:
                # nio knows the room but not yet all it needs to encrypt for it: sync, retry once
                await self._side_sync()
                return await nioclient.send(self.client, room_id, content, txn_id=_txn(key))
        except nioclient.MatrixCallError as exc:
            if exc.permanent:
                if exc.forbidden:
                    raise PermanentFailure(self._not_in_room(room_id)) from None
                raise PermanentFailure(f"The homeserver refused it ({exc.errcode or exc.http}).") from None
            raise TransientError(str(exc)) from None

    async def _say(self, room_id: str, text: str, key: str, thread_root: str | None = None,
                   mentions: tuple[str, ...] = (), alert: bool = False) -> str:
        """Send *text*: an ``m.notice`` (no alert), or ``m.text`` mentioning *mentions*
        when the message needs those people (see bot/matrix/mentions.py)."""
        content = self._content(room_id, text, thread_root, mentions, alert)
        event_id = await self._send(room_id, content, key)
        self._note_sent_in_thread(thread_root, event_id)
        return event_id

    async def _notice(self, room_id: str, text: str, key: str, thread_root: str | None = None) -> None:
        """A notice sent while handling a sync batch: a room that refuses it for good must
        not stop the batch (an outage still retries the batch)."""
        try:
            await self._say(room_id, text, key=key, thread_root=thread_root)
        except PermanentFailure:
            log.warning("could not post a notice in a room (refused)")

    # ------------------------------------------------------------ thread fallbacks
    # A thread message's reply fallback (for clients without threads) names the latest
    # message in the thread the bot knows of, not the root (spec: "Fallback for
    # unthreaded clients"). Known = seen in a sync (any sender; encrypted ones too, their
    # m.relates_to is in clear) or sent by the bot; a redacted one no longer counts.
    def _thread_latest(self, root: str | None) -> str | None:
        return self.state.thread_latest(root) if root else None

    def _note_sent_in_thread(self, root: str | None, event_id: str) -> None:
        if root and event_id:
            self.state.note_thread_event(root, event_id)

    def _track_thread(self, src: dict, event_id: str) -> None:
        etype = src.get("type")
        if etype == "m.room.redaction":
            redacts = src.get("redacts") or (src.get("content") or {}).get("redacts")
            if redacts:
                self.state.forget_thread_event(redacts)
            return
        if etype not in ("m.room.message", "m.room.encrypted") or not event_id:
            return
        rel = (src.get("content") or {}).get("m.relates_to") or {}
        if rel.get("rel_type") != "m.thread" or not rel.get("event_id"):
            return
        if (src.get("unsigned") or {}).get("redacted_because"):
            self.state.forget_thread_event(event_id)
            return
        self.state.note_thread_event(rel["event_id"], event_id,
                                     src.get("origin_server_ts") or None)

    async def _acknowledge(self, action: A.Acknowledge) -> None:
        """A reaction on the person's message saying it was passed on. Best effort: a
        failure is logged, never retried (the relay itself already went)."""
        if isinstance(action.to, E.DirectChat):
            room_id = self.state.dm_room(action.to.user_id)
        else:
            room_id = self.s.specialty_rooms.get(action.to.specialty)
        if not room_id or room_id not in self.client.rooms:
            return
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": action.event_id,
                                    "key": action.reaction}}
        try:
            await nioclient.send(self.client, room_id, content, event_type="m.reaction",
                                 txn_id=_txn(action.key))
        except (nioclient.MatrixCallError, LocalProtocolError) as exc:
            log.warning("could not mark a relayed message (%s)", type(exc).__name__)

    async def _thread_root_for(self, place: E.SpecialtyThread) -> str | None:
        if place.thread_event_id:
            return place.thread_event_id
        if place.referral_id:
            async with self.store.transaction() as tx:
                ref = await tx.get_referral(place.referral_id)
            return getattr(ref, "thread_root_event_id", None) if ref else None
        return None

    async def _reply(self, to: Any, text: str, key: str, mentions: tuple[str, ...] = ()) -> str | None:
        if isinstance(to, E.DirectChat):
            return await self._send_to_person(to.user_id, text, key, mentions)
        if isinstance(to, E.SpecialtyThread):
            room_id = self.s.specialty_rooms.get(to.specialty)
            if room_id is None:
                log.warning("reply to an unknown specialty dropped")
                return None
            return await self._say(room_id, text, key=key, thread_root=await self._thread_root_for(to),
                                   mentions=mentions)
        return None

    # ------------------------------------------------------------ direct chats
    async def _send_to_person(self, user_id: str, text: str, key: str,
                              mentions: tuple[str, ...] = ()) -> str:
        """Everything addressed to one person goes through here: into a room that passes
        the direct-chat checks at this moment (see _dm_room_for). Returns the event id."""
        room_id = await self._dm_room_for(user_id)
        try:
            return await self._say(room_id, text, key=key, mentions=mentions)
        except PermanentFailure:
            # the room refuses the bot (kicked, or power levels changed): never again,
            # and try once more in a fresh direct chat
            self._dm_refused.add(room_id)
            self.state.forget_dm_room(room_id)
            room_id = await self._dm_room_for(user_id, why="I can no longer write in our previous chat")
            return await self._say(room_id, text, key=key + ".again", mentions=mentions)

    async def _dm_room_for(self, user_id: str, why: str | None = None) -> str:
        """The direct chat to write to ``user_id`` in, checked now: encrypted, and its
        members (joined or invited) exactly the bot and that person. If the recorded one
        fails, use another room that passes, or open a fresh encrypted direct chat; either
        way say there why the conversation moved."""
        room_id = self.state.dm_room(user_id)
        problem = why
        if room_id and room_id not in self._dm_refused:
            problem = self._dm_problem(self.client.rooms.get(room_id), user_id)
            if problem is None:
                return room_id
            log.warning("a direct chat failed the checks (%s); moving to another", problem)
        note = (f"I am writing to you in this new encrypted chat because {problem}; I only send "
                f"you referral messages where nobody else can read them.") if problem else None
        for rid, room in self.client.rooms.items():
            if (rid != room_id and rid not in self.room_specialty and rid not in self._dm_refused
                    and self._dm_problem(room, user_id) is None):
                self.state.set_dm_room(user_id, rid)
                if note:
                    await self._say(rid, note.replace("this new encrypted chat", "this encrypted chat"),
                                    key=f"moved.{rid}.{room_id}")
                return rid
        resp = await self.client.room_create(
            visibility=RoomVisibility.private, is_direct=True, invite=[user_id],
            initial_state=[{"type": "m.room.encryption", "state_key": "",
                            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}])
        if not isinstance(resp, RoomCreateResponse):
            raise TransientError("could not open a direct chat")
        self.state.set_dm_room(user_id, resp.room_id)
        await self._side_sync()
        if note:
            await self._say(resp.room_id, note, key=f"moved.{resp.room_id}")
        return resp.room_id

    # ------------------------------------------------------------ room safety
    async def _safe_room(self, specialty: str) -> str:
        room_id = self.s.specialty_rooms.get(specialty)
        title = self.s.specialty_titles.get(specialty) or specialty
        if room_id is None:
            raise RoomUnsafe(f"No room is configured for {title}.")
        room = self.client.rooms.get(room_id)
        if room is None:
            raise RoomUnsafe(f"I am not a member of the {title} room; an administrator must "
                             f"invite me to it.")
        problem = None
        if not room.encrypted:
            problem = (f"The {title} room is not end-to-end encrypted, so I will not post "
                       f"referral images there; turn encryption on.")
        else:
            if not room.members_synced:
                resp = await self.client.joined_members(room_id)
                if not isinstance(resp, JoinedMembersResponse):
                    raise TransientError("member list")
            # nio's view of the room is what it shares the Megolm keys with, so it is
            # the membership that decides who can read what we post. Being in the
            # directory is not enough: only that specialty's roster (and the bot).
            roster = self.s.rosters.get(specialty)
            if roster is None:  # settings built without rosters: the directory, as before
                roster = frozenset(self.s.directory)
            members = set(room.users) | set(room.invited_users)
            outsiders = sorted(u for u in members if u != self.client.user_id and u not in roster)
            if outsiders:
                problem = (f"The {title} room has {len(outsiders)} member(s) who are not on its "
                           f"roster ({', '.join(outsiders)}), so I will not post referral images "
                           f"there; remove them, or add them to the {title} roster in my "
                           f"configuration.")
        if problem:
            try:
                await self._say(room_id, problem, key=f"unsafe.{int(time.time() // 60)}")
            except Exception:
                pass
            raise RoomUnsafe(problem)
        return room_id

    # ------------------------------------------------------------ images
    async def _post_image(self, action: A.PostImage, at: datetime) -> Any:
        try:
            room_id = await self._safe_room(action.specialty)
        except RoomUnsafe as why:
            return self._failed(action, str(why), action.referral_id)
        t0 = time.perf_counter()
        pre = await self._take_pre_upload(action)
        log.debug("pre-upload %s, waited %.1f ms", "used" if pre else "not used", (time.perf_counter() - t0) * 1000)
        earlier: list[str] = []
        if pre is not None:
            up, size, thumb = pre
        else:
            data = await self.store.vault_get(action.image_id)
            if data is None:
                return self._failed(action, "The image is no longer in the vault.", action.referral_id)
            # This action ran before (a crash, or an outage after the upload). Its earlier
            # upload may be what Synapse already posted: the send below reuses the
            # transaction id, so Synapse then answers with that first event, which
            # carries the earlier upload. So nothing is deleted here; the earlier uploads
            # are tied to the event below and deleted with it at removal.
            earlier = (self.state.media_for_ref(action.key)
                       + self.state.media_for_ref(_pre_ref(action.image_id)))
            thumb_task = asyncio.ensure_future(self._thumbnail(data, action.filename, action.key))
            try:
                up = await nioclient.upload_encrypted(self.client, data, action.filename,
                                                      action.media_type)
            except nioclient.MatrixCallError as exc:
                if exc.permanent:
                    raise PermanentFailure(f"The homeserver refused the upload ({exc.errcode or exc.http}).") from None
                raise TransientError(str(exc)) from None
            finally:
                thumb = await thumb_task
            size = len(data)
            del data
        me = self.client.user_id
        self.state.record_media(up.mxc, "posted", action.key, owner=me)
        root = action.thread_root_event_id
        content = nioclient.image_content(up, action.filename, size, action.width,
                                          action.height, thread_root=root,
                                          in_reply_to=self._thread_latest(root),
                                          thumbnail=thumb)
        event_id = await self._send(room_id, content, action.key)
        self._note_sent_in_thread(root, event_id)
        for mxc in [*earlier, up.mxc]:
            self.state.record_media(mxc, "posted", action.key, event_id, owner=me)
        if thumb is not None:
            self.state.record_media(thumb.upload.mxc, "thumbnail", action.key, event_id, owner=me)
        room = self.client.rooms.get(room_id)
        members = tuple(sorted(room.users)) if room is not None else ()  # who could see it, for the audit
        return E.ImagePosted(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                             image_id=action.image_id, room_event_id=event_id, media_uri=up.mxc,
                             members=members)

    # ------------------------------------------------------------ previews
    async def _send_preview(self, action: A.SendPreview, at: datetime) -> Any:
        """A held image's blurred copy, in the GP's encrypted direct chat, captioned
        PREVIEW: the vault item ``!blur`` posts, uploaded encrypted with an encrypted
        thumbnail like a post, and alerting the GP (they must decide). Every upload is in
        the media ledger under ``preview.<image id>`` before the message is sent, so it is
        deleted even if the message never goes out."""
        data = await self.store.vault_get(action.image_id)
        if data is None:  # discarded or destroyed before its preview went out
            return self._failed(action, "The photo is no longer held.", action.referral_id)
        room_id = await self._dm_room_for(action.user_id)
        ref = _preview_ref(action.image_id)
        thumb_task = asyncio.ensure_future(self._thumbnail(data, action.filename, ref))
        try:
            up = await nioclient.upload_encrypted(self.client, data, action.filename, action.media_type)
        finally:
            thumb = await thumb_task
        me = self.client.user_id
        self.state.record_media(up.mxc, "posted", ref, owner=me)
        content = nioclient.image_content(up, action.filename, len(data), action.width, action.height,
                                          thumbnail=thumb, caption=action.text)
        content["m.mentions"] = {"user_ids": [action.user_id]}
        del data
        # the same send as every post: a refusal retrying cannot fix is permanent (issue 9)
        event_id = await self._send(room_id, content, action.key)
        for mxc in self.state.media_for_ref(ref):
            self.state.record_media(mxc, "posted", ref, event_id, owner=me)
        return E.PreviewSent(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                             image_id=action.image_id, preview_ref=f"{room_id}/{event_id}",
                             media_uri=up.mxc)

    async def _remove_preview(self, action: A.RemovePreview, at: datetime) -> Any:
        """Redact the preview from the GP's chat and delete every upload made for it
        (also uploads of a preview whose message was never sent)."""
        room_id, _, event_id = action.preview_ref.partition("/")
        if room_id and event_id:
            await self._redact(room_id, event_id, action.reason, key=f"{action.key}.redact")
        mxcs = set(self.state.media_for_ref(_preview_ref(action.image_id)))
        if action.media_uri:
            mxcs.add(action.media_uri)
        deleted = True
        for mxc in sorted(mxcs):
            deleted = await self._delete_media(mxc) and deleted
        return E.PreviewRemoved(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                                image_id=action.image_id, media_deleted=deleted)

    def _on_image_cleared(self, image: Any) -> None:
        """The workflow cleared an image for posting (its transaction is still open):
        encrypt and upload it now, so the upload overlaps the vault write and the
        commit. The ciphertext is unreadable without the keys, which only
        travel inside the image event; that is still sent by PostImage, after the room
        checks, and only if the transaction committed."""
        if image.image_id in self._pre_uploads:
            return
        if asyncio.current_task() in self._handling:
            self._unsettled[image.image_id] = asyncio.current_task()
        early = _early_key(getattr(image, "event_id", ""))
        since = self._early_at.pop(early, None)
        if since is not None:
            log.debug("image cleared %.1f ms after its stripped bytes were handed over",
                      (time.perf_counter() - since) * 1000)
        if self._early_bytes.get(early) == image.data and early in self._pre_uploads:
            # uploaded before the transaction (and the check), and the bytes are the same
            del self._early_bytes[early]
            self._pre_uploads[image.image_id] = asyncio.create_task(
                self._take_early(self._pre_uploads.pop(early), image), name="matrix-pre-upload")
            return
        self._pre_uploads[image.image_id] = asyncio.create_task(
            self._pre_upload(image.image_id, image.data, image.filename, image.media_type,
                             thumbnail=getattr(image, "thumbnail", None) or image.data),
            name="matrix-pre-upload")

    def _on_image_stripped(self, image: Any) -> None:
        """A JPEG's stripped bytes, before the intake transaction and before the face/text
        check if there is one: upload them now, so the upload overlaps the check and the
        transaction. Safe for the same reason as above (the keys travel only in the post),
        and only a cleared image with identical bytes may use it: a photo the check blurs
        (other bytes), holds or refuses never does, and its upload is deleted as unused.
        Ledger reference ``pre.early.<event id>`` until a cleared image takes it. Under a
        check the thumbnail is not made here: the sanitizer makes it from the decode it
        does anyway, and a second decode here would take a core from the check."""
        key = _early_key(image.event_id)
        if not image.event_id or key in self._pre_uploads:
            return
        if asyncio.current_task() in self._handling:
            self._unsettled[key] = asyncio.current_task()
        self._early_bytes[key] = image.data
        self._early_at[key] = time.perf_counter()
        self._pre_uploads[key] = asyncio.create_task(
            self._pre_upload(key, image.data, "image", image.media_type,
                             thumbnail=None if image.checking else image.data),
            name="matrix-early-upload")

    async def _take_early(self, task: asyncio.Task, image: Any) -> tuple[Any, int, str, str, Any] | None:
        """An early upload, taken by the cleared image: filed in the ledger under that image
        (so a restart keeps it while its post is pending) and given its file name (the
        event carries the name; the upload itself was sent as "image"). The sanitizer's
        thumbnail, if it made one, is uploaded meanwhile."""
        ref = _pre_ref(image.image_id)
        ready = getattr(image, "thumbnail", None)
        thumb_task = asyncio.ensure_future(self._thumbnail(ready, image.filename, ref)) if ready else None
        try:
            hit = await task
        except BaseException:
            if thumb_task is not None:
                thumb_task.cancel()
            raise
        late = await thumb_task if thumb_task is not None else None
        if hit is None:  # PostImage uploads from the vault, with its own thumbnail
            if late is not None:
                await self._delete_media(late.upload.mxc)
            return None
        up, size, _, media_type, thumb = hit
        self.state.retag_media(up.mxc, ref)
        if thumb is not None:
            self.state.retag_media(thumb.upload.mxc, ref)
            if late is not None:  # not expected: the early one made none under a check
                await self._delete_media(late.upload.mxc)
        return up, size, image.filename, media_type, thumb or late

    async def _pre_upload(self, image_id: str, data: bytes, filename: str, media_type: str, *,
                          thumbnail: Any = None) -> tuple[Any, int, str, str, Any] | None:
        """(upload, size, filename, type, thumbnail or None), or None if it failed
        (PostImage then uploads from the vault). ``thumbnail``: bytes to make one from (in
        a worker thread while the image is encrypted and uploaded), one already made by the
        sanitizer, or None for none."""
        t0 = time.perf_counter()
        thumb_task = asyncio.ensure_future(self._thumbnail(thumbnail, filename, _pre_ref(image_id)))
        try:
            async with self._upload_slots:
                up = await nioclient.upload_encrypted(self.client, data, filename, media_type)
        except asyncio.CancelledError:
            thumb_task.cancel()
            raise
        except Exception as exc:
            log.warning("pre-upload failed (%s); the image will be uploaded when posted",
                        type(exc).__name__)
            thumb = await thumb_task
            if thumb is not None:
                try:
                    await self._delete_media(thumb.upload.mxc)
                except TransientError:
                    pass  # in the ledger without an event: swept at the next start
            return None
        # in the ledger at once, so it is deleted even if it is never used
        self.state.record_media(up.mxc, "posted", _pre_ref(image_id), owner=self.client.user_id)
        t1 = time.perf_counter()
        thumb = await thumb_task
        log.debug("pre-uploaded an image in %.1f ms, then waited %.1f ms for its thumbnail",
                  (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000)
        return up, len(data), filename, media_type, thumb

    async def _thumbnail(self, source: Any, filename: str, ref: str) -> Any:
        """The clean image's encrypted thumbnail, uploaded and in the media ledger under
        ``ref``; None when there is none (no ``source``, a small image, or it failed: the
        image is then posted without one rather than later). ``source``: the clean bytes,
        or a thumbnail the sanitizer already made from them."""
        if source is None:
            return None
        try:
            thumb = await nioclient.upload_thumbnail(self.client, source, filename)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("no thumbnail for an image (%s)", type(exc).__name__)
            return None
        if thumb is not None:
            self.state.record_media(thumb.upload.mxc, "thumbnail", ref, owner=self.client.user_id)
        return thumb

    async def _take_pre_upload(self, action: A.PostImage) -> tuple[Any, int, Any] | None:
        task = self._pre_uploads.pop(action.image_id, None)
        if task is None:
            return None
        try:
            hit = await task
        except Exception:
            return None
        if hit is None:
            return None
        up, size, filename, media_type, thumb = hit
        if (filename, media_type) != (action.filename, action.media_type):
            for unused in (up, thumb and thumb.upload):  # not what this action posts
                if unused is not None:
                    await self._delete_media(unused.mxc)
            return None
        return up, size, thumb

    async def _drop_unused_pre_uploads(self) -> None:
        """Nothing left to post: delete finished pre-uploads no PostImage took (the
        transaction rolled back, the referral was cancelled, the post failed for good)."""
        for image_id, task in list(self._pre_uploads.items()):
            if not task.done() or image_id in self._unsettled:
                continue  # never wait here: the timers run on this task too
            del self._pre_uploads[image_id]
            self._early_bytes.pop(image_id, None)
            if task.cancelled() or task.exception() is not None or task.result() is None:
                continue
            up, *_rest, thumb = task.result()
            try:
                await self._delete_media(up.mxc)
                if thumb is not None:
                    await self._delete_media(thumb.upload.mxc)
            except TransientError:
                # stays in the media ledger (swept at the next start); the ciphertext is
                # useless without the keys, which were never sent anywhere
                log.warning("could not delete an unused pre-upload")

    async def _drop_orphan_pre_uploads(self) -> None:
        """At start: pre-uploads are only held in memory, so one the ledger shows without
        an event is from before a crash or stop. It is deleted unless its image still has
        a PostImage in the outbox: the crash may have come after that post was sent and
        before its event was recorded, and the re-run then ties it to the event. The same
        for a preview's uploads without an event and without a SendPreview to finish."""
        pending = [entry.action for entry in await self.store.pending_actions(limit=100_000)]
        posting = {a.image_id for a in pending if isinstance(a, A.PostImage)}
        previewing = {a.image_id for a in pending if isinstance(a, A.SendPreview)}
        for prefix, busy in ((_pre_ref(""), posting), (_preview_ref(""), previewing)):
            for mxc, ref in self.state.unposted_media(prefix):
                if ref[len(prefix):] in busy:
                    continue
                try:
                    await self._delete_media(mxc)
                except TransientError:
                    log.warning("could not delete an upload left from the last run")

    async def _redact(self, room_id: str, event_id: str, reason: str, key: str) -> bool:
        """Redact an event; False if the server refuses for good (the bot may not, or is
        no longer in the room). An event that is already gone counts as redacted."""
        resp = await self.client.room_redact(room_id, event_id, reason=reason, tx_id=_txn(key))
        self.state.forget_thread_event(event_id)
        if not isinstance(resp, RoomRedactResponse):
            err = nioclient.MatrixCallError.from_response("redact", resp)
            if err.errcode == "M_NOT_FOUND" or err.http == 404:
                return True
            if err.permanent:
                log.warning("redaction not possible (%s)", err.errcode or err.http)
                return False
            raise TransientError("redact")
        return True

    async def _delete_media(self, mxc: str) -> bool:
        """Delete media from the homeserver; True if a download now answers 404.

        Only media the bot uploaded itself, or media the admin API says was uploaded by
        the sender of the event that carried it: an event may name anybody's media, and
        the admin token would delete whatever it is given."""
        if self.admin is None or not self.admin.can_delete:
            return False
        owner = self.state.media_owner(mxc, self.client.user_id)
        try:
            if owner != self.client.user_id:
                exists, uploader = await self.admin.media_uploader(mxc)
                if not exists:
                    self.state.mark_media_deleted(mxc)  # nothing there to delete
                    return True
                if owner is None or uploader != owner:
                    self.state.mark_media_skipped(mxc, "not uploaded by the sender of its event")
                    self.foreign_media_refused += 1
                    log.warning("did not delete a piece of media: the sender of the event that "
                                "named it did not upload it")
                    return False
            gone = await self.admin.delete_media(mxc)
        except ValueError:  # not an mxc:// URI at all
            self.state.mark_media_skipped(mxc, "not an mxc URI")
            return False
        except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
            raise TransientError("media delete") from exc
        if gone.verified:
            self.state.mark_media_deleted(mxc)
        else:
            log.warning("media deletion could not be verified")
        return gone.verified

    async def _redact_upload(self, upload_ref: str, reason: str) -> None:
        room_id, _, event_id = upload_ref.partition("/")
        if not room_id or not event_id:
            return
        await self._redact(room_id, event_id, reason, key=f"redact.{event_id}")
        for mxc in self.state.media_for_ref(upload_ref):
            await self._delete_media(mxc)

    async def _remove_images(self, action: A.RemoveImages, at: datetime) -> Any:
        room_id = self.s.specialty_rooms.get(action.specialty)
        all_deleted = True
        refused = 0
        for img in action.images:
            if room_id and img.room_event_id:
                if not await self._redact(room_id, img.room_event_id, action.reason,
                                          key=f"{action.key}.{img.image_id}"):
                    refused += 1
            mxcs = set(self.state.media_for_event(img.room_event_id or "")) if img.room_event_id else set()
            if img.media_uri:
                # posted by this transport (ImagePosted): the bot's own upload
                self.state.record_media(img.media_uri, "posted", action.key, img.room_event_id,
                                        owner=self.client.user_id)
                mxcs.add(img.media_uri)
            for mxc in sorted(mxcs):
                ok = await self._delete_media(mxc)
                all_deleted = all_deleted and ok
        title = self.s.specialty_titles.get(action.specialty) or action.specialty
        if refused:
            # the events stay in the room's history (their media is gone where deleted):
            # a permanent failure, so the GP and the operator hear about it
            raise PermanentFailure(
                f"I could not redact {refused} image(s) of {action.referral_id} in the {title} room "
                f"(I am not allowed to, or was removed from it); "
                + ("their media was deleted from the server." if all_deleted else
                   "an administrator must remove them."))
        if room_id and action.placeholder:
            root = action.thread_root_event_id
            try:
                await self._say(room_id, action.placeholder, key=f"{action.key}.placeholder",
                                thread_root=root)
            except PermanentFailure:
                log.warning("could not post the removal placeholder (refused)")
        return E.ImagesRemoved(event_id=f"done:{action.key}", at=at,
                               referral_id=action.referral_id,
                               image_ids=tuple(i.image_id for i in action.images),
                               media_deleted=all_deleted)
