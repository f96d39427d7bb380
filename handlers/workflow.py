"""The workflow: ``await Workflow(...).handle(event) -> list[Action]``.

One store transaction per event (docs/ARCHITECTURE.md): mark the event processed
(a repeat is a no-op), load, decide with the pure rules (handlers/commands.py,
handlers/consent.py, handlers/lifecycle.py), save, audit, put/shred vault items,
and enqueue the resulting actions in the outbox. The returned list is what was
enqueued (handy for tests; transports drain the outbox instead).

No network, no SQL, no clock: time comes from the event. Images are cleaned with
``handlers.sanitizer.sanitize`` in a thread by default; the bot injects its worker-process
pool (``bot/sanitize_pool.py``: memory cap, time limit) as ``sanitize``. Either way the
photo is cleaned BEFORE the store transaction, so a slow image never holds the write lock:
a short read-only step first reads the GP's open referrals' consents (they decide whether
the face/text check runs), and the transaction re-checks that decision.

Decisions (also in docs/commands.md):

* The GP's original upload is always redacted (``RedactOriginalUpload``), even when
  the image is refused: the raw photo must not stay in any chat.
* A photo goes to a referral only when it is unambiguous which one (never a guess):
  a caption naming ``R-…``, a reply to one of the bot's messages about that referral,
  or the only one of the GP's open referrals that is waiting for photos. Otherwise it
  is cleaned and held in the vault (not posted) and the GP is asked (``!photo R-…``);
  unclaimed, it is destroyed after ``Policy.unassigned_photo_ttl`` and the GP is told.
* The conversation: a roster specialist's message in the thread is relayed to the GP
  (tagged with the referral and the specialist's name); the GP's answer (a reply to
  that message, or ``!reply R-…``) is posted in the thread as "the referring GP
  (practice)". Only roster members are relayed; relays are audited, never their text.
* Lists of a GP's referrals are in the store's opening sequence, never judged by the
  wall clock, which can step back (issue 9, finding 10).
* Faces or text found and the consent does not cover identifiable images: the image is
  blurred at once (faces and text boxes) and only the blurred copy is kept, HELD until the
  GP types ``!blur R-…`` (send it blurred) or ``!discard R-…``. Nothing unblurred is posted.
  The GP first sees that blurred copy in the direct chat, marked PREVIEW (``SendPreview``);
  ``!blur`` posts the same vault item, so the same bytes. The preview goes when the image
  is posted or destroyed; an undecided held photo is destroyed after
  ``Policy.held_photo_ttl`` (handlers/lifecycle.py, "previews").
  When the consent covers identifiable images the check is not run at all (nothing depends
  on it; audited as ``image.faces_not_checked``). Replies say what was checked and what was
  found, never that something cannot be there.
* Withdrawal beats retention: every image under the consent leaves the chat and
  every vault copy is crypto-shredded at once. Opinions already given stay in
  the record (they are not the image).
* Retention applies to the vault copy, counted from receipt; export also shreds it.

A transport may set ``Workflow.on_image_cleared`` to hear about a cleaned image that is
about to be posted before the transaction commits, so it can encrypt and upload the
bytes to its media store while the rest of the event is saved (the upload reveals
nothing: the key travels only in the post, which still waits for the outbox). If the
transaction then fails, the image never gets a post and the transport drops it.

``Workflow.on_image_stripped`` comes earlier still, before the transaction: a JPEG's
stripped bytes (the marker filter decodes nothing and takes milliseconds), for a photo whose
consent needs the face/text check *before* that check runs, so the upload overlaps the check
instead of following it; for one that needs no check, as soon as it is clean. Nothing is
decided by it: the ``ClearedImage`` that follows names the same ``event_id``, and only if its
bytes are the same may the transport use that upload (a JPEG the check blurs has other
bytes). A photo held, refused or left waiting for its referral never gets a ``ClearedImage``,
and its early upload is deleted like any unused one.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from datetime import datetime
from typing import Any, Awaitable, Callable

from handlers import clock
from handlers import lifecycle as lc
from handlers.actions import Action, Notify, RedactOriginalUpload, RemoveImages, Reply
from handlers.commands import (
    HELP_GP,
    HELP_SPECIALIST,
    HELP_TOPICS,
    AddendumCmd,
    BlurCmd,
    CancelCmd,
    CommandError,
    ConsentCmd,
    ConsentShowCmd,
    DiscardCmd,
    ExportCmd,
    HelpCmd,
    MorePhotosCmd,
    OpinionCmd,
    PhotoCmd,
    ReferCmd,
    ReplyCmd,
    StatusCmd,
    WithdrawCmd,
    is_command,
    parse_command,
)
from handlers.consent import ConsentRefused, check_cover, consent_summary, describe_consent, record_consent
from handlers.events import (
    ActionFailed,
    CommandReceived,
    DirectChat,
    ExportCompleted,
    FiledCopiesPurged,
    ImagePosted,
    ImageReceived,
    ImagesRemoved,
    MessageSent,
    Place,
    PreviewRemoved,
    PreviewSent,
    RecordFiled,
    SpecialtyThread,
    ThreadActivity,
    ThreadRootPosted,
    Tick,
)
from handlers.identifiers import find_identifiers, held_message
from handlers.ids import find_ids, make_id
from handlers.model import (
    BOT_ACTOR,
    Actor,
    AuditEntry,
    ConsentRecord,
    ImageItem,
    ImageState,
    Referral,
    ReferralState,
    UnassignedPhoto,
)
from handlers.patientref import PATIENT_REF_MEDIA_TYPE, PatientRefHasher, normalise_patient_ref, patient_ref_vault_id
from handlers.policy import Policy
from handlers.referral import about_patient, guard_referral, intimate_reason
from handlers.timefmt import fmt_clock, fmt_date, local_date
from storage.interfaces import RecordUnreadable, Store, StoreError, Transaction

__all__ = ["ClearedImage", "StrippedImage", "Workflow"]

_BLUR_LABELS = ("faces (blurred)", "text on the photo (blurred)")  # not metadata: left out of "Removed:"

log = logging.getLogger(__name__)

_STATE_WORDS = {
    ReferralState.OPENED: "waiting for images",
    ReferralState.IMAGES_RECEIVED: "images received, posting",
    ReferralState.POSTED: "posted, waiting for the specialists",
    ReferralState.DISCUSSED: "being discussed",
    ReferralState.OPINION_GIVEN: "opinion given",
    ReferralState.IMAGES_EXPIRED: "removing images",
    ReferralState.CLOSED: "closed",
}


@dataclasses.dataclass(frozen=True)
class ClearedImage:
    """A cleaned image the workflow has decided to post (see ``on_image_cleared``)."""

    referral_id: str
    image_id: str
    filename: str
    media_type: str
    data: bytes
    event_id: str = ""  # the GP's upload it came from (matches a StrippedImage)
    thumbnail: Any = None  # the sanitizer's thumbnail of exactly these pixels, when it made one


@dataclasses.dataclass(frozen=True)
class StrippedImage:
    """A JPEG's stripped bytes before the transaction (see ``on_image_stripped``)."""

    event_id: str
    media_type: str
    data: bytes
    checking: bool  # the face/text check runs next (and may blur: other bytes)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """An uploaded image cleaned before the transaction (or why it could not be)."""

    checked: bool  # the face/text check ran (and what it found is blurred)
    result: Any = None
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True)
class _Kept:
    """A held photo's clean copy, shaped like a sanitizer result for ``_attach``."""

    data: bytes
    media_type: str
    extension: str
    width: int
    height: int
    faces: int = 0
    text_regions: int = 0
    faces_blurred: bool = False
    text_blurred: bool = False
    removed: tuple[str, ...] = ()


class _RulesFailed(Exception):
    """The lifecycle rules raised for one referral in a tick (a bug for its data): that
    referral is set aside; a store or machine failure is not this and stops the tick."""


class _Refuse(Exception):
    """A plain refusal: reply with the message, change nothing else (but keep audit)."""

    def __init__(self, message: str, *, audit: AuditEntry | None = None):
        super().__init__(message)
        self.audit = audit


class _Ctx:
    """What one handled event accumulates before the transaction ends."""

    def __init__(self, tx: Transaction, key_prefix: str):
        self.tx = tx
        self.key_prefix = key_prefix
        self.actions: list[Action] = []
        self.prepared: _Prepared | None = None  # an image cleaned before the transaction

    async def apply(self, ref: Referral, eff: lc.Effects) -> Referral:
        await self.tx.save_referral(ref)
        for entry in eff.audit:
            await self.tx.append_audit(entry)
        for image_id in eff.shred:
            await self.tx.vault_shred(image_id)
        self.actions.extend(eff.actions)
        return ref

    def add(self, *actions: Action) -> None:
        self.actions.extend(actions)

    async def flush(self) -> list[Action]:
        stamped = [dataclasses.replace(a, key=f"{self.key_prefix}/{i}") for i, a in enumerate(self.actions)]
        if stamped:
            await self.tx.enqueue(stamped)
        return stamped


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _found_words(result: Any) -> str:
    """'1 face', '2 faces and 1 text area': what the identifiability check found."""
    return lc.found_words(result.faces, result.text_regions)


class Workflow:
    """The bot's behaviour, transport-independent.

    ``store``: a ``storage.interfaces.Store``; ``policy``: ``handlers.policy.Policy``;
    ``hasher``: ``PatientRefHasher``; ``sanitize``: the sanitizer function (default
    ``handlers.sanitizer.sanitize``), ``limits``: sanitizer ``Limits`` (default theirs).
    """

    def __init__(
        self,
        store: Store,
        policy: Policy,
        hasher: PatientRefHasher,
        sanitize: Callable[..., Any] | None = None,
        limits: Any = None,
    ):
        if sanitize is None:
            from handlers.sanitizer import sanitize as default_sanitize

            sanitize = default_sanitize
        self.store = store
        self.policy = policy
        self.hasher = hasher
        self._sanitize = sanitize
        self._sanitize_is_async = inspect.iscoroutinefunction(sanitize) or inspect.iscoroutinefunction(
            getattr(sanitize, "__call__", None))
        self._limits = limits
        #: called (synchronously, inside the transaction) with a ClearedImage; see the
        #: module docstring. Must not block or raise.
        self.on_image_cleared: Callable[[ClearedImage], None] | None = None
        #: called (synchronously, outside any transaction, before the check if there is one)
        #: with a StrippedImage; see the module docstring. Must not block or raise.
        self.on_image_stripped: Callable[[StrippedImage], None] | None = None

    # ------------------------------------------------------------------ entry point
    async def handle(self, event: Any) -> list[Action]:
        if isinstance(event, Tick):
            try:
                return await self._tick(event.at)
            finally:
                await self.store.housekeeping()  # e.g. a WAL truncation a reader blocked
        user_event = isinstance(event, (CommandReceived, ImageReceived))
        try:
            prepared = await self._prepare_image(event) if isinstance(event, ImageReceived) else None
            async with self.store.transaction() as tx:
                if not await tx.mark_processed(event.event_id, event.at):
                    return []
                ctx = _Ctx(tx, event.event_id)
                ctx.prepared = prepared
                await self._dispatch(ctx, event)
                return await ctx.flush()
        except StoreError as exc:
            if not isinstance(exc, RecordUnreadable):
                # the store itself failed (disk full, lock timeout): nothing was changed and
                # nothing is marked handled; the transport retries the event later
                raise
            log.error("handling a %s failed: a record cannot be read", type(event).__name__)
            if not user_event:
                raise
        except Exception as exc:  # a bug: nothing was changed
            log.error("handling a %s failed: %s", type(event).__name__, type(exc).__name__)
            if not user_event:
                raise
        # tell the person, and do not retry the same event for ever
        async with self.store.transaction() as tx:
            if not await tx.mark_processed(event.event_id, event.at):
                return []
            ctx = _Ctx(tx, event.event_id)
            await tx.append_audit(
                AuditEntry(actor=event.actor.user_id, action="event.failed", at=event.at, details={"kind": type(event).__name__})
            )
            if isinstance(event, ImageReceived) and isinstance(event.place, DirectChat):
                ctx.add(RedactOriginalUpload(upload_ref=event.upload_ref))
            ctx.add(
                Reply(
                    to=event.place,
                    text="Sorry, something went wrong handling that; nothing was changed. Please try again, or tell your administrator if it keeps happening.",
                )
            )
            return await ctx.flush()

    async def _dispatch(self, ctx: _Ctx, event: Any) -> None:
        if isinstance(event, CommandReceived):
            await self._command(ctx, event)
        elif isinstance(event, ImageReceived):
            await self._image(ctx, event)
        elif isinstance(event, ThreadActivity):
            await self._thread_message(ctx, event)
        elif isinstance(event, MessageSent):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.tx.save_referral(ref.remember_dm_event(event.room_event_id))
        elif isinstance(event, ThreadRootPosted):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                consent = await self._consent_of(ctx.tx, ref)
                await ctx.apply(*lc.root_posted(ref, room_event_id=event.room_event_id, consent=consent, at=event.at))
        elif isinstance(event, ImagePosted):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None and ref.image(event.image_id) is not None:
                await ctx.apply(
                    *lc.image_posted(
                        ref, image_id=event.image_id, room_event_id=event.room_event_id, media_uri=event.media_uri,
                        at=event.at, members=tuple(event.members), policy=self.policy,
                    )
                )
        elif isinstance(event, ImagesRemoved):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(
                    *lc.images_removed(ref, image_ids=tuple(event.image_ids), at=event.at, media_deleted=event.media_deleted)
                )
        elif isinstance(event, PreviewSent):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(*lc.preview_sent(ref, image_id=event.image_id, preview_ref=event.preview_ref,
                                                 media_uri=event.media_uri, at=event.at))
        elif isinstance(event, PreviewRemoved):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(*lc.preview_removed(ref, image_id=event.image_id, media_deleted=event.media_deleted,
                                                    at=event.at))
        elif isinstance(event, ExportCompleted):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(*lc.exported(ref, at=event.at))
        elif isinstance(event, RecordFiled):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(*lc.record_filed(
                    ref, version=event.version, filed=tuple(event.filed), where=tuple(event.where),
                    failed=tuple(event.failed), failed_where=tuple(event.failed_where), reason=event.reason,
                    at=event.at, policy=self.policy, reply_to=event.reply_to))
        elif isinstance(event, FiledCopiesPurged):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(*lc.copies_purged(ref, count=event.count, reason=event.reason, at=event.at))
        elif isinstance(event, ActionFailed):
            await self._action_failed(ctx, event)
        else:
            raise TypeError(f"unknown event {type(event).__name__}")

    async def _consent_of(self, tx: Transaction, ref: Referral) -> ConsentRecord:
        consent = await tx.get_consent(ref.consent_id)
        if consent is None:  # cannot happen with a consistent store
            raise LookupError("referral without consent")
        return consent

    # ------------------------------------------------------------------ timers
    async def _tick(self, at: datetime) -> list[Action]:
        """Each due referral in its own transaction: one that cannot be read (or trips a
        bug) is set aside and alerted on, and never stops the others' expiries. A store
        failure (disk full, lock timeout) stops the tick; the next one retries."""
        reader = getattr(self.store, "read", self.store.transaction)  # no write lock just to look
        async with reader() as tx:
            due = await tx.due_referral_ids(at)
        out: list[Action] = []
        for rid in due:
            try:
                async with self.store.transaction() as tx:
                    ref = await tx.get_referral(rid)
                    if ref is None or ref.next_due_at() is None or ref.next_due_at() > at:
                        continue  # changed since the list was read
                    try:
                        ref2, effects = lc.tick(ref, at=at, policy=self.policy)
                    except Exception as exc:  # a bug in the rules, for this referral's data
                        raise _RulesFailed(exc) from exc
                    ctx = _Ctx(tx, f"tick:{at.isoformat()}:{rid}")
                    await ctx.apply(ref2, effects)
                    out.extend(await ctx.flush())
            except RecordUnreadable:
                await self._set_aside(rid, "unreadable", at)
            except _RulesFailed as failed:
                log.error("the timer failed on referral %s", rid, exc_info=failed.__cause__)
                await self._set_aside(rid, f"error ({type(failed.__cause__).__name__})", at)
            # anything else (disk full, lock timeout, I/O) is the store's or the machine's,
            # not this referral's: it rolls back and stops the tick; the next tick retries
        async with self.store.transaction() as tx:
            await self._tick_patient_refs(tx, at)
        try:
            async with self.store.transaction() as tx:
                told = await self._destroy_due_photos(tx, at)
                if told:
                    ctx = _Ctx(tx, f"tick:{at.isoformat()}:unassigned")
                    ctx.add(*told)
                    out.extend(await ctx.flush())
        except RecordUnreadable as exc:
            # a held photo's row cannot be read: it is in the vault, never in a chat; the
            # referrals' removals above are already done, and the next tick tries again
            log.error("held photos not destroyed this tick: %s", exc)
        return out

    async def _set_aside(self, referral_id: str, reason: str, at: datetime) -> None:
        log.error("referral %s set aside: %s; its timers stop until an operator repairs it "
                  "(referral-bot status lists it)", referral_id, reason)
        async with self.store.transaction() as tx:
            await tx.set_aside_referral(referral_id, reason, at)
            await tx.append_audit(AuditEntry(BOT_ACTOR, "referral.set_aside", at, referral_id=referral_id,
                                             details={"reason": reason}))

    # ------------------------------------------------------------------ patient references
    async def _shred_patient_ref(self, tx: Transaction, consent_id: str, at: datetime, reason: str) -> None:
        if await tx.vault_shred(patient_ref_vault_id(consent_id)):
            await tx.patient_ref_shredded(consent_id, at, reason)
            await tx.append_audit(AuditEntry(BOT_ACTOR, "patient_ref.shredded", at, consent_id=consent_id,
                                             details={"reason": reason}))

    async def _tick_patient_refs(self, tx: Transaction, at: datetime) -> None:
        """At the end of the record's retention the patient reference goes, unless a
        referral under the consent still needs it (open, unfiled, or images still kept)."""
        for consent_id in await tx.due_patient_refs(at):
            try:
                referrals = await tx.referrals_by_consent(consent_id)
            except RecordUnreadable:  # one of them cannot be read: keep the reference for now
                log.error("a referral under consent %s cannot be read; its patient reference is kept",
                          consent_id)
                await tx.patient_ref_keep(consent_id, at + self.policy.filing_retry_first)
                continue
            busy = [r for r in referrals
                    if r.is_open or r.awaiting_filing or any(not i.shredded for i in r.images)]
            if busy:
                later = min((r.next_due_at() for r in busy if r.next_due_at() is not None), default=None)
                await tx.patient_ref_keep(consent_id, max(later or at, at) + self.policy.filing_retry_first)
            else:
                await self._shred_patient_ref(tx, consent_id, at, "retention")

    # ------------------------------------------------------------------ commands
    async def _command(self, ctx: _Ctx, ev: CommandReceived) -> None:
        if isinstance(ev.place, DirectChat) and not is_command(ev.text):
            await self._gp_plain_text(ctx, ev)
            return
        try:
            cmd = parse_command(ev.text, self.policy.specialty_words())
        except CommandError as exc:
            ctx.add(Reply(to=ev.place, text=str(exc)))
            return
        await self._answer(ctx, ev.place, self._run_command(ctx, ev, cmd))

    async def _answer(self, ctx: "_Ctx", place: Any, work: Awaitable[str | None]) -> None:
        """Reply with what *work* says, or with its refusal (audited when the refusal
        carries an entry): one place where a command's outcome becomes its answer."""
        try:
            text = await work
        except _Refuse as exc:
            if exc.audit is not None:
                await ctx.tx.append_audit(exc.audit)
            text = str(exc)
        except lc.IllegalTransition as exc:
            text = str(exc)
        if text:
            ctx.add(Reply(to=place, text=text))

    def _practice(self, actor: Actor) -> str | None:
        return actor.practice or self.policy.practices.get(actor.user_id)

    def _require_referrer(self, ev: CommandReceived, kind: str, what: str) -> None:
        """Roles are enforced: only directory clinicians listed as referrers record
        consent or refer (a specialist on a roster is not one unless also listed so)."""
        if not ev.actor.may_refer:
            raise _Refuse(
                f"Only clinicians listed as referrers in this bot's directory can {what}; "
                f"ask your administrator to set your role to \"referrer\" or \"both\".",
                audit=AuditEntry(ev.actor.user_id, f"{kind}.refused", ev.at, details={"rule": "role"}),
            )

    def _in_direct_chat(self, ev: CommandReceived, what: str) -> None:
        if not isinstance(ev.place, DirectChat):
            raise _Refuse(f"Use {what} in your direct chat with me, not in a specialty room.")

    async def _own_referral(self, tx: Transaction, rid: str, actor: Actor, *, allow_specialists: bool = False) -> Referral:
        """The referral if *actor* may act on it. The refusal reads the same whether or not
        the id exists, so nobody learns that someone else's referral does."""
        ref = await tx.get_referral(rid)
        if ref is not None:
            if ref.referrer == actor.user_id:
                return ref
            if allow_specialists and self._on_roster(ref, actor):
                return ref
        raise _Refuse("That is not one of your referrals; check the id with !status.")

    def _on_roster(self, ref: Referral, actor: Actor) -> bool:
        spec = self.policy.specialties.get(ref.specialty)
        return spec is not None and actor.user_id in spec.roster

    async def _run_command(self, ctx: _Ctx, ev: CommandReceived, cmd: Any) -> str | None:
        tx = ctx.tx
        actor = ev.actor
        if isinstance(cmd, HelpCmd):
            # the commands of the room it is asked in: the GP's, or the specialists'
            default = HELP_GP if isinstance(ev.place, DirectChat) else HELP_SPECIALIST
            return HELP_TOPICS.get(cmd.topic, default) if cmd.topic else default
        if isinstance(cmd, PhotoCmd):
            self._in_direct_chat(ev, "!photo")
            return await self._assign_photos(ctx, ev, cmd)
        if isinstance(cmd, ReplyCmd):
            return await self._reply_cmd(ctx, ev, cmd)
        if isinstance(cmd, MorePhotosCmd):
            return await self._more_photos(ctx, ev, cmd)
        if isinstance(cmd, AddendumCmd):
            return await self._addendum(ctx, ev, cmd)
        if isinstance(cmd, ConsentCmd):
            self._in_direct_chat(ev, "!consent")
            self._require_referrer(ev, "consent", "record consent")
            return await self._consent(ctx, ev, cmd)
        if isinstance(cmd, ConsentShowCmd):
            self._in_direct_chat(ev, "!consent show")
            return await self._consent_show(ctx, ev, cmd)
        if isinstance(cmd, ReferCmd):
            self._in_direct_chat(ev, "!refer")
            self._require_referrer(ev, "referral", "open referrals")
            return await self._refer(ctx, ev, cmd)
        if isinstance(cmd, OpinionCmd):
            return await self._opinion(ctx, ev, cmd)
        if isinstance(cmd, WithdrawCmd):
            self._in_direct_chat(ev, "!withdraw")
            return await self._withdraw(ctx, ev, cmd)
        if isinstance(cmd, StatusCmd):
            return await self._status(ctx, ev, cmd)
        if isinstance(cmd, CancelCmd):
            self._in_direct_chat(ev, "!cancel")
            ref = await self._own_referral(tx, cmd.referral_id, actor)
            ref = await ctx.apply(*lc.cancel(ref, at=ev.at, actor=actor.user_id, policy=self.policy))
            removing = sum(1 for i in ref.images if i.state is ImageState.REMOVING)
            tail = f" {_plural(removing, 'image')} being removed from the specialty room." if removing else ""
            return f"{ref.referral_id} cancelled.{tail}"
        if isinstance(cmd, ExportCmd):
            self._in_direct_chat(ev, "!export")
            ref = await self._own_referral(tx, cmd.referral_id, actor)
            await tx.append_audit(
                AuditEntry(actor.user_id, "referral.export_requested", ev.at, ref.referral_id, ref.consent_id)
            )
            await ctx.apply(*lc.request_filing(ref, at=ev.at, policy=self.policy, reason="export",
                                               reply_to=ev.place, actor=actor.user_id))
            return f"Filing {ref.referral_id} into the record now; I will tell you where it went. Nothing is deleted by this."
        if isinstance(cmd, DiscardCmd) and cmd.referral_id is None:
            self._in_direct_chat(ev, "!discard")
            return await self._discard_unassigned(ctx, ev)
        if isinstance(cmd, (BlurCmd, DiscardCmd)):
            self._in_direct_chat(ev, "!blur / !discard")
            assert cmd.referral_id is not None
            ref = await self._own_referral(tx, cmd.referral_id, actor)
            held = [i for i in ref.images if i.state is ImageState.HELD]
            photos = "the held photo" if len(held) == 1 else f"the {len(held)} held photos"
            if isinstance(cmd, DiscardCmd):
                ref = await ctx.apply(*lc.discard_held(ref, at=ev.at, actor=actor.user_id))
                return (f"Destroyed {photos} of {ref.referral_id} and removed the preview; nothing was sent.")
            consent = await self._consent_of(tx, ref)
            refusal = check_cover(consent, actor=actor, at=ev.at, policy=self.policy)
            if refusal is not None:
                raise _Refuse(refusal.message)
            ref = await ctx.apply(*lc.release_held(ref, consent=consent, at=ev.at, actor=actor.user_id, policy=self.policy))
            return (f"Posting {photos} of {ref.referral_id} to {ref.specialty} exactly as previewed, with what I "
                    f"found blurred; the preview leaves this chat once it is posted.")
        raise _Refuse("Type !help for the list of commands.")

    # ---- !consent
    async def _consent(self, ctx: _Ctx, ev: CommandReceived, cmd: ConsentCmd) -> str:
        tx = ctx.tx
        attempt = 0
        consent_id = make_id("C", ev.event_id)
        while await tx.get_consent(consent_id) is not None:
            attempt += 1
            consent_id = make_id("C", ev.event_id, attempt)
        try:
            consent = record_consent(
                cmd, consent_id=consent_id, actor=ev.actor, at=ev.at, hasher=self.hasher, policy=self.policy
            )
        except ConsentRefused as exc:
            raise _Refuse(
                f"Consent not recorded: {exc}",
                audit=AuditEntry(ev.actor.user_id, "consent.refused", ev.at, details={"rule": exc.rule}),
            ) from None
        await tx.save_consent(consent)
        if cmd.patient:
            # the reference itself, for filing into the record only: encrypted under its own
            # data key, kept while the record may need filing, shredded with the rest
            await tx.vault_put(patient_ref_vault_id(consent_id), normalise_patient_ref(cmd.patient).encode("utf-8"),
                               PATIENT_REF_MEDIA_TYPE)
            await tx.patient_ref_keep(consent_id, ev.at + consent.retention)
        await tx.append_audit(
            AuditEntry(
                ev.actor.user_id,
                "consent.recorded",
                ev.at,
                consent_id=consent_id,
                details={
                    "basis": consent.basis.value,
                    "purposes": ",".join(sorted(p.value for p in consent.purposes)),
                    "identifiable": consent.identifiable,
                    "retention_days": consent.retention.days,
                    "specialty": ",".join(sorted(consent.specialties)) if consent.specialties is not None else "any",
                },
            )
        )
        return consent_summary(consent, self.policy) + f" Next: !refer <specialty> {consent_id} <question>."

    # ---- !consent show
    async def _consent_show(self, ctx: _Ctx, ev: CommandReceived, cmd: ConsentShowCmd) -> str:
        """Read a consent back to a clinician of the practice that recorded it (audited)."""
        consent = await ctx.tx.get_consent(cmd.consent_id)
        if consent is None:
            raise _Refuse("There is no consent with that id; check it.")
        if self._practice(ev.actor) != consent.practice:
            raise _Refuse(
                "That consent was recorded by another practice; only that practice can read it.",
                audit=AuditEntry(ev.actor.user_id, "consent.show_refused", ev.at, consent_id=consent.consent_id,
                                 details={"rule": "practice"}),
            )
        await ctx.tx.append_audit(AuditEntry(ev.actor.user_id, "consent.shown", ev.at, consent_id=consent.consent_id))
        return describe_consent(consent, at=ev.at, policy=self.policy)

    # ---- !refer
    async def _refer(self, ctx: _Ctx, ev: CommandReceived, cmd: ReferCmd) -> str | None:
        tx = ctx.tx
        if len(cmd.question) > 2000:
            raise _Refuse("The question is too long (over 2000 characters); keep it to a short paragraph.")
        # every free text of the referral goes to a shared room: nothing that identifies the
        # patient goes there, and the text is not kept (issue 12 part 2; docs/commands.md)
        hit = guard_referral(cmd.question, cmd.details, today=local_date(ev.at, self.policy.time_zone),
                             reference_patterns=self.policy.reference_patterns())
        if hit is not None:
            raise _Refuse(f"{hit.message} Nothing was posted.",
                          audit=AuditEntry(ev.actor.user_id, "referral.refused", ev.at, details=hit.audit_details))
        spec = self.policy.find_specialty(cmd.specialty)
        if spec is None:
            names = ", ".join(self.policy.specialty_names()) or "none configured"
            raise _Refuse(f"I don't know that specialty; choose one of: {names}.")
        consent = await tx.get_consent(cmd.consent_id)
        if consent is None:
            raise _Refuse("There is no consent with that id; record one with !consent (see !help consent).")
        intimate = intimate_reason(cmd.details, cmd.question, cmd.intimate_stated)
        refusal = check_cover(consent, actor=ev.actor, at=ev.at, policy=self.policy, specialty=spec.key,
                              intimate=intimate)
        if refusal is not None:
            raise _Refuse(
                f"Referral not opened: {refusal.message}",
                audit=AuditEntry(
                    ev.actor.user_id, "referral.refused", ev.at, consent_id=consent.consent_id, details={"rule": refusal.rule}
                ),
            )
        kept = await tx.patient_ref_info(consent.consent_id)
        if kept is not None and kept[1] is not None:
            raise _Refuse(
                f"Referral not opened: the record retention of consent {consent.consent_id} has ended and its patient "
                f"reference was destroyed, so a new referral could not be filed; record a fresh consent with !consent.",
                audit=AuditEntry(ev.actor.user_id, "referral.refused", ev.at, consent_id=consent.consent_id,
                                 details={"rule": "patient_ref.shredded"}),
            )
        practice = self._practice(ev.actor)
        assert practice is not None  # check_cover passed the practice rule
        attempt = 0
        rid = make_id("R", ev.event_id)
        while await tx.get_referral(rid) is not None:
            attempt += 1
            rid = make_id("R", ev.event_id, attempt)
        ref, eff = lc.open_referral(
            referral_id=rid,
            consent=consent,
            referrer=ev.actor.user_id,
            practice=practice,
            specialty=spec.key,
            question=cmd.question,
            at=ev.at,
            policy=self.policy,
            opened_seq=len(await tx.referrals_by_referrer(ev.actor.user_id)),
            details=dataclasses.replace(cmd.details, intimate=intimate is not None),
        )
        await ctx.apply(ref, eff)
        others = [r for r in await tx.open_referrals_by_referrer(ev.actor.user_id) if r.referral_id != rid]
        text = (
            f"Referral {rid} opened for {spec.title or spec.key}; I am starting its thread in the specialists' room "
            f"(it shows the patient as {about_patient(consent, ev.at.date())}, no name or date of birth). "
            f"Send the photo(s) here now. I strip hidden data, post them in that thread, and remove them after the opinion "
            f"(or at {lc.fmt_time(ref.expires_at, self.policy.time_zone)} if nobody answers)."
        )
        if clock.is_urgent(ref):
            text += " Marked urgent: the specialists see that first and are chased sooner."
        if others:
            # with several referrals open a photo must say which one it is for
            text += (f" You have {_plural(len(others) + 1, 'open referral')}: if a photo could be for another one, "
                     f"send it as a reply to this message, or put {rid} in its caption.")
        ctx.add(Reply(to=ev.place, text=text, referral_id=rid))
        # suspected cancer: the 2-week-wait pathway, not advice and guidance (the referral still opens)
        await ctx.apply(*lc.pathway_reminder(ref, at=ev.at))
        return None

    # ---- !opinion
    async def _thread_referral(self, tx: Transaction, place: Place) -> Referral | None:
        if not isinstance(place, SpecialtyThread):
            return None
        if place.referral_id:
            return await tx.get_referral(place.referral_id)
        if place.thread_event_id:
            return await tx.referral_by_thread(place.thread_event_id)
        return None

    async def _opinion(self, ctx: _Ctx, ev: CommandReceived, cmd: OpinionCmd) -> str | None:
        place = ev.place
        if not isinstance(place, SpecialtyThread):
            raise _Refuse("Give the opinion in the referral's thread in the specialty room.")
        ref = await self._thread_referral(ctx.tx, place)
        if ref is None:
            raise _Refuse("Give the opinion as a reply in the referral's thread (not in the main room).")
        if cmd.referral_id and cmd.referral_id != ref.referral_id:
            raise _Refuse(f"This thread is {ref.referral_id}, not the referral you named; give the opinion in the right thread.")
        if ref.specialty != place.specialty:
            raise _Refuse(f"{ref.referral_id} belongs to {ref.specialty}.")
        spec = self.policy.specialties.get(ref.specialty)
        if spec is None or ev.actor.user_id not in spec.roster:
            raise _Refuse(
                f"Only clinicians on the {ref.specialty} roster can give the opinion; you can still discuss in the thread.",
                audit=AuditEntry(ev.actor.user_id, "opinion.refused", ev.at, ref.referral_id, ref.consent_id, details={"rule": "roster"}),
            )
        await ctx.apply(
            *lc.give_opinion(
                ref, by=ev.actor.user_id, by_name=ev.actor.display_name, text=cmd.text, at=ev.at, policy=self.policy
            )
        )
        return None  # the lifecycle already replies in the thread

    # ---- the conversation between the thread and the GP
    async def _specialist_referral(self, ctx: _Ctx, ev: CommandReceived, what: str, rid: str | None = None) -> Referral:
        """The referral of the thread *ev* was written in (or ``rid`` named in the
        specialty's room), for a specialist on its roster; else ``_Refuse``."""
        place = ev.place
        if not isinstance(place, SpecialtyThread):
            raise _Refuse(f"Use {what} in the referral's thread in the specialty room.")
        ref = await self._thread_referral(ctx.tx, place)
        if ref is None and rid is not None:
            ref = await ctx.tx.get_referral(rid)
            if ref is not None and ref.specialty != place.specialty:
                ref = None
        if ref is None:
            raise _Refuse(f"Use {what} as a reply in the referral's thread (not in the main room).")
        if rid and rid != ref.referral_id:
            raise _Refuse(f"This thread is {ref.referral_id}, not the referral you named; use the right thread.")
        if not self._on_roster(ref, ev.actor):
            raise _Refuse(
                f"Only clinicians on the {ref.specialty} roster can use {what}.",
                audit=AuditEntry(ev.actor.user_id, "thread.refused", ev.at, ref.referral_id, ref.consent_id,
                                 details={"rule": "roster", "command": what.lstrip("!")}),
            )
        return ref

    async def _thread_message(self, ctx: _Ctx, ev: ThreadActivity) -> None:
        """A message in a referral's thread: from a roster specialist it goes to the GP;
        from anyone else it does not (the relay never carries text from outside the
        roster, let alone the directory), and the writer is told so."""
        ref = await self._thread_referral(ctx.tx, ev.place)
        if ref is None:
            return  # the room's main timeline: not about one referral
        if not self._on_roster(ref, ev.actor):
            # the transport hands on no words from outside the directory at all; either way
            # the writer learns that the GP did not get it
            await ctx.apply(*lc.discussed(ref, at=ev.at, actor=ev.actor.user_id))
            await ctx.tx.append_audit(AuditEntry(ev.actor.user_id, "thread.relay_refused", ev.at, ref.referral_id,
                                                 ref.consent_id, details={"rule": "roster"}))
            ctx.add(Reply(to=ev.place, text=(
                f"Not passed to the GP: only clinicians on the {ref.specialty} roster can write to the GP from "
                f"this thread.")))
            return
        if not ev.text.strip():
            await ctx.apply(*lc.discussed(ref, at=ev.at, actor=ev.actor.user_id))
            return
        await self._relay_to_gp(ctx, ref, ev.actor, ev.text, ev.at, ev.event_id, ev.place)

    async def _relay_to_gp(self, ctx: _Ctx, ref: Referral, actor: Actor, text: str, at: datetime, event_id: str,
                           place: Place) -> None:
        if len(text) > 4000:
            ctx.add(Reply(to=place, text="That message is too long to pass on (over 4000 characters); split it up."))
            return
        try:
            await ctx.apply(*lc.relay_to_gp(ref, by=actor.user_id, by_name=actor.display_name, text=text, at=at,
                                            event_id=event_id))
        except lc.IllegalTransition as exc:
            ctx.add(Reply(to=place, text=str(exc)))

    async def _relay_to_thread(self, ctx: _Ctx, ev: CommandReceived, ref: Referral, text: str) -> str | None:
        if len(text) > 4000:
            raise _Refuse("That message is too long to pass on (over 4000 characters); split it up.")
        assert isinstance(ev.place, DirectChat)
        # the thread is a shared room: what surely identifies the patient (an NHS number, a
        # postcode, an email address, a hospital number) never goes there (issue 12's guard;
        # GMC Confidentiality (2017): use the minimum necessary personal information). The
        # kinds it may mistake in conversation ("Dr Okafor", a date) are let through.
        findings = find_identifiers(text, today=local_date(ev.at, self.policy.time_zone),
                                    reference_patterns=self.policy.reference_patterns())
        if findings.blocking:
            raise _Refuse(
                held_message(findings, "answer") + " Nothing was passed on.",
                audit=AuditEntry(ev.actor.user_id, "thread.relay_refused", ev.at, ref.referral_id, ref.consent_id,
                                 details={"rule": "identifier", "kind": findings.codes}),
            )
        await ctx.apply(*lc.relay_to_thread(ref, text=text, at=ev.at, event_id=ev.event_id, reply_to=ev.place,
                                            policy=self.policy))
        return None  # the reaction on the GP's message says it went

    async def _gp_plain_text(self, ctx: _Ctx, ev: CommandReceived) -> None:
        """Words (not a command) in the GP's direct chat: an answer when they are a reply
        to the bot's message about a referral; otherwise a hint."""
        ref = None
        if ev.in_reply_to:
            ref = await self._referral_by_dm_event(ctx.tx, ev.actor.user_id, ev.in_reply_to)
        if ref is not None:
            await self._answer(ctx, ev.place, self._relay_to_thread(ctx, ev, ref, ev.text.strip()))
            return
        hint = "Commands start with ! — type !help to see them."
        talking = [r for r in await ctx.tx.open_referrals_by_referrer(ev.actor.user_id) if r.thread_participants]
        if talking:
            rid = talking[-1].referral_id
            hint = (f"I did not pass that on. To answer the specialist on {rid}, reply to their message "
                    f"(or type !reply {rid} <answer>); !help shows the commands.")
        ctx.add(Reply(to=ev.place, text=hint))

    async def _reply_cmd(self, ctx: _Ctx, ev: CommandReceived, cmd: ReplyCmd) -> str | None:
        if isinstance(ev.place, SpecialtyThread):
            ref = await self._specialist_referral(ctx, ev, "!reply", cmd.referral_id)
            await self._relay_to_gp(ctx, ref, ev.actor, cmd.text, ev.at, ev.event_id, ev.place)
            return None
        ref = None
        if cmd.referral_id:
            ref = await self._own_referral(ctx.tx, cmd.referral_id, ev.actor)
        elif ev.in_reply_to:
            ref = await self._referral_by_dm_event(ctx.tx, ev.actor.user_id, ev.in_reply_to)
        if ref is None:
            open_ids = [r.referral_id for r in await ctx.tx.open_referrals_by_referrer(ev.actor.user_id)]
            which = f" (open: {', '.join(open_ids[-5:])})" if open_ids else ""
            raise _Refuse(f"Say which referral: !reply R-… <your message>{which}, or reply to the specialist's message.")
        return await self._relay_to_thread(ctx, ev, ref, cmd.text)

    async def _more_photos(self, ctx: _Ctx, ev: CommandReceived, cmd: MorePhotosCmd) -> str | None:
        ref = await self._specialist_referral(ctx, ev, "!morephotos")
        await ctx.apply(*lc.request_more_photos(ref, by=ev.actor.user_id, by_name=ev.actor.display_name,
                                                text=cmd.text, at=ev.at, policy=self.policy))
        return None

    async def _addendum(self, ctx: _Ctx, ev: CommandReceived, cmd: AddendumCmd) -> str | None:
        ref = await self._specialist_referral(ctx, ev, "!addendum", cmd.referral_id)
        if len(cmd.text) > 4000:
            raise _Refuse("The addendum is too long (over 4000 characters); keep it to a short paragraph.")
        await ctx.apply(*lc.add_addendum(ref, by=ev.actor.user_id, by_name=ev.actor.display_name, text=cmd.text,
                                         at=ev.at, policy=self.policy))
        return None

    # ---- !withdraw
    async def _withdraw(self, ctx: _Ctx, ev: CommandReceived, cmd: WithdrawCmd) -> str:
        tx = ctx.tx
        consent = await tx.get_consent(cmd.consent_id)
        if consent is None:
            raise _Refuse("There is no consent with that id; check it.")
        if self._practice(ev.actor) != consent.practice:
            raise _Refuse("That consent was recorded by another practice; only that practice can withdraw it.")
        if consent.withdrawn:
            raise _Refuse(f"Consent {consent.consent_id} was already withdrawn.")
        consent = dataclasses.replace(consent, withdrawn_at=ev.at, withdrawn_by=ev.actor.user_id)
        await tx.save_consent(consent)
        await tx.append_audit(AuditEntry(ev.actor.user_id, "consent.withdrawn", ev.at, consent_id=consent.consent_id))
        await self._shred_patient_ref(tx, consent.consent_id, ev.at, "withdrawn")
        closed = removing = shredded = 0
        refs = await tx.referrals_by_consent(consent.consent_id)
        # a photo held until the GP names its referral may be of this patient: it goes too
        # (withdrawal reaches every image; the GP can send a photo of another patient again)
        ids = {r.referral_id for r in refs}
        for gp in {r.referrer for r in refs}:
            for photo in await tx.unassigned_photos(gp):
                if ids & set(photo.candidates):
                    shredded += int(await tx.vault_shred(photo.photo_id))
                    await tx.delete_unassigned_photo(photo.photo_id)
                    await tx.append_audit(AuditEntry(ev.actor.user_id, "image.discarded", ev.at,
                                                     consent_id=consent.consent_id,
                                                     details={"image_id": photo.photo_id, "rule": "withdrawn"}))
        for ref in refs:
            was_open = ref.state not in (ReferralState.CLOSED, ReferralState.IMAGES_EXPIRED)
            ref2, eff = lc.withdraw(ref, at=ev.at, actor=ev.actor.user_id, policy=self.policy)
            shredded += len(eff.shred)
            removing += sum(len(a.images) for a in eff.actions if isinstance(a, RemoveImages))
            closed += int(was_open)
            if ref2.referrer != ev.actor.user_id and was_open:
                eff.actions.append(
                    Notify(user_id=ref2.referrer, text=f"Consent {consent.consent_id} was withdrawn, so {ref2.referral_id} is closed and its images are removed.")
                )
            await ctx.apply(ref2, eff)
        return (
            f"Consent {consent.consent_id} withdrawn. {_plural(closed, 'referral')} closed, "
            f"{_plural(removing, 'image')} being removed from the chat, {_plural(shredded, 'stored copy', )} destroyed."
        ).replace("stored copys", "stored copies")

    # ---- !status
    def _describe(self, ref: Referral) -> str:
        posted = sum(1 for i in ref.images if i.state is ImageState.POSTED)
        held = sum(1 for i in ref.images if i.state is ImageState.HELD)
        bits = [f"{ref.referral_id} {ref.specialty}{' (urgent)' if clock.is_urgent(ref) else ''}: {_STATE_WORDS[ref.state]}"]
        if ref.state is ReferralState.CLOSED and ref.close_reason is not None:
            bits[0] += f" ({ref.close_reason.value})"
        bits.append(_plural(len([i for i in ref.images if i.state is not ImageState.DISCARDED]), "image"))
        if posted:
            bits.append(f"{posted} in the thread")
        if held:
            bits.append(f"{held} held with a preview sent to the GP (!blur {ref.referral_id} or !discard {ref.referral_id})")
        zone = self.policy.time_zone
        if ref.more_photos_requested and ref.is_open:
            bits.append("another photo asked for")
        if ref.is_open:
            bits.append(f"expires {lc.fmt_time(ref.expires_at, zone)}")
        if ref.state is ReferralState.OPINION_GIVEN and ref.remove_images_at:
            bits.append(f"images removed {lc.fmt_time(ref.remove_images_at, zone)}")
        return ", ".join(bits)

    async def _status(self, ctx: _Ctx, ev: CommandReceived, cmd: StatusCmd) -> str:
        if cmd.referral_id:
            ref = await self._own_referral(ctx.tx, cmd.referral_id, ev.actor, allow_specialists=True)
            return self._describe(ref)
        if not isinstance(ev.place, DirectChat):
            ref = await self._thread_referral(ctx.tx, ev.place)
            if ref is not None:
                return self._describe(await self._own_referral(ctx.tx, ref.referral_id, ev.actor, allow_specialists=True))
            return "Type !status R-… for one referral, or !status in your direct chat with me for your list."
        refs = await ctx.tx.referrals_by_referrer(ev.actor.user_id)
        active = [r for r in refs if r.state is not ReferralState.CLOSED]
        recent = [r for r in refs if r.state is ReferralState.CLOSED][-3:]
        if not refs:
            return "You have no referrals. Start with !consent, then !refer (see !help)."
        lines = [self._describe(r) for r in active + recent]
        held = await ctx.tx.unassigned_photos(ev.actor.user_id)
        if held:
            lines.append(f"{_plural(len(held), 'photo')} held until you say which referral: !photo R-… (or !discard).")
        return "\n".join(lines[-10:])

    # ------------------------------------------------------------------ images
    async def _prepare_image(self, ev: ImageReceived) -> _Prepared | None:
        """Clean the photo outside the write transaction. A short read-only step reads the
        consents of the GP's open referrals: the check runs unless every one of them covers
        identifiable images. ``_intake`` re-checks the decision inside the transaction."""
        if not isinstance(ev.place, DirectChat) or not ev.data:
            return None
        async with self.store.transaction() as tx:  # reads only: held for a few milliseconds
            refs = await tx.open_referrals_by_referrer(ev.actor.user_id)
            consents = [await tx.get_consent(r.consent_id) for r in refs]
        if not refs:
            return None
        check = not all(c is not None and c.identifiable for c in consents)
        if check:
            await self._announce_stripped(ev)
        try:
            result = await self._clean(ev.data, check)
        except Exception as exc:  # reported by _intake, with its audit entry
            return _Prepared(check, error=exc)
        if not check:
            self._tell_stripped(ev, result, checking=False)
        return _Prepared(check, result)

    async def _announce_stripped(self, ev: ImageReceived) -> None:
        """Before the check: hand the transport the stripped bytes when a check that finds
        nothing would post exactly those (a JPEG), so their upload overlaps the check. The
        library's marker filter is called directly: it decodes nothing (the worker pool
        runs it in the bot process too); the check's own call strips again, so its outcome
        does not depend on this."""
        from handlers.sanitizer import check_keeps_bytes, sanitize

        if self.on_image_stripped is None or not check_keeps_bytes(ev.data):
            return
        kwargs: dict[str, Any] = {"detect_faces": False}
        if self._limits is not None:
            kwargs["limits"] = self._limits
        try:
            plain = await asyncio.to_thread(sanitize, ev.data, **kwargs)
        except Exception:  # a refusal is reported by the check's own call; this is only a head start
            return
        self._tell_stripped(ev, plain, checking=True)

    def _tell_stripped(self, ev: ImageReceived, result: Any, *, checking: bool) -> None:
        from handlers.sanitizer import check_keeps_bytes

        if self.on_image_stripped is None or not check_keeps_bytes(ev.data):
            return
        try:
            self.on_image_stripped(StrippedImage(ev.event_id, result.media_type, result.data, checking))
        except Exception:  # an optimisation only
            log.warning("on_image_stripped failed", exc_info=True)

    async def _clean(self, data: bytes, check: bool) -> Any:
        """One call: strip metadata and, when ``check``, find faces and text and blur them."""
        kwargs: dict[str, Any] = {"detect_faces": check}
        if check:
            # the thumbnail comes free with the check's decode (bot/matrix/thumbnail.py otherwise)
            kwargs.update(detect_text=True, blur_faces=True, blur_text=True, thumbnail=True)
        if self._limits is not None:
            kwargs["limits"] = self._limits
        if self._sanitize_is_async:
            return await self._sanitize(data, **kwargs)
        # CPU-bound: a worker thread keeps the event loop syncing and posting
        return await asyncio.to_thread(self._sanitize, data, **kwargs)

    async def _cleaned(self, ctx: _Ctx, ev: ImageReceived, check: bool) -> Any:
        """The prepared result if it was cleaned as this consent needs; otherwise clean it
        again now, inside the transaction: the check was skipped but this consent needs it (a
        referral opened in between), or something was blurred that this consent lets the
        specialist see (the GP's other open referral needed the check, this one does not)."""
        prepared = ctx.prepared
        blurred = prepared is not None and prepared.result is not None and (
            prepared.result.faces_blurred or prepared.result.text_blurred)
        if prepared is None or (check and not prepared.checked) or (not check and blurred):
            prepared = _Prepared(check, await self._clean(ev.data, check))
        if prepared.error is not None:
            raise prepared.error
        return prepared.result

    async def _clean_or_refuse(self, clean: Callable[[], Awaitable[Any]],
                               audit: Callable[[str, dict], AuditEntry]) -> Any:
        """Run a cleaning step; a refusal or a crash of the sanitizer becomes one plain
        sentence (``_Refuse``) with its ``image.refused`` audit entry."""
        from handlers.sanitizer import ImageRefused

        try:
            return await clean()
        except ImageRefused as exc:
            raise _Refuse(str(exc), audit=audit("image.refused", {"rule": f"sanitizer.{exc.reason}"})) from None
        except Exception as exc:  # never a traceback for bad input
            raise _Refuse(
                "I could not read that image; send it again as a JPEG or PNG photo.",
                audit=audit("image.refused", {"rule": "sanitizer.error", "kind": type(exc).__name__}),
            ) from None

    async def _image(self, ctx: _Ctx, ev: ImageReceived) -> None:
        if not isinstance(ev.place, DirectChat):
            ctx.add(Reply(to=ev.place, text="Photos for a referral go in your direct chat with me, not here."))
            return
        # the raw upload never stays in the chat, whatever happens next
        ctx.add(RedactOriginalUpload(upload_ref=ev.upload_ref))
        mentions: tuple[str, ...] = ()
        referral_id = None
        try:
            text, referral_id, mentions = await self._intake(ctx, ev)
        except _Refuse as exc:
            if exc.audit is not None:
                await ctx.tx.append_audit(exc.audit)
            text = str(exc) + " I removed your upload from this chat."
        except lc.IllegalTransition as exc:
            text = str(exc) + " I removed your upload from this chat."
        ctx.add(Reply(to=ev.place, text=text, mentions=mentions, referral_id=referral_id))

    async def _consent_covering_photo(self, tx: Transaction, ref: Referral, actor: Actor, at: datetime) -> Any:
        """The referral's consent, or a refusal naming the rule when it does not cover this
        photo now (checked again at every photo: a consent may have been withdrawn)."""
        consent = await self._consent_of(tx, ref)
        refusal = check_cover(consent, actor=actor, at=at, policy=self.policy)
        if refusal is not None:
            raise _Refuse(
                f"Photo not shared: {refusal.message}",
                audit=AuditEntry(actor.user_id, "image.refused", at, ref.referral_id, ref.consent_id, details={"rule": refusal.rule}),
            )
        return consent

    async def _route_photo(self, tx: Transaction, ev: ImageReceived, open_refs: list[Referral]) -> tuple[Referral | None, str]:
        """Which referral the photo is for, and how we know; ``(None, "ask")`` when the GP
        must say. Never a guess: a caption naming ``R-…``, a reply to one of the bot's
        messages about a referral, or the only one of the GP's open referrals that is
        waiting for photos. Naming a referral that cannot take it is refused, never
        redirected. (A photo under the wrong patient's referral is an improper disclosure:
        GMC "Confidentiality" (2017), "manage and protect information".)"""
        actor = ev.actor
        named = find_ids(ev.caption, "R") if ev.caption else []
        if len(named) > 1:
            raise _Refuse(
                f"Your caption names {' and '.join(named[:2])}: send each photo with the one referral it is for."
            )
        if named:
            ref = await self._own_referral(tx, named[0], actor)
            if not ref.is_open:
                raise _Refuse(lc.why_not(ref, lc.Input.ADD_IMAGE))
            return ref, "caption"
        if ev.in_reply_to:
            ref = await self._referral_by_dm_event(tx, actor.user_id, ev.in_reply_to)
            if ref is not None:
                if not ref.is_open:
                    raise _Refuse(lc.why_not(ref, lc.Input.ADD_IMAGE))
                return ref, "reply"
        waiting = [r for r in open_refs if r.waiting_for_photos(ev.at, self.policy.photo_window)]
        if len(waiting) == 1:
            return waiting[0], "only_waiting"
        return None, "ask"

    async def _referral_by_dm_event(self, tx: Transaction, user_id: str, event_id: str) -> Referral | None:
        """The GP's referral that one of the bot's direct-chat messages (``event_id``) was
        about, newest first; None if that message was about no referral."""
        for ref in reversed(await tx.referrals_by_referrer(user_id)):
            if event_id in ref.dm_event_ids:
                return ref
        return None

    async def _new_image_id(self, tx: Transaction, seed: str, ref: Referral | None = None) -> str:
        attempt = 0
        image_id = make_id("I", seed)
        while (ref is not None and ref.image(image_id) is not None) or await tx.vault_get(image_id) is not None:
            attempt += 1
            image_id = make_id("I", seed, attempt)
        return image_id

    def _check_room_for_images(self, ref: Referral) -> None:
        live = ref.live_images
        if len(live) >= self.policy.max_images_per_referral:
            raise _Refuse(f"{ref.referral_id} already has {len(live)} images, the most allowed; open another referral for more.")

    async def _intake(self, ctx: _Ctx, ev: ImageReceived) -> tuple[str, str | None, tuple[str, ...]]:
        """(reply text, referral it is about, who it must alert)."""
        tx = ctx.tx
        actor = ev.actor
        open_refs = await tx.open_referrals_by_referrer(actor.user_id)
        if not open_refs:
            raise _Refuse("You have no open referral for this photo: record consent with !consent and open one with !refer first.")
        ref, routed_by = await self._route_photo(tx, ev, open_refs)
        if not ev.data:
            raise _Refuse("That file was empty or too large for me to fetch; send a smaller photo (JPEG, PNG or HEIC).")
        if ref is None:
            return await self._hold_unassigned(ctx, ev, open_refs)
        self._check_room_for_images(ref)
        consent = await self._consent_covering_photo(tx, ref, actor, ev.at)
        # The face/text check exists to stop an identifiable image the consent does not cover.
        # When the consent covers identifiable images nothing depends on it, so it is not
        # run (it is most of the sanitizer's time on a phone photo); otherwise it is
        # mandatory and blocks posting. Metadata is stripped either way.
        check_faces = not consent.identifiable
        keep = await self._clean_or_refuse(
            lambda: self._cleaned(ctx, ev, check_faces),
            lambda action, details: AuditEntry(actor.user_id, action, ev.at, ref.referral_id, ref.consent_id, details=details),
        )
        image_id = await self._new_image_id(tx, ev.event_id, ref)
        if not check_faces:  # the record must not read "0 faces found" as if it had looked
            await tx.append_audit(AuditEntry(actor.user_id, "image.faces_not_checked", ev.at, ref.referral_id,
                                             ref.consent_id, details={"rule": "consent.identifiable"}))
        text = await self._attach(ctx, ref, consent, keep, actor=actor, at=ev.at, image_id=image_id,
                                  upload_ref=ev.upload_ref, routed_by=routed_by, checked=check_faces,
                                  event_id=ev.event_id)
        return text, ref.referral_id, ()

    async def _attach(self, ctx: _Ctx, ref: Referral, consent: ConsentRecord, keep: Any, *, actor: Actor,
                      at: datetime, image_id: str, upload_ref: str, routed_by: str, checked: bool,
                      in_vault: bool = False, removed: tuple[str, ...] | None = None, event_id: str = "") -> str:
        """The cleaned photo *keep* joins *ref*: held when the check found faces or text
        (``keep`` is then the blurred copy), else on its way to the thread. Returns the
        sentence for the GP. ``in_vault``: *keep*'s bytes are already in the vault under
        *image_id* (a photo that waited for the GP to name its referral)."""
        tx = ctx.tx
        held = checked and bool(keep.faces or keep.text_regions)  # blurred copy kept, held for the GP
        labels = [r for r in (keep.removed if removed is None else removed) if r not in _BLUR_LABELS]
        filename = f"{ref.referral_id}-{len(ref.images) + 1}.{keep.extension}"
        item = ImageItem(
            image_id=image_id,
            referral_id=ref.referral_id,
            filename=filename,
            media_type=keep.media_type,
            received_at=at,
            retention_until=at + consent.retention,
            upload_ref=upload_ref,
            state=ImageState.HELD if held else ImageState.WAITING,
            faces=keep.faces,
            faces_blurred=keep.faces_blurred,
            width=keep.width,
            height=keep.height,
            removed_metadata=tuple(labels),
            text_regions=keep.text_regions if checked else 0,
        )
        ref2, effects = lc.add_image(
            ref, item, consent=consent, at=at, actor=actor.user_id, routed_by=routed_by, policy=self.policy
        )
        final = ref2.image(image_id)
        if (not in_vault and final is not None and final.state in (ImageState.WAITING, ImageState.POSTING)
                and self.on_image_cleared is not None):
            # before the vault write and the commit, so the transport's upload overlaps them
            try:
                self.on_image_cleared(ClearedImage(ref.referral_id, image_id, filename, keep.media_type, keep.data,
                                                   event_id, getattr(keep, "thumbnail", None)))
            except Exception:  # an optimisation only: the post uploads from the vault anyway
                log.warning("on_image_cleared failed", exc_info=True)
        if not in_vault:
            await tx.vault_put(image_id, keep.data, keep.media_type)
        await tx.patient_ref_keep(consent.consent_id, item.retention_until)
        await ctx.apply(ref2, effects)
        summary = ("Removed: " + ", ".join(labels) + ".") if labels else "No hidden data found."
        if held:
            rid = ref.referral_id
            until = lc.fmt_time(final.held_until, self.policy.time_zone) if final is not None and final.held_until else ""
            return (
                f"{summary} I checked {filename} for faces and text and found {_found_words(keep)}; consent "
                f"{consent.consent_id} does not cover identifiable images, so I blurred what I found and am holding it "
                f"(not sent). Look at the PREVIEW I sent you, then type !blur {rid} to post it as shown, "
                f"or !discard {rid} to destroy it." + (f" If you do neither, I destroy it at {until}." if until else "")
            )
        if final is not None and final.state is ImageState.DISCARDED:
            return f"{summary} But {filename} was not sent: the consent no longer covers sharing."
        if checked:  # what was looked for, never a promise that nothing is there
            face_note = " I checked it for faces and text and found none (the check can miss some)."
        else:
            face_note = f" Consent {consent.consent_id} covers identifiable images, so I did not check it for faces or text."
        return (f"{summary} {filename} is on its way to {ref.specialty} ({ref.referral_id}: {lc.gist(ref.question)})."
                f"{face_note}")

    # ---- photos the GP has not yet said the referral of
    def _offer(self, refs: list[Referral]) -> tuple[str, str]:
        """("R-A (left forearm: gist), R-B (gist) or R-C (gist)", "!photo R-A, !photo R-B or
        !photo R-C"). The site leads when the GP gave one: two lesions of one patient often
        share the question's first words but never the site. The specialty is named only
        when the referrals are not all for the same one."""
        def join(items: list[str]) -> str:
            return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]

        mixed = len({r.specialty for r in refs}) > 1

        def label(r: Referral) -> str:
            where = ", ".join(x for x in (r.specialty if mixed else None, r.details.site) if x)
            return f"{r.referral_id} ({where + ': ' if where else ''}{lc.gist(r.question)})"

        return join([label(r) for r in refs]), join([f"!photo {r.referral_id}" for r in refs])

    async def _hold_unassigned(self, ctx: _Ctx, ev: ImageReceived, open_refs: list[Referral]) -> tuple[str, str | None, tuple[str, ...]]:
        """Keep the photo, cleaned of its metadata but not blurred, in the vault (never
        posted) and ask the GP which referral it is for. What the face/text check found
        (when any open referral's consent needed it) is kept with it; blurring waits until
        the referral, and so the consent, is known."""
        tx = ctx.tx
        actor = ev.actor

        def audit(action: str, details: dict) -> AuditEntry:
            return AuditEntry(actor.user_id, action, ev.at, details=details)

        prepared = ctx.prepared
        checked = prepared is not None and prepared.checked and prepared.result is not None
        found = await self._clean_or_refuse(lambda: self._cleaned(ctx, ev, checked), audit)
        clean = found
        if checked and (found.faces_blurred or found.text_blurred):
            # the blurred copy is not what a consent covering identifiable images should send
            clean = await self._clean_or_refuse(lambda: self._clean(ev.data, False), audit)
        photo_id = await self._new_image_id(tx, ev.event_id)
        newest_first = sorted(open_refs, key=lambda r: (r.opened_at, r.opened_seq), reverse=True)
        photo = UnassignedPhoto(
            photo_id=photo_id,
            referrer=actor.user_id,
            received_at=ev.at,
            destroy_at=ev.at + self.policy.unassigned_photo_ttl,
            media_type=clean.media_type,
            extension=clean.extension,
            upload_ref=ev.upload_ref,
            candidates=tuple(r.referral_id for r in newest_first),
            faces=found.faces if checked else 0,
            text_regions=found.text_regions if checked else 0,
            checked=checked,
            width=clean.width,
            height=clean.height,
            removed_metadata=tuple(r for r in clean.removed if r not in _BLUR_LABELS),
        )
        await tx.vault_put(photo_id, clean.data, clean.media_type)
        await tx.save_unassigned_photo(photo)
        await tx.append_audit(AuditEntry(actor.user_id, "image.unassigned", ev.at, details={
            "image_id": photo_id, "count": len(newest_first), "faces": photo.faces}))
        held = await tx.unassigned_photos(actor.user_id)
        for earlier in held:  # one batch: the GP is still sending, so the clock restarts for all
            if earlier.destroy_at < photo.destroy_at:
                await tx.save_unassigned_photo(dataclasses.replace(earlier, destroy_at=photo.destroy_at))
        labels = photo.removed_metadata
        removed = ("Removed: " + ", ".join(labels) + ".") if labels else "No hidden data found."
        until = fmt_clock(photo.destroy_at, self.policy.time_zone)
        refs, answers = self._offer(newest_first[:5])
        if len(held) == 1 and len(newest_first) == 1:
            ask = (f"I am holding this photo (cleaned, not sent). Is this photo for {refs}? Reply {answers} to send it "
                   f"there. If you don't, I destroy it at {until}.")
        elif len(held) == 1:
            ask = (f"I am holding this photo (cleaned, not sent). Which referral is this photo for: {refs}? "
                   f"Reply {answers}. If you don't, I destroy it at {until}.")
        else:
            ask = (f"I am holding {len(held)} photos (cleaned, not sent). Which referral are these photos for: {refs}? "
                   f"Reply {answers} (that sends all {len(held)} there). If you don't, I destroy them at {until}. "
                   f"For different referrals, type !discard and send each again with its R-… in the caption.")
        return f"{removed} {ask}", None, (actor.user_id,)

    async def _assign_photos(self, ctx: _Ctx, ev: CommandReceived, cmd: PhotoCmd) -> str:
        """``!photo R-…``: every photo held for this GP goes to that referral, through the
        same checks as a photo sent straight to it (room for it, consent, faces and text)."""
        tx = ctx.tx
        actor = ev.actor
        photos = await tx.unassigned_photos(actor.user_id)
        ref = await self._own_referral(tx, cmd.referral_id, actor)
        if not photos:
            return (f"I am not holding any photo for you. Send the photo with {ref.referral_id} in its caption, "
                    f"or as a reply to my message about {ref.referral_id}.")
        if not ref.is_open:
            raise _Refuse(lc.why_not(ref, lc.Input.ADD_IMAGE) + " The photos stay held until you name another referral or they are destroyed.")
        consent = await self._consent_covering_photo(tx, ref, actor, ev.at)
        check = not consent.identifiable

        def audit(action: str, details: dict) -> AuditEntry:
            return AuditEntry(actor.user_id, action, ev.at, ref.referral_id, ref.consent_id, details=details)

        lines = []
        for photo in photos:
            self._check_room_for_images(ref)
            data = await tx.vault_get(photo.photo_id)
            await tx.delete_unassigned_photo(photo.photo_id)
            if data is None:  # destroyed meanwhile: nothing to send
                continue
            image_id, in_vault = photo.photo_id, True
            if check and (not photo.checked or photo.faces or photo.text_regions):
                # this consent needs the check: run it (again) on the clean copy, and keep
                # only what it gives (blurred where it found something)
                keep = await self._clean_or_refuse(lambda: self._clean(data, True), audit)
                if keep.faces_blurred or keep.text_blurred or keep.data != data:
                    image_id, in_vault = await self._new_image_id(tx, f"{photo.photo_id}/checked", ref), False
                    await tx.vault_shred(photo.photo_id)
            else:
                keep = _Kept(data, photo.media_type, photo.extension, photo.width, photo.height,
                             faces=photo.faces, text_regions=photo.text_regions)
            if not check and not photo.checked:
                await tx.append_audit(AuditEntry(actor.user_id, "image.faces_not_checked", ev.at, ref.referral_id,
                                                 ref.consent_id, details={"rule": "consent.identifiable"}))
            lines.append(await self._attach(
                ctx, ref, consent, keep, actor=actor, at=ev.at, image_id=image_id, upload_ref=photo.upload_ref,
                routed_by="photo_command", checked=check, in_vault=in_vault, removed=(),
            ))
            ref = await tx.get_referral(ref.referral_id) or ref
        return "\n".join(line.removeprefix("No hidden data found. ") for line in lines)

    async def _discard_unassigned(self, ctx: _Ctx, ev: CommandReceived) -> str:
        photos = await ctx.tx.unassigned_photos(ev.actor.user_id)
        if not photos:
            return "I am not holding any photo for you. To drop a photo held for a face or text, type !discard R-…."
        for photo in photos:
            await ctx.tx.vault_shred(photo.photo_id)
            await ctx.tx.delete_unassigned_photo(photo.photo_id)
            await ctx.tx.append_audit(AuditEntry(ev.actor.user_id, "image.discarded", ev.at,
                                                 details={"image_id": photo.photo_id, "rule": "gp_unassigned"}))
        return f"{_plural(len(photos), 'photo')} I was holding destroyed; nothing was sent."

    async def _destroy_due_photos(self, tx: Transaction, at: datetime) -> list[Action]:
        """Unclaimed photos past their time: destroyed, and their GP told (one message)."""
        due = await tx.due_unassigned_photos(at)
        by_gp: dict[str, list[UnassignedPhoto]] = {}
        for photo in due:
            await tx.vault_shred(photo.photo_id)
            await tx.delete_unassigned_photo(photo.photo_id)
            await tx.append_audit(AuditEntry(BOT_ACTOR, "image.unassigned_destroyed", at,
                                             details={"image_id": photo.photo_id}))
            by_gp.setdefault(photo.referrer, []).append(photo)
        out: list[Action] = []
        zone = self.policy.time_zone
        for gp, photos in by_gp.items():
            when = ", ".join(fmt_clock(p.received_at, zone) for p in photos[:5])
            n = len(photos)
            out.append(Notify(
                user_id=gp,
                text=(f"I destroyed {'the photo' if n == 1 else f'{n} photos'} you sent at {when}: you did not say "
                      f"which referral {'it was' if n == 1 else 'they were'} for, so nothing was sent. "
                      f"Send {'it' if n == 1 else 'them'} again with R-… in the caption."),
                mentions=(gp,),
            ))
        return out

    # ------------------------------------------------------------------ failures
    async def _action_failed(self, ctx: _Ctx, ev: ActionFailed) -> None:
        tx = ctx.tx
        await tx.append_audit(
            AuditEntry(
                BOT_ACTOR,
                "action.failed",
                ev.at,
                referral_id=ev.referral_id,
                details={"action_type": ev.action_type, "permanent": ev.permanent},
            )
        )
        if not ev.permanent or ev.referral_id is None:
            return
        ref = await tx.get_referral(ev.referral_id)
        if ref is None:
            return
        if ev.action_type == "SendPreview" and ev.image_id is not None:
            await ctx.apply(*lc.preview_failed(ref, image_id=ev.image_id, reason=ev.reason, at=ev.at))
        elif ev.action_type in ("PostThreadRoot", "PostImage"):
            ref2, eff = lc.post_failed(
                ref, at=ev.at, root=ev.action_type == "PostThreadRoot", image_id=ev.image_id, action_key=ev.action_key
            )
            eff.actions.append(
                Notify(
                    user_id=ref.referrer,
                    text=f"I could not post {ref.referral_id} to the {ref.specialty} room: {ev.reason} Nothing of it was shared; ask your administrator, or !cancel {ref.referral_id}.",
                )
            )
            await ctx.apply(ref2, eff)
        elif ev.action_type in ("ExportReferral", "FileRecord"):
            ctx.add(Notify(user_id=ref.referrer, text=f"Filing {ref.referral_id} did not complete: {ev.reason}"))
        elif ev.action_type == "RemoveImages":
            ctx.add(
                Notify(
                    user_id=ref.referrer,
                    text=f"I could not remove the images of {ref.referral_id} from the {ref.specialty} room: {ev.reason} Your administrator has been told via the audit trail.",
                )
            )
