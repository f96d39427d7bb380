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
* An image goes to the GP's most recently opened referral that is still open (opened
  last in the store's sequence: never judged by the wall clock, which can step back).
* Faces or text found and the consent does not cover identifiable images: the image is
  blurred at once (faces and text boxes) and only the blurred copy is kept, HELD until the
  GP types ``!blur R-…`` (send it blurred) or ``!discard R-…``. Nothing unblurred is posted.
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
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
from datetime import datetime
from typing import Any, Callable

from handlers import lifecycle as lc
from handlers.actions import Action, Notify, RedactOriginalUpload, RemoveImages, Reply
from handlers.commands import (
    HELP_TEXT,
    HELP_TOPICS,
    BlurCmd,
    CancelCmd,
    CommandError,
    ConsentCmd,
    ConsentShowCmd,
    DiscardCmd,
    ExportCmd,
    HelpCmd,
    OpinionCmd,
    ReferCmd,
    StatusCmd,
    WithdrawCmd,
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
    Place,
    RecordFiled,
    SpecialtyThread,
    ThreadActivity,
    ThreadRootPosted,
    Tick,
)
from handlers.ids import make_id
from handlers.model import (
    BOT_ACTOR,
    Actor,
    AuditEntry,
    ConsentRecord,
    ImageItem,
    ImageState,
    Referral,
    ReferralState,
)
from handlers.patientref import PATIENT_REF_MEDIA_TYPE, PatientRefHasher, normalise_patient_ref, patient_ref_vault_id
from handlers.policy import Policy
from storage.interfaces import RecordUnreadable, Store, StoreError, Transaction

__all__ = ["ClearedImage", "Workflow"]

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


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """An uploaded image cleaned before the transaction (or why it could not be)."""

    checked: bool  # the face/text check ran (and what it found is blurred)
    result: Any = None
    error: BaseException | None = None


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
    """'1 face', 'text', '2 faces and text in 3 places': what the identifiability check found."""
    bits = [_plural(result.faces, "face")] if result.faces else []
    if result.text_regions:
        bits.append("text" if result.text_regions == 1 else f"text in {result.text_regions} places")
    return " and ".join(bits)


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

    # ------------------------------------------------------------------ entry point
    async def handle(self, event: Any) -> list[Action]:
        if isinstance(event, Tick):
            return await self._tick(event.at)
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
            ref = await self._thread_referral(ctx.tx, event.place)
            if ref is not None:
                await ctx.apply(*lc.discussed(ref, at=event.at, actor=event.actor.user_id))
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
                        at=event.at, members=tuple(event.members),
                    )
                )
        elif isinstance(event, ImagesRemoved):
            ref = await ctx.tx.get_referral(event.referral_id)
            if ref is not None:
                await ctx.apply(
                    *lc.images_removed(ref, image_ids=tuple(event.image_ids), at=event.at, media_deleted=event.media_deleted)
                )
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
                    ctx = _Ctx(tx, f"tick:{at.isoformat()}:{rid}")
                    await ctx.apply(*lc.tick(ref, at=at, policy=self.policy))
                    out.extend(await ctx.flush())
            except StoreError as exc:
                if not isinstance(exc, RecordUnreadable):
                    raise
                await self._set_aside(rid, "unreadable", at)
            except Exception as exc:  # a bug in one referral's rules
                log.exception("the timer failed on referral %s", rid)
                await self._set_aside(rid, f"error ({type(exc).__name__})", at)
        async with self.store.transaction() as tx:
            await self._tick_patient_refs(tx, at)
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
        try:
            cmd = parse_command(ev.text)
        except CommandError as exc:
            ctx.add(Reply(to=ev.place, text=str(exc)))
            return
        try:
            text = await self._run_command(ctx, ev, cmd)
        except _Refuse as exc:
            if exc.audit is not None:
                await ctx.tx.append_audit(exc.audit)
            text = str(exc)
        except lc.IllegalTransition as exc:
            text = str(exc)
        if text:
            ctx.add(Reply(to=ev.place, text=text))

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
        ref = await tx.get_referral(rid)
        if ref is None:
            raise _Refuse(f"There is no referral {rid}; check the id with !status.")
        if ref.referrer == actor.user_id:
            return ref
        if allow_specialists:
            spec = self.policy.specialties.get(ref.specialty)
            if spec is not None and actor.user_id in spec.roster:
                return ref
        raise _Refuse(f"{rid} is not one of your referrals.")

    async def _run_command(self, ctx: _Ctx, ev: CommandReceived, cmd: Any) -> str | None:
        tx = ctx.tx
        actor = ev.actor
        if isinstance(cmd, HelpCmd):
            return HELP_TOPICS.get(cmd.topic, HELP_TEXT) if cmd.topic else HELP_TEXT
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
        if isinstance(cmd, (BlurCmd, DiscardCmd)):
            self._in_direct_chat(ev, "!blur / !discard")
            ref = await self._own_referral(tx, cmd.referral_id, actor)
            if isinstance(cmd, DiscardCmd):
                ref = await ctx.apply(*lc.discard_held(ref, at=ev.at, actor=actor.user_id))
                return f"Held image(s) of {ref.referral_id} discarded and destroyed; nothing was sent."
            consent = await self._consent_of(tx, ref)
            refusal = check_cover(consent, actor=actor, at=ev.at, policy=self.policy)
            if refusal is not None:
                raise _Refuse(refusal.message)
            ref = await ctx.apply(*lc.release_held(ref, consent=consent, at=ev.at, actor=actor.user_id))
            return f"Sending the held image(s) of {ref.referral_id} with the faces and text I found blurred."
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
            raise _Refuse(f"There is no consent {cmd.consent_id}; check the id.")
        if self._practice(ev.actor) != consent.practice:
            raise _Refuse(
                f"Consent {cmd.consent_id} was recorded by another practice; only that practice can read it.",
                audit=AuditEntry(ev.actor.user_id, "consent.show_refused", ev.at, consent_id=consent.consent_id,
                                 details={"rule": "practice"}),
            )
        await ctx.tx.append_audit(AuditEntry(ev.actor.user_id, "consent.shown", ev.at, consent_id=consent.consent_id))
        return describe_consent(consent, at=ev.at, policy=self.policy)

    # ---- !refer
    async def _refer(self, ctx: _Ctx, ev: CommandReceived, cmd: ReferCmd) -> str:
        tx = ctx.tx
        if len(cmd.question) > 2000:
            raise _Refuse("The question is too long (over 2000 characters); keep it to a short paragraph.")
        spec = self.policy.find_specialty(cmd.specialty)
        if spec is None:
            names = ", ".join(self.policy.specialty_names()) or "none configured"
            raise _Refuse(f"I don't know the specialty {cmd.specialty!r}; choose one of: {names}.")
        consent = await tx.get_consent(cmd.consent_id)
        if consent is None:
            raise _Refuse(f"There is no consent {cmd.consent_id}; record one with !consent (see !help consent).")
        refusal = check_cover(consent, actor=ev.actor, at=ev.at, policy=self.policy, specialty=spec.key)
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
        )
        await ctx.apply(ref, eff)
        return (
            f"Referral {rid} opened for {spec.title or spec.key}; I am starting its thread in the specialists' room. "
            f"Send the photo(s) here now. I strip hidden data, post them in that thread, and remove them after the opinion "
            f"(or at {lc.fmt_time(ref.expires_at)} if nobody answers)."
        )

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
            raise _Refuse(f"This thread is {ref.referral_id}, not {cmd.referral_id}; give the opinion in the right thread.")
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

    # ---- !withdraw
    async def _withdraw(self, ctx: _Ctx, ev: CommandReceived, cmd: WithdrawCmd) -> str:
        tx = ctx.tx
        consent = await tx.get_consent(cmd.consent_id)
        if consent is None:
            raise _Refuse(f"There is no consent {cmd.consent_id}; check the id.")
        if self._practice(ev.actor) != consent.practice:
            raise _Refuse(f"Consent {cmd.consent_id} was recorded by another practice; only that practice can withdraw it.")
        if consent.withdrawn:
            raise _Refuse(f"Consent {cmd.consent_id} was already withdrawn.")
        consent = dataclasses.replace(consent, withdrawn_at=ev.at, withdrawn_by=ev.actor.user_id)
        await tx.save_consent(consent)
        await tx.append_audit(AuditEntry(ev.actor.user_id, "consent.withdrawn", ev.at, consent_id=consent.consent_id))
        await self._shred_patient_ref(tx, consent.consent_id, ev.at, "withdrawn")
        closed = removing = shredded = 0
        for ref in await tx.referrals_by_consent(consent.consent_id):
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
        bits = [f"{ref.referral_id} {ref.specialty}: {_STATE_WORDS[ref.state]}"]
        if ref.state is ReferralState.CLOSED and ref.close_reason is not None:
            bits[0] += f" ({ref.close_reason.value})"
        bits.append(_plural(len([i for i in ref.images if i.state is not ImageState.DISCARDED]), "image"))
        if posted:
            bits.append(f"{posted} in the thread")
        if held:
            bits.append(f"{held} held (type !blur {ref.referral_id} or !discard {ref.referral_id})")
        if ref.is_open:
            bits.append(f"expires {lc.fmt_time(ref.expires_at)}")
        if ref.state is ReferralState.OPINION_GIVEN and ref.remove_images_at:
            bits.append(f"images removed {lc.fmt_time(ref.remove_images_at)}")
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
        try:
            return _Prepared(check, await self._clean(ev.data, check))
        except Exception as exc:  # reported by _intake, with its audit entry
            return _Prepared(check, error=exc)

    async def _clean(self, data: bytes, check: bool) -> Any:
        """One call: strip metadata and, when ``check``, find faces and text and blur them."""
        kwargs: dict[str, Any] = {"detect_faces": check}
        if check:
            kwargs.update(detect_text=True, blur_faces=True, blur_text=True)
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

    async def _image(self, ctx: _Ctx, ev: ImageReceived) -> None:
        if not isinstance(ev.place, DirectChat):
            ctx.add(Reply(to=ev.place, text="Photos for a referral go in your direct chat with me, not here."))
            return
        # the raw upload never stays in the chat, whatever happens next
        ctx.add(RedactOriginalUpload(upload_ref=ev.upload_ref))
        try:
            text = await self._intake(ctx, ev)
        except _Refuse as exc:
            if exc.audit is not None:
                await ctx.tx.append_audit(exc.audit)
            text = str(exc) + " I removed your upload from this chat."
        except lc.IllegalTransition as exc:
            text = str(exc) + " I removed your upload from this chat."
        ctx.add(Reply(to=ev.place, text=text))

    async def _intake(self, ctx: _Ctx, ev: ImageReceived) -> str:
        from handlers.sanitizer import ImageRefused

        tx = ctx.tx
        actor = ev.actor
        open_refs = await tx.open_referrals_by_referrer(actor.user_id)
        if not open_refs:
            raise _Refuse("You have no open referral for this photo: record consent with !consent and open one with !refer first.")
        ref = open_refs[-1]  # the newest by the store's opening sequence, never by the clock
        live = [i for i in ref.images if i.state is not ImageState.DISCARDED]
        if len(live) >= self.policy.max_images_per_referral:
            raise _Refuse(f"{ref.referral_id} already has {len(live)} images, the most allowed; open another referral for more.")
        consent = await self._consent_of(tx, ref)
        refusal = check_cover(consent, actor=actor, at=ev.at, policy=self.policy)
        if refusal is not None:
            raise _Refuse(
                f"Photo not shared: {refusal.message}",
                audit=AuditEntry(actor.user_id, "image.refused", ev.at, ref.referral_id, ref.consent_id, details={"rule": refusal.rule}),
            )
        if not ev.data:
            raise _Refuse("That file was empty or too large for me to fetch; send a smaller photo (JPEG, PNG or HEIC).")
        # The face/text check exists to stop an identifiable image the consent does not cover.
        # When the consent covers identifiable images nothing depends on it, so it is not
        # run (it is most of the sanitizer's time on a phone photo); otherwise it is
        # mandatory and blocks posting. Metadata is stripped either way.
        check_faces = not consent.identifiable
        try:
            keep = await self._cleaned(ctx, ev, check_faces)
        except ImageRefused as exc:
            raise _Refuse(
                str(exc),
                audit=AuditEntry(actor.user_id, "image.refused", ev.at, ref.referral_id, ref.consent_id, details={"rule": f"sanitizer.{exc.reason}"}),
            ) from None
        except Exception as exc:  # never a traceback for bad input
            raise _Refuse(
                "I could not read that image; send it again as a JPEG or PNG photo.",
                audit=AuditEntry(actor.user_id, "image.refused", ev.at, ref.referral_id, ref.consent_id, details={"rule": "sanitizer.error", "kind": type(exc).__name__}),
            ) from None
        held = check_faces and bool(keep.faces or keep.text_regions)  # blurred copy kept, held for the GP
        removed_labels = [r for r in keep.removed if r not in _BLUR_LABELS]

        n = len(ref.images) + 1
        filename = f"{ref.referral_id}-{n}.{keep.extension}"
        attempt = 0
        image_id = make_id("I", ev.event_id)
        while ref.image(image_id) is not None or await tx.vault_get(image_id) is not None:
            attempt += 1
            image_id = make_id("I", ev.event_id, attempt)
        item = ImageItem(
            image_id=image_id,
            referral_id=ref.referral_id,
            filename=filename,
            media_type=keep.media_type,
            received_at=ev.at,
            retention_until=ev.at + consent.retention,
            upload_ref=ev.upload_ref,
            state=ImageState.HELD if held else ImageState.WAITING,
            faces=keep.faces,
            faces_blurred=keep.faces_blurred,
            width=keep.width,
            height=keep.height,
            removed_metadata=tuple(removed_labels),
        )
        if not check_faces:  # the record must not read "0 faces found" as if it had looked
            await tx.append_audit(AuditEntry(actor.user_id, "image.faces_not_checked", ev.at, ref.referral_id,
                                             ref.consent_id, details={"rule": "consent.identifiable"}))
        ref2, effects = lc.add_image(ref, item, consent=consent, at=ev.at, actor=actor.user_id)
        final = ref2.image(image_id)
        if (final is not None and final.state in (ImageState.WAITING, ImageState.POSTING)
                and self.on_image_cleared is not None):
            # before the vault write and the commit, so the transport's upload overlaps them
            try:
                self.on_image_cleared(ClearedImage(ref.referral_id, image_id, filename, keep.media_type, keep.data))
            except Exception:  # an optimisation only: the post uploads from the vault anyway
                log.warning("on_image_cleared failed", exc_info=True)
        await tx.vault_put(image_id, keep.data, keep.media_type)
        await tx.patient_ref_keep(consent.consent_id, item.retention_until)
        await ctx.apply(ref2, effects)
        removed = ("Removed: " + ", ".join(removed_labels) + ".") if removed_labels else "No hidden data found."
        if held:
            return (
                f"{removed} I found {_found_words(keep)} in {filename} and consent {consent.consent_id} "
                f"does not cover identifiable images, so I am holding it (not sent). "
                f"Type !blur {ref.referral_id} to send it with those blurred, or !discard {ref.referral_id} to drop it."
            )
        if final is not None and final.state is ImageState.DISCARDED:
            return f"{removed} But {filename} was not sent: the consent no longer covers sharing."
        if check_faces:  # what was looked for, never a promise that nothing is there
            face_note = " I checked it for faces and text and found none (the check can miss some)."
        else:
            face_note = f" Consent {consent.consent_id} covers identifiable images, so I did not check it for faces or text."
        return f"{removed} {filename} is on its way to {ref.specialty} ({ref.referral_id}).{face_note}"

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
        if ev.action_type in ("PostThreadRoot", "PostImage"):
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
