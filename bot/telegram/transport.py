"""The Telegram transport: Bot API updates -> domain events -> Workflow; outbox -> Bot API.

Same loop as the Matrix transport (docs/ARCHITECTURE.md): each update becomes one domain
event (``event_id = "tg:<chat>:<message>"``, so a re-delivered update is a no-op), the
workflow enqueues actions, and :meth:`TelegramTransport.drain` executes them in order and
reports the outcome back as feedback events. A tick runs once at start and then every
``tick_seconds``.

Telegram mapping:

* the GP's **private chat** with the bot is the ``DirectChat``;
* each specialty is a **forum supergroup**; a referral's thread is a **forum topic**
  (``createForumTopic``), identified as ``"<chat id>:<topic id>"``;
* an image in the topic is a photo message ``"<chat id>:<message id>"``; removing it is
  ``deleteMessage`` (Telegram allows that for 48 h only: the policy is fitted to the window
  by :func:`bot.telegram.config.fit_policy_to_telegram`).

Telegram is NOT end-to-end encrypted. Unless ``[telegram] allow_images = true``, nothing
carrying patient data is accepted here: photos and files are deleted from the private chat
and refused, and ``!consent`` / ``!refer`` (which carry a patient reference or a clinical
question) are refused too, pointing to the encrypted channel. What remains is ``!help``,
``!status`` and data-free notifications (see :mod:`bot.telegram.notifier`).

A held photo's preview (``SendPreview``) goes to the GP's private chat as a photo only when
the operator also set ``preview_images = true``; otherwise as words (what was found and
blurred, how to confirm), since the preview is exactly the image nobody has yet confirmed
to be de-identified. ``RemovePreview`` deletes that message.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from telegram import Bot, InputFile, Message, Update
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError, TimedOut

from bot.outbox import OutboxLoop, PermanentFailure, StoreUnavailable
from bot.telegram.config import TelegramConfig
from handlers import actions as A
from handlers import events as E
from handlers.commands import CommandError, ConsentCmd, ReferCmd, parse_command
from handlers.model import Actor

log = logging.getLogger("referral_bot.telegram")

UTC = timezone.utc

NOT_E2EE_TEXT = (
    "Telegram is not end-to-end encrypted, so this bot does not take patient details, consent, "
    "referrals or images here. Use the bot in your encrypted Matrix chat instead."
)
NOT_LISTED_TEXT = (
    "You are not on this service's list of clinicians for Telegram; ask your administrator to add you."
)
NO_IMAGES_IN_GROUP_TEXT = (
    "Please send images to me in a private chat, not here: I strip their metadata and post them safely."
)
UNSUPPORTED_TEXT = "I only understand commands (type !help) and photos or image files."


def utcnow() -> datetime:
    return datetime.now(UTC)


class TransientError(Exception):
    """Worth retrying later (network, Telegram 5xx, flood control)."""


class ChatUnsafe(Exception):
    """The specialty group fails the checks; str() is one plain sentence."""


@dataclass
class TelegramSettings:
    config: TelegramConfig
    directory: dict[str, Actor]  # directory user id -> Actor
    specialty_titles: dict[str, str] = field(default_factory=dict)
    #: specialty -> directory user ids on its roster: the only people (with the bot) who
    #: may be in its group. None for a specialty: every clinician mapped to Telegram.
    rosters: dict[str, frozenset[str]] | None = None


def _replied_to(msg: Message) -> str | None:
    """The event id (our ``tg:<chat>:<message>`` form) of the message *msg* answers."""
    target = msg.reply_to_message
    return f"tg:{msg.chat.id}:{target.message_id}" if target is not None else None


def _split_ref(ref: str) -> tuple[int, int]:
    chat, _, rest = ref.partition(":")
    return int(chat), int(rest)


class TelegramTransport(OutboxLoop):
    transient_errors = (TransientError, TimedOut, NetworkError, RetryAfter, OSError)
    max_backoff = 30.0

    def __init__(self, bot: Bot, store: Any, workflow: Any, settings: TelegramSettings,
                 clock: Callable[[], datetime] = utcnow,
                 exporter: Callable[[str], Awaitable[str]] | None = None,
                 metrics: Any = None, filer: Any = None):
        super().__init__(store, workflow, clock, settings.config.tick_seconds)
        self.filer = filer  # filing.filer.Filer (docs/filing.md)
        self.bot = bot
        self.s = settings
        self.cfg = settings.config
        self.exporter = exporter
        self.metrics = metrics
        self.name = "telegram"
        self._offset: int | None = None
        self.last_sync_at: float | None = None  # monotonic time of the last successful getUpdates
        self.poll_failures = 0
        self.failed_events = 0  # updates whose handling raised (a bug): logged, skipped alone
        self.delete_failures = 0

    # ================================================================= lifecycle
    async def start(self, loops: bool = True) -> None:
        """Check the token (getMe), run due timers and the pending outbox, start the loops."""
        await self.bot.initialize()
        await self.tick()
        if loops:
            self._tasks = [asyncio.create_task(self._poll_loop(), name="telegram-poll"),
                           asyncio.create_task(self._tick_loop(), name="telegram-tick")]

    async def stop(self) -> None:
        await self._stop_tasks()
        try:
            await self.bot.shutdown()
        except Exception:
            pass

    async def _poll_loop(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                await self.poll_once(self.cfg.poll_timeout_seconds)
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.poll_failures += 1
                log.warning("getUpdates failed (%s); retrying in %.1f s", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    # ================================================================= updates
    async def poll_once(self, timeout: float = 0) -> int:
        """One getUpdates round: handle every update, then drain the outbox."""
        updates = await self.bot.get_updates(offset=self._offset, timeout=int(timeout),
                                             allowed_updates=["message"])
        self.last_sync_at = time.monotonic()
        for update in updates:
            try:
                await self._on_update(update)
            except TransientError:
                # not acknowledged: the same update comes again on the next poll
                log.warning("an update hit a network problem; it will be retried")
                return 0
            except StoreUnavailable:
                # the store failed (logged and counted): not acknowledged either; wait out
                # the store's backoff rather than fetch the same update again at once
                await asyncio.sleep(max(0.5, self._store_until - time.monotonic()))
                return 0
            except (TimedOut, NetworkError):
                log.warning("an update hit a network problem; it will be retried")
                return 0
            except Exception as exc:  # one bad update must not block every later one
                self.failed_events += 1
                log.error("an update could not be handled (%s); skipped", type(exc).__name__)
            self._offset = update.update_id + 1
        if updates:
            await self.drain()
        return len(updates)

    async def _on_update(self, update: Update) -> None:
        msg = update.message
        if msg is None or msg.from_user is None or msg.from_user.is_bot:
            return
        if msg.chat.type == "private":
            await self._on_private(msg)
            return
        specialty = self.cfg.specialty_for_chat(msg.chat.id)
        if specialty is not None:
            await self._on_group(msg, specialty)
        else:
            log.info("ignored a message from a chat that is not configured")

    def _refuse(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.count_refusal("telegram", reason)

    async def _on_private(self, msg: Message) -> None:
        chat_id = msg.chat.id
        has_file = bool(msg.photo or msg.document or msg.video or msg.animation)
        user_id = self.cfg.users.get(msg.from_user.id)
        if user_id is None:
            self._refuse("not_listed")
            if has_file:
                await self._delete_quietly(chat_id, msg.message_id)
            await self._send_quietly(chat_id, NOT_LISTED_TEXT)
            return
        actor = self.s.directory.get(user_id) or Actor(user_id=user_id, may_refer=False)
        event_id = f"tg:{chat_id}:{msg.message_id}"
        place = E.DirectChat(user_id=user_id)
        at = self.clock()
        if has_file:
            if not self.cfg.allow_images:
                self._refuse("telegram_not_e2ee")
                await self._delete_quietly(chat_id, msg.message_id)
                await self._send_quietly(chat_id, NOT_E2EE_TEXT)
                return
            await self._on_upload(msg, actor, event_id, place, at)
            return
        text = msg.text or ""
        if not text:
            await self._send_quietly(chat_id, UNSUPPORTED_TEXT)
            return
        if not self.cfg.allow_images and self._carries_patient_data(text):
            self._refuse("telegram_not_e2ee")
            await self._delete_quietly(chat_id, msg.message_id)
            await self._send_quietly(chat_id, NOT_E2EE_TEXT)
            return
        await self._handle(E.CommandReceived(event_id=event_id, actor=actor, at=at, text=text, place=place,
                                             in_reply_to=_replied_to(msg)))

    @staticmethod
    def _carries_patient_data(text: str) -> bool:
        try:
            cmd = parse_command(text)
        except CommandError:
            return False
        return isinstance(cmd, (ConsentCmd, ReferCmd))

    async def _on_upload(self, msg: Message, actor: Actor, event_id: str, place: E.DirectChat,
                         at: datetime) -> None:
        if msg.photo:
            item = msg.photo[-1]  # the largest size
            filename, mimetype, size = f"photo-{msg.message_id}.jpg", "image/jpeg", item.file_size
        else:
            item = msg.document or msg.video or msg.animation
            filename = getattr(item, "file_name", None) or f"upload-{msg.message_id}"
            mimetype = getattr(item, "mime_type", None) or ""
            size = item.file_size
        data = b""
        if size is None or size <= self.cfg.max_image_bytes:
            data = await self._download(item.file_id)
            if len(data) > self.cfg.max_image_bytes:
                data = b""
        # else: declared too large; the workflow refuses an empty upload with a clear message
        await self._handle(E.ImageReceived(
            event_id=event_id, actor=actor, at=at, data=data, filename=str(filename),
            declared_mimetype=str(mimetype), upload_ref=f"{msg.chat.id}:{msg.message_id}", place=place,
            caption=msg.caption or "", in_reply_to=_replied_to(msg)))

    async def _download(self, file_id: str) -> bytes:
        delay = 0.5
        for _ in range(5):
            try:
                f = await self.bot.get_file(file_id)
                return bytes(await f.download_as_bytearray())
            except BadRequest:
                return b""  # gone or invalid: a corrupt upload as far as the workflow goes
            except (TimedOut, NetworkError, RetryAfter):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)
        raise TransientError("download")

    async def _on_group(self, msg: Message, specialty: str) -> None:
        user_id = self.cfg.users.get(msg.from_user.id)
        thread_id = msg.message_thread_id if msg.is_topic_message else None
        if msg.photo or msg.document or msg.video:
            await self._send_quietly(msg.chat.id, NO_IMAGES_IN_GROUP_TEXT, thread_id)
        if user_id is None:
            return  # people outside the directory are not heard in specialty groups
        actor = self.s.directory.get(user_id) or Actor(user_id=user_id, may_refer=False)
        place = E.SpecialtyThread(specialty=specialty,
                                  thread_event_id=f"{msg.chat.id}:{thread_id}" if thread_id else None)
        event_id = f"tg:{msg.chat.id}:{msg.message_id}"
        text = (msg.text or msg.caption or "").strip()
        at = self.clock()
        if text.startswith(("!", "/")):
            await self._handle(E.CommandReceived(event_id=event_id, actor=actor, at=at, text=text, place=place))
        elif thread_id is not None:
            # the words are relayed to the GP only where the operator opted in to clinical
            # data on Telegram (without it no referral lives here anyway)
            await self._handle(E.ThreadActivity(event_id=event_id, actor=actor, at=at, place=place,
                                                text=text if self.cfg.allow_images else ""))

    # ================================================================= outbox hooks
    def _retry_wait(self, exc: BaseException, wait: float) -> float:
        """Telegram's flood control says how long to wait: never retry sooner."""
        if isinstance(exc, RetryAfter):
            ra = exc.retry_after
            return max(wait, ra.total_seconds() if hasattr(ra, "total_seconds") else float(ra))
        return wait

    # ================================================================= actions
    def _failed(self, action: A.Action, reason: str, referral_id: str | None) -> E.ActionFailed:
        self._refuse(f"action_{type(action).__name__}")
        return E.ActionFailed(event_id=f"done:{action.key}", at=self.clock(), action_key=action.key,
                              action_type=type(action).__name__, reason=reason,
                              referral_id=referral_id, permanent=True,
                              image_id=getattr(action, "image_id", None))

    def _title(self, specialty: str) -> str:
        return self.s.specialty_titles.get(specialty) or specialty.capitalize()

    async def _execute(self, action: A.Action) -> Any:
        at = self.clock()
        if self.filer is not None and self.filer.handles(action):
            return await self.filer.execute(action)
        try:
            if isinstance(action, A.Reply):
                sent = await self._reply(action.to, action.text)
                return self._sent(action, sent if isinstance(action.to, E.DirectChat) else None, at)
            if isinstance(action, A.Notify):
                sent = await self._reply(E.DirectChat(user_id=action.user_id), action.text)
                return self._sent(action, sent, at)
            if isinstance(action, A.Acknowledge):
                return None  # a delivery mark is a Matrix reaction; Telegram bots have no cheap equivalent
            if isinstance(action, A.PostThreadRoot):
                return await self._post_root(action, at)
            if isinstance(action, A.PostImage):
                return await self._post_image(action, at)
            if isinstance(action, A.RedactOriginalUpload):
                chat_id, message_id = _split_ref(action.upload_ref)
                await self._delete(chat_id, message_id)
                return None
            if isinstance(action, A.RemoveImages):
                return await self._remove_images(action, at)
            if isinstance(action, A.SendPreview):
                return await self._send_preview(action, at)
            if isinstance(action, A.RemovePreview):
                return await self._remove_preview(action, at)
            if isinstance(action, A.ExportReferral):
                return await self._export(action, at)
        except (BadRequest, Forbidden) as exc:
            # permanent for this action (chat gone, bot blocked or removed, bad parameters):
            # the outbox sets it aside, tells the workflow, and lists it for the operator
            log.warning("Telegram refused %s: %s", type(action).__name__, _short(exc))
            self._refuse(f"action_{type(action).__name__}")
            raise PermanentFailure("Telegram refused the request; check the bot's rights in the group.") from None
        log.warning("unknown action %s skipped", type(action).__name__)
        return None

    @staticmethod
    def _sent(action: Any, sent: Message | None, at: datetime) -> E.MessageSent | None:
        """Tie a direct-chat message about a referral to it, so a reply to it names it."""
        if sent is None or not action.referral_id:
            return None
        return E.MessageSent(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                             room_event_id=f"tg:{sent.chat.id}:{sent.message_id}")

    async def _reply(self, to: Any, text: str) -> Message | None:
        if isinstance(to, E.DirectChat):
            chat_id = self.cfg.telegram_id_for(to.user_id)
            if chat_id is None:
                log.warning("a reply to a clinician without a Telegram account was dropped")
                return None
            return await self.bot.send_message(chat_id, text)
        elif isinstance(to, E.SpecialtyThread):
            chat_id = self.cfg.specialty_chats.get(to.specialty)
            if chat_id is None:
                log.warning("a reply to a specialty without a Telegram group was dropped")
                return None
            thread = await self._thread_for(to)
            return await self.bot.send_message(chat_id, text, message_thread_id=thread)
        return None

    async def _thread_for(self, place: E.SpecialtyThread) -> int | None:
        ref = place.thread_event_id
        if ref is None and place.referral_id:
            async with self.store.transaction() as tx:
                referral = await tx.get_referral(place.referral_id)
            ref = getattr(referral, "thread_root_event_id", None) if referral else None
        if not ref:
            return None
        return _split_ref(ref)[1]

    async def _safe_chat(self, specialty: str) -> int:
        """The specialty's forum supergroup, if it is a forum and has nobody unexpected in it."""
        chat_id = self.cfg.specialty_chats.get(specialty)
        title = self._title(specialty)
        if chat_id is None:
            raise ChatUnsafe(f"No Telegram group is configured for {title}.")
        try:
            chat = await self.bot.get_chat(chat_id)
        except BadRequest:
            raise ChatUnsafe(f"I am not a member of the {title} Telegram group; add me to it.") from None
        if not chat.is_forum:
            raise ChatUnsafe(f"The {title} Telegram group does not have Topics turned on; turn them on.")
        await self._check_members(chat_id, specialty, title)
        return chat_id

    async def _check_members(self, chat_id: int, specialty: str, title: str) -> None:
        """Who is actually in the group, not how many: a bot cannot list a group's members,
        but it can list the administrators and ask about each person on the roster. Every
        administrator must be on the specialty's roster (or be the bot), and the member
        count must not exceed the roster members found in the group plus the bot; anybody
        else (a stranger, a GP, a specialist of another specialty) makes it unsafe."""
        roster = None if self.s.rosters is None else self.s.rosters.get(specialty, frozenset())
        roster_tg = {tg for tg, uid in self.cfg.users.items() if roster is None or uid in roster}
        bot_id = self.bot.id
        admins = {m.user.id for m in await self.bot.get_chat_administrators(chat_id)}
        strangers = sorted(a for a in admins if a != bot_id and a not in roster_tg)
        if strangers:
            raise ChatUnsafe(
                f"The {title} Telegram group has {len(strangers)} administrator(s) who are not on the "
                f"{title} roster, so I will not post referrals there; remove them, or add them to the "
                f"roster in my configuration.")
        present = set(admins) | {bot_id}
        for tg in sorted(roster_tg - present):
            try:
                member = await self.bot.get_chat_member(chat_id, tg)
            except BadRequest:
                continue  # never met this user: not in the group
            if member.status in ("member", "administrator", "creator") or (
                    member.status == "restricted" and getattr(member, "is_member", False)):
                present.add(tg)
        count = await self.bot.get_chat_member_count(chat_id)
        if count > len(present):
            others = count - len(present)
            raise ChatUnsafe(
                f"The {title} Telegram group has {others} member(s) who are not on the {title} roster, "
                f"so I will not post referrals there; remove them, or add them to the roster in my "
                f"configuration.")

    async def _post_root(self, action: A.PostThreadRoot, at: datetime) -> Any:
        try:
            chat_id = await self._safe_chat(action.specialty)
        except ChatUnsafe as why:
            return self._failed(action, str(why), action.referral_id)
        text = action.text
        if not self.cfg.allow_images:
            # no clinical question over Telegram without the opt-in
            text = (f"New referral {action.referral_id} for {self._title(action.specialty)}. "
                    f"Open it in the encrypted Matrix room.")
        topic = await self.bot.create_forum_topic(chat_id, f"{action.referral_id} · {self._title(action.specialty)}"[:128])
        await self.bot.send_message(chat_id, text, message_thread_id=topic.message_thread_id)
        return E.ThreadRootPosted(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                                  room_event_id=f"{chat_id}:{topic.message_thread_id}")

    async def _post_image(self, action: A.PostImage, at: datetime) -> Any:
        if not self.cfg.allow_images:
            return self._failed(action, "Images are not posted on Telegram: it is not end-to-end encrypted "
                                        "and the operator has not opted in.", action.referral_id)
        try:
            chat_id = await self._safe_chat(action.specialty)
        except ChatUnsafe as why:
            return self._failed(action, str(why), action.referral_id)
        data = await self.store.vault_get(action.image_id)
        if data is None:
            return self._failed(action, "The image is no longer in the vault.", action.referral_id)
        thread = _split_ref(action.thread_root_event_id)[1]
        try:
            sent = await self.bot.send_photo(chat_id, InputFile(data, filename=action.filename),
                                             message_thread_id=thread, caption=action.filename)
            media = sent.photo[-1].file_unique_id if sent.photo else ""
        except BadRequest:
            # too large or unusual dimensions for a Telegram photo: send the file as is
            sent = await self.bot.send_document(chat_id, InputFile(data, filename=action.filename),
                                                message_thread_id=thread, caption=action.filename)
            media = sent.document.file_unique_id if sent.document else ""
        return E.ImagePosted(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                             image_id=action.image_id, room_event_id=f"{chat_id}:{sent.message_id}",
                             media_uri=f"tg-file:{media}")

    async def _send_preview(self, action: A.SendPreview, at: datetime) -> Any:
        """The held photo's preview in the GP's private chat: the blurred vault copy as a
        photo when the operator allowed previews here, else the words only."""
        chat_id = self.cfg.telegram_id_for(action.user_id)
        if chat_id is None:
            return self._failed(action, "you have no Telegram chat with me.", action.referral_id)
        media = ""
        if self.cfg.preview_images:
            data = await self.store.vault_get(action.image_id)
            if data is None:
                return self._failed(action, "The photo is no longer held.", action.referral_id)
            try:
                sent = await self.bot.send_photo(chat_id, InputFile(data, filename=action.filename),
                                                 caption=action.text)
                media = sent.photo[-1].file_unique_id if sent.photo else ""
            except BadRequest:  # too large or unusual dimensions for a Telegram photo
                sent = await self.bot.send_document(chat_id, InputFile(data, filename=action.filename),
                                                    caption=action.text)
                media = sent.document.file_unique_id if sent.document else ""
            media = f"tg-file:{media}"
        else:
            sent = await self.bot.send_message(chat_id, action.text_without_image)
        return E.PreviewSent(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                             image_id=action.image_id, preview_ref=f"{chat_id}:{sent.message_id}",
                             media_uri=media)

    async def _remove_preview(self, action: A.RemovePreview, at: datetime) -> Any:
        """Delete the preview message. Telegram has no way to delete the file from its
        servers, so ``media_deleted`` is False (audited as such)."""
        if action.preview_ref:
            chat_id, message_id = _split_ref(action.preview_ref)
            await self._delete(chat_id, message_id)
        return E.PreviewRemoved(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                                image_id=action.image_id, media_deleted=False)

    async def _delete(self, chat_id: int, message_id: int) -> bool:
        """Delete a message. True if it is gone (deleted now or already), False if Telegram
        refuses (older than 48 h, or no rights)."""
        try:
            await self.bot.delete_message(chat_id, message_id)
            return True
        except BadRequest as exc:
            text = str(exc).lower()
            if "not found" in text:
                return True
            self.delete_failures += 1
            if self.metrics is not None:
                self.metrics.count_delete_failure("telegram")
            log.error("Telegram would not delete a message (%s)", _short(exc))
            return False

    async def _remove_images(self, action: A.RemoveImages, at: datetime) -> Any:
        removed: list[str] = []
        for ref in action.images:
            chat_id, message_id = _split_ref(ref.room_event_id)
            if await self._delete(chat_id, message_id):
                removed.append(ref.image_id)
        chat_id = self.cfg.specialty_chats.get(action.specialty)
        stuck = len(action.images) - len(removed)
        if chat_id is not None and action.thread_root_event_id:
            thread = _split_ref(action.thread_root_event_id)[1]
            notes = []
            if removed and action.placeholder:
                notes.append(action.placeholder)
            if stuck:
                notes.append(f"I could not delete {stuck} image(s) of {action.referral_id} here: Telegram lets "
                             f"a bot delete messages only for 48 hours. A group admin must delete them by hand.")
            for note in notes:
                try:
                    await self.bot.send_message(chat_id, note, message_thread_id=thread)
                except BadRequest as exc:
                    log.warning("could not post the removal notice (%s)", _short(exc))
        # Telegram has no API to delete a file from its servers: media_deleted is False.
        # Images Telegram refused to delete are not reported, so they stay "in chat".
        return E.ImagesRemoved(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id,
                               image_ids=tuple(removed), media_deleted=False)

    async def _export(self, action: A.ExportReferral, at: datetime) -> Any:
        if self.exporter is None:
            return self._failed(action, "Export is not available from Telegram; ask the operator to run "
                                        "`referral-bot export`.", action.referral_id)
        try:
            where = await self.exporter(action.referral_id)
        except Exception:
            log.exception("export failed")
            return self._failed(action, "The export failed; try again later.", action.referral_id)
        await self._reply(action.reply_to, f"Exported {action.referral_id} to {where}.")
        return E.ExportCompleted(event_id=f"done:{action.key}", at=at, referral_id=action.referral_id)

    # ================================================================= helpers
    async def _send_quietly(self, chat_id: int, text: str, thread_id: int | None = None) -> None:
        try:
            await self.bot.send_message(chat_id, text, message_thread_id=thread_id)
        except TelegramError as exc:
            log.warning("could not send a notice (%s)", _short(exc))

    async def _delete_quietly(self, chat_id: int, message_id: int) -> None:
        try:
            await self._delete(chat_id, message_id)
        except TelegramError as exc:
            log.warning("could not delete a refused upload (%s)", _short(exc))


def _short(exc: Exception) -> str:
    """An exception as a short string that never carries a URL (which would hold the token)."""
    text = f"{type(exc).__name__}: {exc}"
    return text.split("http", 1)[0][:200]
