"""The referral lifecycle: ONE state machine, in one place, with no I/O (h11 style).

States (``ReferralState``)::

    opened ──image──▶ images_received ──ImagePosted──▶ posted ──thread msg──▶ discussed
       │                    │                            │  ╲                   │
       │                    │                            │   ╲───!opinion──────┤
       │                    │                            ▼                     ▼
       │                    │                       opinion_given ──grace period──▶ images_expired
       │                    │                                                       │
       └── cancel / withdraw / max lifetime (nothing in chat) ─────────▶ closed ◀───┘ ImagesRemoved
           cancel / withdraw / max lifetime (images in chat) ─▶ images_expired

Every public function takes the current ``Referral`` plus the input (with its
timestamp) and returns ``(new_referral, Effects)``; nothing is mutated. The
workflow saves the referral, appends ``effects.audit``, shreds ``effects.shred``
from the vault and enqueues ``effects.actions`` — all in one transaction.

An input that is not allowed in the current state raises ``IllegalTransition``
whose message is one plain sentence for the user (the workflow replies with it).
The table ``ALLOWED`` is the single source of truth for what is allowed where.

Opening a referral requests its thread root (``PostThreadRoot``) at once; images wait
for it if they arrive first, and a root that failed is requested again by the next
image.

The conversation around a referral (relaying the specialists' messages to the GP and
the GP's answers into the thread, ``!morephotos``, ``!addendum``) is decided here too:
who may do it is checked by the workflow, when it may happen is the ``ALLOWED`` table.

The clock as a safety net (issue 12 part 5) is decided here too, from the times in
``handlers/clock.py``: the first photo in the thread starts the escalation clock and
tells the GP, once, to delete the originals from the phone; ``tick`` escalates (once) and
warns before expiry (once), only while the referral is open; ``pathway_reminder`` points
a question that reads like suspected cancer to the 2-week-wait pathway.

Per-image states (``ImageState``): held (faces or text, consent not identifiable) ->
waiting (no thread root yet) -> posting (PostImage enqueued) -> posted ->
removing (RemoveImages enqueued) -> removed; or discarded (never shown). No
``PostImage`` is produced unless ``handlers.consent.check_cover`` passes at that moment.

A held image shows the GP a preview (``SendPreview``: the same blurred vault copy that
``!blur`` posts) and waits ``Policy.held_photo_ttl`` for the GP's decision. The preview
lives only while its image is held or on its way to the thread: whatever moves the image
on (posted, discarded, the held time over, the referral closed, consent withdrawn) also
takes the preview out of the chat (``RemovePreview``; ``_settle_previews`` is the one
rule, called by every transition that can move an image).
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from handlers.actions import (
    Acknowledge,
    Action,
    FileRecord,
    Notify,
    PostedImageRef,
    PostImage,
    PostThreadRoot,
    PurgeFiledCopies,
    RemoveImages,
    RemovePreview,
    Reply,
    SendPreview,
)
from handlers import clock
from handlers.cancerwords import suspected_cancer
from handlers.consent import check_cover
from handlers.events import DirectChat, Place, SpecialtyThread
from handlers.model import (
    BOT_ACTOR,
    OPEN_STATES,
    Addendum,
    AuditEntry,
    CloseReason,
    ConsentRecord,
    ImageItem,
    ImageState,
    PreviewState,
    Referral,
    ReferralState,
)
from handlers.policy import Policy
from handlers.timefmt import DEFAULT_ZONE
from handlers.timefmt import fmt_time as _fmt_time

__all__ = [
    "Input",
    "ALLOWED",
    "IllegalTransition",
    "Effects",
    "open_referral",
    "add_image",
    "release_held",
    "discard_held",
    "preview_sent",
    "preview_failed",
    "preview_removed",
    "found_words",
    "root_posted",
    "image_posted",
    "discussed",
    "give_opinion",
    "cancel",
    "withdraw",
    "images_removed",
    "post_failed",
    "exported",
    "request_filing",
    "record_filed",
    "copies_purged",
    "tick",
    "relay_to_gp",
    "relay_to_thread",
    "request_more_photos",
    "add_addendum",
    "pathway_reminder",
    "gist",
    "why_not",
    "fmt_time",
]

S = ReferralState


class Input(str, enum.Enum):
    ADD_IMAGE = "add_image"
    RELEASE_HELD = "release_held"
    DISCARD_HELD = "discard_held"
    ROOT_POSTED = "root_posted"
    IMAGE_POSTED = "image_posted"
    DISCUSS = "discuss"
    OPINION = "opinion"
    CANCEL = "cancel"
    WITHDRAW = "withdraw"
    EXPIRE = "expire"  # max lifetime reached (tick)
    REMIND = "remind"  # reminder before max lifetime (tick)
    ESCALATE = "escalate"  # no opinion after the configured working time: the lead is asked (tick)
    GRACE_ELAPSED = "grace_elapsed"  # grace period after opinion (tick)
    IMAGES_REMOVED = "images_removed"
    EXPORTED = "exported"
    RETENTION = "retention"  # vault retention ended for an image (tick)
    RELAY_TO_GP = "relay_to_gp"  # a roster specialist wrote in the thread
    RELAY_TO_THREAD = "relay_to_thread"  # the GP answered
    MORE_PHOTOS = "more_photos"  # a specialist asked for another photo
    ADDENDUM = "addendum"  # a specialist added to the opinion
    FILE = "file"  # file the record: on closing, !export, withdrawal, an addendum
    FILED = "filed"  # feedback from the sinks (RecordFiled)
    PREVIEW = "preview"  # feedback about a held image's preview (sent, failed, removed)


_OPEN = tuple(s for s in S if s in OPEN_STATES)  # in lifecycle order
_ALL = tuple(S)

#: input -> states in which it is accepted. Anything else raises IllegalTransition.
ALLOWED: dict[Input, tuple[ReferralState, ...]] = {
    Input.ADD_IMAGE: _OPEN,
    Input.RELEASE_HELD: _OPEN,
    Input.DISCARD_HELD: _OPEN,
    Input.ROOT_POSTED: _ALL,  # feedback may arrive late; handled per state
    Input.IMAGE_POSTED: _ALL,  # late post after closing -> removed at once
    Input.DISCUSS: _ALL,  # only posted -> discussed changes state
    Input.OPINION: (S.POSTED, S.DISCUSSED),
    Input.CANCEL: _OPEN + (S.OPINION_GIVEN,),
    Input.WITHDRAW: _ALL,
    Input.EXPIRE: _OPEN,
    Input.REMIND: _OPEN,
    Input.ESCALATE: _OPEN,  # the safety net stops when the referral closes
    Input.GRACE_ELAPSED: (S.OPINION_GIVEN,),
    Input.IMAGES_REMOVED: _ALL,
    Input.EXPORTED: _ALL,
    Input.RETENTION: _ALL,
    # the conversation goes on while the images are in the room (a "thank you" after the
    # opinion is natural); once the referral is closed it is over
    Input.RELAY_TO_GP: _OPEN + (S.OPINION_GIVEN, S.IMAGES_EXPIRED),
    Input.RELAY_TO_THREAD: _OPEN + (S.OPINION_GIVEN, S.IMAGES_EXPIRED),
    Input.MORE_PHOTOS: _OPEN,  # before the opinion: afterwards a referral takes no photos
    # an opinion can be added to as long as the record exists (also after the images went)
    Input.ADDENDUM: (S.OPINION_GIVEN, S.IMAGES_EXPIRED, S.CLOSED),
    Input.FILE: _ALL,  # a referral is filed whatever its chat state; withdrawal re-files the notice
    Input.FILED: _ALL,
    Input.PREVIEW: _ALL,  # feedback may arrive late; a preview outliving its image is removed
}


class IllegalTransition(Exception):
    """The input is not allowed now. ``str(exc)`` is a plain sentence for the user."""

    def __init__(self, message: str, *, state: ReferralState, input: Input):
        super().__init__(message)
        self.state = state
        self.input = input


@dataclass
class Effects:
    actions: list[Action] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    shred: list[str] = field(default_factory=list)  # vault image ids to crypto-shred

    def extend(self, other: "Effects") -> "Effects":
        self.actions.extend(other.actions)
        self.audit.extend(other.audit)
        self.shred.extend(other.shred)
        return self


def fmt_time(at: datetime, zone: str = DEFAULT_ZONE) -> str:
    """A time for people: local to the deployment's zone, with its abbreviation."""
    return _fmt_time(at, zone)


def gist(question: str, words: int = 6, chars: int = 48) -> str:
    """The first words of a clinical question, so a GP with several referrals open can
    tell them apart ("Pigmented lesion left forearm, grown over…")."""
    cut = " ".join(question.split()[:words])
    if len(cut) > chars:
        cut = cut[:chars].rsplit(" ", 1)[0] or cut[:chars]
    return cut + ("…" if cut != " ".join(question.split()) else "")


def _why_not(ref: Referral, inp: Input) -> str:
    rid = ref.referral_id
    st = ref.state
    if inp is Input.ADDENDUM:
        return f"{rid} has no opinion yet; give it with !opinion <text>."
    if st is S.CLOSED:
        if inp in (Input.RELAY_TO_GP, Input.RELAY_TO_THREAD):
            return f"{rid} is closed, so messages about it are no longer passed on."
        return f"{rid} is closed."
    if st is S.IMAGES_EXPIRED:
        return f"{rid} is closing: its images are being removed."
    if inp is Input.OPINION:
        if st is S.OPINION_GIVEN:
            return f"An opinion on {rid} has already been given."
        return f"No image of {rid} has been posted yet, so there is nothing to give an opinion on."
    if inp in (Input.ADD_IMAGE, Input.RELEASE_HELD, Input.DISCARD_HELD) and st is S.OPINION_GIVEN:
        return f"The opinion on {rid} has been given, so it takes no more images; open a new referral with !refer."
    if inp is Input.MORE_PHOTOS and st is S.OPINION_GIVEN:
        return f"The opinion on {rid} has been given, so it takes no more photos; add to it with !addendum <text>."
    if inp is Input.GRACE_ELAPSED:
        return f"{rid} has no opinion yet."
    return f"{rid} cannot do that now (it is {st.value.replace('_', ' ')})."


def why_not(ref: Referral, inp: Input) -> str:
    """The plain sentence ``IllegalTransition`` would carry for *inp* on *ref* now."""
    return _why_not(ref, inp)


def _require(ref: Referral, inp: Input) -> None:
    if ref.state not in ALLOWED[inp]:
        raise IllegalTransition(_why_not(ref, inp), state=ref.state, input=inp)


def _audit(actor: str, action: str, at: datetime, ref: Referral, **details: str | int | bool) -> AuditEntry:
    return AuditEntry(
        actor=actor, action=action, at=at, referral_id=ref.referral_id, consent_id=ref.consent_id, details=dict(details)
    )


def _thread(ref: Referral) -> SpecialtyThread:
    return SpecialtyThread(ref.specialty, ref.referral_id, ref.thread_root_event_id)


# ------------------------------------------------------------------ opening
def open_referral(
    *,
    referral_id: str,
    consent: ConsentRecord,
    referrer: str,
    practice: str,
    specialty: str,
    question: str,
    at: datetime,
    policy: Policy,
    opened_seq: int = 0,
    urgency: str = clock.ROUTINE,
) -> tuple[Referral, Effects]:
    """A new referral in state ``opened``, with its thread root requested at once.
    The caller has already checked the consent (``check_cover``) and that the
    specialty exists. ``urgency`` sets the answer window and the expiry warning
    (handlers/clock.py: urgent ones run on working time and are shorter).

    The root (question, no patient identifiers) is posted when the referral opens,
    not when the first photo arrives: the specialists see the question straight
    away, the GP learns of an unsafe specialty room before sending a photo, and a
    photo then needs one post, not two in a row. Photos follow in the thread."""
    ref = Referral(
        referral_id=referral_id,
        consent_id=consent.consent_id,
        referrer=referrer,
        practice=practice,
        specialty=specialty,
        question=question,
        opened_at=at,
        expires_at=at,  # set below, from the urgency as the referral holds it
        reminder_at=at,
        opened_seq=opened_seq,
        root_requested=True,
        urgency=urgency,
    )
    urgency = clock.urgency_of(ref)
    expires_at = clock.answer_deadline(at, urgency, policy)
    ref = dataclasses.replace(
        ref, expires_at=expires_at, reminder_at=clock.warning_time(expires_at, urgency, policy, not_before=at)
    )
    eff = Effects(audit=[_audit(referrer, "referral.opened", at, ref, specialty=specialty, urgency=urgency)])
    eff.actions.append(
        PostThreadRoot(
            referral_id=referral_id, specialty=specialty, text=_root_text(ref, consent, policy),
            mentions=_roster(ref, policy)
        )
    )
    return ref, eff


def _roster(ref: Referral, policy: Policy | None) -> tuple[str, ...]:
    """Who is alerted in the specialty room: the specialty's roster."""
    spec = policy.specialties.get(ref.specialty) if policy is not None else None
    return tuple(sorted(spec.roster)) if spec is not None else ()


# ------------------------------------------------------------------ images
def _schedule_post(
    ref: Referral, item: ImageItem, consent: ConsentRecord, at: datetime, eff: Effects, policy: Policy | None = None
) -> Referral:
    """Move an accepted image towards the thread: PostImage if the root exists, else
    wait for it (requesting the root once). Re-checks consent first."""
    refusal = check_cover(consent, actor=None, at=at)
    if refusal is not None:
        item = dataclasses.replace(item, state=ImageState.DISCARDED)
        eff.audit.append(_audit(BOT_ACTOR, "image.discarded", at, ref, image_id=item.image_id, rule=refusal.rule))
        if not item.shredded:
            eff.shred.append(item.image_id)
            item = dataclasses.replace(item, shredded=True)
        return ref.with_image(item)
    if ref.more_photos_requested:
        ref = dataclasses.replace(ref, more_photos_requested=False)  # the asked-for photo came
    if ref.thread_root_event_id is not None:
        item = dataclasses.replace(item, state=ImageState.POSTING)
        eff.actions.append(
            PostImage(
                referral_id=ref.referral_id,
                specialty=ref.specialty,
                thread_root_event_id=ref.thread_root_event_id,
                image_id=item.image_id,
                filename=item.filename,
                media_type=item.media_type,
                width=item.width,
                height=item.height,
            )
        )
        eff.audit.append(_audit(BOT_ACTOR, "image.post_requested", at, ref, image_id=item.image_id))
        return ref.with_image(item)
    item = dataclasses.replace(item, state=ImageState.WAITING)
    ref = ref.with_image(item)
    if not ref.root_requested:
        ref = dataclasses.replace(ref, root_requested=True)
        eff.actions.append(
            PostThreadRoot(
                referral_id=ref.referral_id,
                specialty=ref.specialty,
                text=_root_text(ref, consent, policy),
                mentions=_roster(ref, policy),
            )
        )
    return ref


def _root_text(ref: Referral, consent: ConsentRecord, policy: Policy | None = None) -> str:
    covers = "covered" if consent.identifiable else "NOT covered (photos checked for faces and text; what was found is blurred)"
    urgent = ""
    if clock.is_urgent(ref):  # first, so a phone's thread list shows it
        zone = policy.time_zone if policy is not None else DEFAULT_ZONE
        urgent = f"URGENT: please answer by {fmt_time(ref.expires_at, zone)}.\n"
    return (
        urgent
        + f"Referral {ref.referral_id} from a GP at {ref.practice}.\n"
        f"Question: {ref.question}\n"
        f"Consent {consent.consent_id}: care / second opinion; identifiable images {covers}.\n"
        f"The photos follow in this thread. What you write here reaches the GP, who can answer here; "
        f"!morephotos <what is needed> asks for another photo; !opinion <text> gives the opinion. "
        f"Images are removed after the opinion."
    )


def add_image(
    ref: Referral,
    item: ImageItem,
    *,
    consent: ConsentRecord,
    at: datetime,
    actor: str,
    routed_by: str = "only_waiting",
    policy: Policy | None = None,
) -> tuple[Referral, Effects]:
    """A clean image (already in the vault) joins the referral. ``item.state`` must be
    ``HELD`` (faces, awaiting the GP) or ``WAITING`` (accepted). ``routed_by`` says how
    the workflow knew the photo is for this referral (audited): ``only_waiting``,
    ``caption``, ``reply`` or ``photo_command``."""
    _require(ref, Input.ADD_IMAGE)
    eff = Effects()
    if item.state is ImageState.HELD:
        # the GP sees what would be sent before deciding; undecided, it does not linger
        ttl = (policy or Policy()).held_photo_ttl
        item = dataclasses.replace(item, held_until=at + ttl, preview=PreviewState.REQUESTED)
        ref = ref.with_image(item)
        eff.audit.append(
            _audit(actor, "image.held", at, ref, image_id=item.image_id, faces=item.faces,
                   regions=item.text_regions, routed_by=routed_by)
        )
        eff.actions.append(_send_preview(ref, item))
        return ref, eff
    eff.audit.append(
        _audit(
            actor,
            "image.accepted",
            at,
            ref,
            image_id=item.image_id,
            removed=len(item.removed_metadata),
            faces=item.faces,
            routed_by=routed_by,
        )
    )
    ref = _schedule_post(ref, item, consent, at, eff, policy)
    if ref.state is S.OPENED and any(i.state is not ImageState.DISCARDED for i in ref.images if i.state is not ImageState.HELD):
        ref = dataclasses.replace(ref, state=S.IMAGES_RECEIVED)
    return ref, eff


def release_held(
    ref: Referral, *, consent: ConsentRecord, at: datetime, actor: str, policy: Policy | None = None
) -> tuple[Referral, Effects]:
    """The GP confirmed sending the held (already blurred) images."""
    _require(ref, Input.RELEASE_HELD)
    held = [i for i in ref.images if i.state is ImageState.HELD]
    if not held:
        raise IllegalTransition(f"{ref.referral_id} has no held image.", state=ref.state, input=Input.RELEASE_HELD)
    eff = Effects()
    for item in held:
        eff.audit.append(_audit(actor, "image.released", at, ref, image_id=item.image_id))
        ref = _schedule_post(ref, dataclasses.replace(item, state=ImageState.WAITING), consent, at, eff, policy)
    if ref.state is S.OPENED and any(i.state in (ImageState.WAITING, ImageState.POSTING) for i in ref.images):
        ref = dataclasses.replace(ref, state=S.IMAGES_RECEIVED)
    ref = _settle_previews(ref, eff, at)  # kept until posted; gone at once if refused
    return ref, eff


def discard_held(ref: Referral, *, at: datetime, actor: str) -> tuple[Referral, Effects]:
    """The GP dropped the held images: they are shredded and never shown."""
    _require(ref, Input.DISCARD_HELD)
    held = [i for i in ref.images if i.state is ImageState.HELD]
    if not held:
        raise IllegalTransition(f"{ref.referral_id} has no held image.", state=ref.state, input=Input.DISCARD_HELD)
    eff = Effects()
    for item in held:
        ref = ref.with_image(dataclasses.replace(item, state=ImageState.DISCARDED, shredded=True))
        if not item.shredded:
            eff.shred.append(item.image_id)
        eff.audit.append(_audit(actor, "image.discarded", at, ref, image_id=item.image_id, rule="gp"))
    ref = _settle_previews(ref, eff, at)
    return ref, eff


# ------------------------------------------------------------------ previews
def found_words(faces: int, text_regions: int) -> str:
    """'1 face', '2 faces and 1 text area', '3 text areas': what the check found."""
    bits = []
    if faces:
        bits.append(f"{faces} face{'' if faces == 1 else 's'}")
    if text_regions:
        bits.append(f"{text_regions} text area{'' if text_regions == 1 else 's'}")
    return " and ".join(bits)


def _send_preview(ref: Referral, item: ImageItem) -> SendPreview:
    """The preview of a held image: its blurred vault copy, with words that say what was
    looked for, what was found and blurred, and how to confirm. Never that nothing else
    identifies the patient: the check finds most faces and text, not all."""
    rid = ref.referral_id
    found = found_words(item.faces, item.text_regions) or "what I found"
    head = f"{item.filename}, checked for faces and text: {found} blurred."
    tail = "The check can miss some, so look before you send."
    return SendPreview(
        user_id=ref.referrer,
        referral_id=rid,
        image_id=item.image_id,
        filename=item.filename,
        media_type=item.media_type,
        width=item.width,
        height=item.height,
        text=(f"PREVIEW, not sent: {head} !blur {rid} posts exactly this image to {ref.specialty}; "
              f"!discard {rid} destroys it. {tail}"),
        text_without_image=(
            f"PREVIEW, not sent (no picture: this chat is not end-to-end encrypted): {head} "
            f"!blur {rid} posts it to {ref.specialty} with those blurred; !discard {rid} destroys it. "
            f"{tail}"),
    )


#: image states in which a preview still has a purpose (the image is held, or on its way)
_PREVIEW_USEFUL = (ImageState.HELD, ImageState.WAITING, ImageState.POSTING)


def _settle_previews(ref: Referral, eff: Effects, at: datetime) -> Referral:
    """THE preview rule: a preview in the chat whose image is no longer held or on its
    way (posted, discarded, expired, withdrawn) is taken out (``RemovePreview``). One still
    being sent is taken out when its ``PreviewSent`` arrives (``preview_sent``)."""
    for item in ref.images:
        if item.preview is not PreviewState.SHOWN or item.state in _PREVIEW_USEFUL:
            continue
        posted = item.state in (ImageState.POSTED, ImageState.REMOVING, ImageState.REMOVED)
        ref = ref.with_image(dataclasses.replace(item, preview=PreviewState.REMOVING))
        eff.actions.append(RemovePreview(
            user_id=ref.referrer, referral_id=ref.referral_id, image_id=item.image_id,
            preview_ref=item.preview_ref or "", media_uri=item.preview_media_uri or "",
            reason="Posted to the specialists" if posted else "Held photo destroyed",
        ))
        eff.audit.append(_audit(BOT_ACTOR, "image.preview_removal_requested", at, ref, image_id=item.image_id,
                                reason="posted" if posted else "destroyed"))
    return ref


def preview_sent(ref: Referral, *, image_id: str, preview_ref: str, media_uri: str, at: datetime) -> tuple[Referral, Effects]:
    """Feedback: the preview is in the GP's direct chat (audited: a copy of the image,
    blurred, went to the referrer). If its image moved on meanwhile, it is removed at once."""
    _require(ref, Input.PREVIEW)
    eff = Effects()
    item = ref.image(image_id)
    if item is None or item.preview is not PreviewState.REQUESTED:
        return ref, eff  # duplicate feedback
    item = dataclasses.replace(item, preview=PreviewState.SHOWN, preview_ref=preview_ref,
                               preview_media_uri=media_uri or None)
    ref = ref.with_image(item)
    # who could see it (the GP alone, in their direct chat), and whether it was the picture
    eff.audit.append(_audit(BOT_ACTOR, "image.preview_sent", at, ref, image_id=image_id, members=[ref.referrer],
                            kind="image" if media_uri else "words"))
    return _settle_previews(ref, eff, at), eff


def preview_failed(ref: Referral, *, image_id: str, reason: str, at: datetime) -> tuple[Referral, Effects]:
    """Feedback: the preview could not be sent (the transport gave up). Whatever it
    uploaded is deleted; the GP is told the photo is still held and what to do."""
    _require(ref, Input.PREVIEW)
    eff = Effects()
    item = ref.image(image_id)
    if item is None or item.preview is not PreviewState.REQUESTED:
        return ref, eff
    ref = ref.with_image(dataclasses.replace(item, preview=PreviewState.REMOVING))
    eff.actions.append(RemovePreview(user_id=ref.referrer, referral_id=ref.referral_id, image_id=image_id,
                                     reason="Preview not sent"))
    eff.audit.append(_audit(BOT_ACTOR, "image.preview_failed", at, ref, image_id=image_id))
    if item.state is ImageState.HELD and ref.is_open:
        rid = ref.referral_id
        found = found_words(item.faces, item.text_regions) or "what I found"
        eff.actions.append(Notify(
            user_id=ref.referrer,
            text=(f"I could not show you the preview of {item.filename}: {reason} It is still held (not sent): "
                  f"!blur {rid} posts it with {found} blurred, !discard {rid} destroys it."),
            mentions=(ref.referrer,),
            referral_id=rid,
        ))
    return ref, eff


def preview_removed(ref: Referral, *, image_id: str, media_deleted: bool, at: datetime) -> tuple[Referral, Effects]:
    """Feedback: the preview left the GP's chat (and the server, where ``media_deleted``)."""
    _require(ref, Input.PREVIEW)
    eff = Effects()
    item = ref.image(image_id)
    if item is None or item.preview is not PreviewState.REMOVING:
        return ref, eff
    ref = ref.with_image(dataclasses.replace(item, preview=PreviewState.REMOVED))
    eff.audit.append(_audit(BOT_ACTOR, "image.preview_removed", at, ref, image_id=image_id,
                            media_deleted=media_deleted))
    return ref, eff


def root_posted(
    ref: Referral, *, room_event_id: str, consent: ConsentRecord, at: datetime
) -> tuple[Referral, Effects]:
    """Feedback: the thread root exists. Waiting images are posted (if the referral is
    still open and the consent still covers them)."""
    _require(ref, Input.ROOT_POSTED)
    eff = Effects()
    if ref.thread_root_event_id is not None:
        return ref, eff  # duplicate feedback
    ref = dataclasses.replace(ref, thread_root_event_id=room_event_id, root_requested=True)
    eff.audit.append(_audit(BOT_ACTOR, "thread.posted", at, ref))
    for item in [i for i in ref.images if i.state is ImageState.WAITING]:
        if ref.is_open:
            ref = _schedule_post(ref, item, consent, at, eff)
        else:
            ref = ref.with_image(dataclasses.replace(item, state=ImageState.DISCARDED))
    ref = _settle_previews(ref, eff, at)
    return ref, eff


def _removal_action(ref: Referral, items: list[ImageItem], reason: CloseReason) -> RemoveImages:
    words = {
        CloseReason.OPINION: "after the opinion",
        CloseReason.CANCELLED: "because the referral was cancelled",
        CloseReason.WITHDRAWN: "because consent was withdrawn",
        CloseReason.EXPIRED: "because the referral expired without an opinion",
    }[reason]
    n = len(items)
    return RemoveImages(
        referral_id=ref.referral_id,
        specialty=ref.specialty,
        thread_root_event_id=ref.thread_root_event_id,
        images=tuple(
            PostedImageRef(image_id=i.image_id, room_event_id=i.room_event_id or "", media_uri=i.media_uri or "")
            for i in items
        ),
        placeholder=f"{n} image{'s' if n != 1 else ''} of {ref.referral_id} removed {words}.",
        reason=f"Removed {words}",
    )


#: the audit keeps flat lists of at most this many values; longer member lists are split
_MEMBERS_PER_ENTRY = 50


def _members_audit(ref: Referral, image_id: str, members: tuple[str, ...], at: datetime) -> list[AuditEntry]:
    """Who could see the image when it was posted (user ids only), for information
    governance (``referral-bot audit show``)."""
    ids = sorted(set(members))
    if not ids:
        return []
    return [
        _audit(BOT_ACTOR, "image.room_members", at, ref, image_id=image_id, count=len(ids),
               members=ids[i:i + _MEMBERS_PER_ENTRY])
        for i in range(0, len(ids), _MEMBERS_PER_ENTRY)
    ]


def image_posted(
    ref: Referral, *, image_id: str, room_event_id: str, media_uri: str, at: datetime, members: tuple[str, ...] = (),
    policy: Policy | None = None,
) -> tuple[Referral, Effects]:
    """Feedback: an image is in the thread (``members``: who was joined to the room at
    that moment). If the referral is already closing, it is removed at once. The first
    photo of an open referral starts the escalation clock and tells the GP to delete the
    originals from the phone (``_safety_net_on_post``; needs *policy*)."""
    _require(ref, Input.IMAGE_POSTED)
    item = ref.image(image_id)
    if item is None:
        raise IllegalTransition(f"{ref.referral_id} has no image {image_id}.", state=ref.state, input=Input.IMAGE_POSTED)
    eff = Effects()
    if item.state is ImageState.DISCARDED and item.room_event_id is None:
        # reported failed (or dropped) but it reached the room after all: take it down now
        item = dataclasses.replace(item, state=ImageState.REMOVING, room_event_id=room_event_id, media_uri=media_uri)
        ref = ref.with_image(item)
        eff.actions.append(_removal_action(ref, [item], ref.close_reason or CloseReason.CANCELLED))
        eff.audit.extend(_members_audit(ref, image_id, members, at))
        eff.audit.append(_audit(BOT_ACTOR, "image.removal_requested", at, ref, count=1, reason="late_post"))
        if ref.state is S.CLOSED:
            ref = dataclasses.replace(ref, state=S.IMAGES_EXPIRED, closed_at=None)
        return _settle_previews(ref, eff, at), eff
    if item.state is not ImageState.POSTING:
        return ref, eff  # duplicate or out-of-order feedback
    item = dataclasses.replace(item, state=ImageState.POSTED, room_event_id=room_event_id, media_uri=media_uri)
    ref = ref.with_image(item)
    eff.audit.append(_audit(BOT_ACTOR, "image.posted", at, ref, image_id=image_id))
    eff.audit.extend(_members_audit(ref, image_id, members, at))
    if ref.state in (S.IMAGES_EXPIRED, S.CLOSED):
        reason = ref.close_reason or CloseReason.CANCELLED
        item = dataclasses.replace(item, state=ImageState.REMOVING)
        ref = dataclasses.replace(ref.with_image(item), state=S.IMAGES_EXPIRED, closed_at=None)
        eff.actions.append(_removal_action(ref, [item], reason))
        eff.audit.append(_audit(BOT_ACTOR, "image.removal_requested", at, ref, count=1, reason=reason.value))
    elif ref.state in (S.OPENED, S.IMAGES_RECEIVED):
        ref = dataclasses.replace(ref, state=S.POSTED)
    ref = _settle_previews(ref, eff, at)  # the GP's preview has done its job
    if ref.is_open and policy is not None:
        ref = _safety_net_on_post(ref, at=at, policy=policy, eff=eff)
    return ref, eff


def _safety_net_on_post(ref: Referral, *, at: datetime, policy: Policy, eff: Effects) -> Referral:
    """A photo of an open referral reached the thread: the referral can now be answered,
    so the escalation clock starts (once); and the GP is told, once per referral, to
    delete the originals from the phone's gallery and any cloud backup (MDU 2014, "Doctors
    sharing images of patients' conditions": clinical images should not stay on a personal
    device once they are where they belong)."""
    if ref.escalate_at is None and ref.escalated_at is None:
        due = clock.escalation_time(at, clock.urgency_of(ref), policy)
        if due is not None:
            ref = dataclasses.replace(ref, escalate_at=due)
    if not ref.originals_reminder_sent:
        ref = dataclasses.replace(ref, originals_reminder_sent=True)
        eff.actions.append(
            Notify(
                user_id=ref.referrer,
                text=(
                    f"{ref.referral_id}: the {ref.specialty} specialists have your photo. Now delete the original (and "
                    f"any other photo of this patient) from your phone or tablet: the gallery, its \"recently "
                    f"deleted\" album, and any cloud backup "
                    f"(iCloud, Google Photos, OneDrive). MDU advice is not to keep patients' images on a personal "
                    f"device; the clean copy stays with the referral."
                ),
                referral_id=ref.referral_id,
            )
        )
        eff.audit.append(_audit(BOT_ACTOR, "referral.originals_reminder", at, ref))
    return ref


def discussed(ref: Referral, *, at: datetime, actor: str) -> tuple[Referral, Effects]:
    """Someone wrote in the thread: ``posted`` -> ``discussed``. Every message's author is
    audited (who discussed the referral: information governance), never its text."""
    _require(ref, Input.DISCUSS)
    eff = Effects(audit=[_audit(actor, "thread.discussed", at, ref)])
    if ref.state is S.POSTED:
        return dataclasses.replace(ref, state=S.DISCUSSED), eff
    return ref, eff


def give_opinion(
    ref: Referral, *, by: str, text: str, at: datetime, policy: Policy, by_name: str = ""
) -> tuple[Referral, Effects]:
    """The opinion (roster membership is checked by the caller): relayed to the GP,
    images removed after the grace period. Held images are discarded."""
    _require(ref, Input.OPINION)
    remove_at = at + policy.grace_period
    eff = Effects()
    for item in ref.images:
        if item.state in (ImageState.HELD, ImageState.WAITING):
            ref = ref.with_image(dataclasses.replace(item, state=ImageState.DISCARDED, shredded=True))
            if not item.shredded:
                eff.shred.append(item.image_id)
    ref = dataclasses.replace(
        ref, state=S.OPINION_GIVEN, opinion=text, opinion_by=by, opinion_at=at, remove_images_at=remove_at
    )
    who = by_name or by
    zone = policy.time_zone
    eff.actions.append(
        Notify(
            user_id=ref.referrer,
            text=(
                f"Opinion on {ref.referral_id} ({ref.specialty}: {gist(ref.question)}) from {who}:\n{text}\n"
                f"The images will be removed from the specialty room at {fmt_time(remove_at, zone)}. "
                + (f"I am filing the record (images, question, opinion, consent) now."
                   if policy.filing_enabled else f"Use !export {ref.referral_id} to file the record.")
            ),
            mentions=(ref.referrer,),
            referral_id=ref.referral_id,
        )
    )
    eff.actions.append(
        Reply(
            to=_thread(ref),
            text=f"Opinion recorded and sent to the GP. The images will be removed at {fmt_time(remove_at, zone)}.",
        )
    )
    eff.audit.append(_audit(by, "opinion.given", at, ref))
    ref = _settle_previews(ref, eff, at)
    ref = _file(ref, at=at, policy=policy, reason="closed", eff=eff)
    return ref, eff


# ------------------------------------------------------------------ closing
def _start_removal(ref: Referral, *, at: datetime, reason: CloseReason, actor: str) -> tuple[Referral, Effects]:
    eff = Effects()
    to_remove: list[ImageItem] = []
    for item in ref.images:
        if item.state in (ImageState.HELD, ImageState.WAITING):
            ref = ref.with_image(dataclasses.replace(item, state=ImageState.DISCARDED, shredded=True))
            if not item.shredded:
                eff.shred.append(item.image_id)
            eff.audit.append(_audit(actor, "image.discarded", at, ref, image_id=item.image_id, rule=reason.value))
        elif item.state is ImageState.POSTED:
            new = dataclasses.replace(item, state=ImageState.REMOVING)
            ref = ref.with_image(new)
            to_remove.append(new)
    if to_remove:
        eff.actions.append(_removal_action(ref, to_remove, reason))
        eff.audit.append(_audit(actor, "image.removal_requested", at, ref, count=len(to_remove), reason=reason.value))
    if ref.close_reason is None or reason is CloseReason.WITHDRAWN:
        ref = dataclasses.replace(ref, close_reason=reason)
    if any(i.state.in_chat for i in ref.images):
        ref = dataclasses.replace(ref, state=S.IMAGES_EXPIRED)
    else:
        ref = dataclasses.replace(ref, state=S.CLOSED, closed_at=at)
        eff.audit.append(_audit(actor, "referral.closed", at, ref, reason=reason.value))
    ref = _settle_previews(ref, eff, at)
    return ref, eff


def cancel(ref: Referral, *, at: datetime, actor: str, policy: Policy | None = None) -> tuple[Referral, Effects]:
    """The GP cancels: images leave the chat now (also during the grace period). The
    record is filed (what was shared, and that it was cancelled), unless it already was
    filed with its opinion."""
    _require(ref, Input.CANCEL)
    was_open = ref.is_open
    ref2, eff = _start_removal(ref, at=at, reason=CloseReason.CANCELLED, actor=actor)
    eff.audit.insert(0, _audit(actor, "referral.cancelled", at, ref2))
    if ref.thread_root_event_id is not None:
        eff.actions.append(Reply(to=_thread(ref2), text=f"{ref.referral_id} was cancelled by the GP."))
    if was_open:
        ref2 = _file(ref2, at=at, policy=policy, reason="closed", eff=eff)
    return ref2, eff


def withdraw(
    ref: Referral, *, at: datetime, actor: str, policy: Policy | None = None
) -> tuple[Referral, Effects]:
    """Consent withdrawn: immediate, in every state. Images leave the chat and every
    vault copy is shredded now (withdrawal overrides retention and filing). Copies the
    bot left in filing folders are deleted, and the record is filed again WITHOUT the
    images: what was asked, the opinion if any, the consent and its withdrawal (GMC,
    recordings para 15: what was done for the patient's care is part of their record;
    the images are not, once the patient has withdrawn: docs/filing.md)."""
    _require(ref, Input.WITHDRAW)
    eff = Effects()
    if ref.state in (S.IMAGES_EXPIRED, S.CLOSED):
        ref = dataclasses.replace(ref, close_reason=CloseReason.WITHDRAWN) if ref.state is S.IMAGES_EXPIRED else ref
    else:
        ref, eff = _start_removal(ref, at=at, reason=CloseReason.WITHDRAWN, actor=actor)
        if ref.thread_root_event_id is not None:
            removing = any(isinstance(a, RemoveImages) for a in eff.actions)
            outcome = "its images are being removed" if removing else "the referral is closed"
            eff.actions.append(Reply(to=_thread(ref), text=f"Consent for {ref.referral_id} was withdrawn; {outcome}."))
    for item in ref.images:
        if not item.shredded:
            eff.shred.append(item.image_id)
            ref = ref.with_image(dataclasses.replace(item, shredded=True))
    eff.audit.insert(0, _audit(actor, "referral.withdrawn", at, ref))
    if ref.filing_version > 0 or ref.exported_at is not None:
        eff.actions.append(
            PurgeFiledCopies(referral_id=ref.referral_id, before_version=ref.filing_version + 1, reason="withdrawn")
        )
    ref = _file(ref, at=at, policy=policy, reason="withdrawn", eff=eff)
    return ref, eff


def images_removed(ref: Referral, *, image_ids: tuple[str, ...], at: datetime, media_deleted: bool) -> tuple[Referral, Effects]:
    """Feedback: these images are gone from the chat. Closes the referral when none is left."""
    _require(ref, Input.IMAGES_REMOVED)
    eff = Effects()
    changed = 0
    for image_id in image_ids:
        item = ref.image(image_id)
        if item is not None and item.state is ImageState.REMOVING:
            ref = ref.with_image(dataclasses.replace(item, state=ImageState.REMOVED))
            changed += 1
    if changed:
        eff.audit.append(_audit(BOT_ACTOR, "image.removed", at, ref, count=changed, media_deleted=media_deleted))
    if ref.state is S.IMAGES_EXPIRED and not any(i.state.in_chat for i in ref.images):
        ref = dataclasses.replace(ref, state=S.CLOSED, closed_at=at)
        eff.audit.append(
            _audit(BOT_ACTOR, "referral.closed", at, ref, reason=(ref.close_reason or CloseReason.OPINION).value)
        )
    return ref, eff


def post_failed(
    ref: Referral, *, at: datetime, root: bool, image_id: str | None = None, action_key: str = ""
) -> tuple[Referral, Effects]:
    """Feedback: the transport gave up posting (``root=True``: the thread root, so every
    waiting image; else ``image_id``, or every image being posted when unknown). Those
    images are discarded (vault copy shredded); a later image asks for the root again."""
    _require(ref, Input.IMAGE_POSTED)
    eff = Effects()
    if root:
        victims = [i for i in ref.images if i.state is ImageState.WAITING]
        ref = dataclasses.replace(ref, root_requested=ref.thread_root_event_id is not None)
    else:
        victims = [
            i for i in ref.images if i.state is ImageState.POSTING and (image_id is None or i.image_id == image_id)
        ]
    for item in victims:
        ref = ref.with_image(dataclasses.replace(item, state=ImageState.DISCARDED, shredded=True))
        if not item.shredded:
            eff.shred.append(item.image_id)
        eff.audit.append(_audit(BOT_ACTOR, "image.discarded", at, ref, image_id=item.image_id, rule="post_failed"))
    if ref.state is S.IMAGES_RECEIVED and not any(
        i.state in (ImageState.WAITING, ImageState.POSTING, ImageState.POSTED) for i in ref.images
    ):
        ref = dataclasses.replace(ref, state=S.OPENED)
    if ref.state is S.IMAGES_EXPIRED and not any(i.state.in_chat for i in ref.images):
        ref = dataclasses.replace(ref, state=S.CLOSED, closed_at=at)
        eff.audit.append(_audit(BOT_ACTOR, "referral.closed", at, ref, reason=(ref.close_reason or CloseReason.CANCELLED).value))
    ref = _settle_previews(ref, eff, at)
    return ref, eff


def exported(ref: Referral, *, at: datetime) -> tuple[Referral, Effects]:
    """Feedback: the record was exported (``referral-bot export``, or an old ``!export``
    still in the outbox). Exporting destroys nothing: the vault copies go at the end of
    their retention once the referral is filed, or on withdrawal."""
    _require(ref, Input.EXPORTED)
    ref = dataclasses.replace(ref, exported_at=at)
    return ref, Effects(audit=[_audit(BOT_ACTOR, "referral.exported", at, ref)])


# ------------------------------------------------------------------ filing
#: a filing just requested gets this long before "still not filed" is worth a warning
_WARN_NOT_BEFORE = timedelta(hours=1)


def _retry_delay(policy: Policy, failures: int) -> timedelta:
    delay = policy.filing_retry_first * (2 ** max(0, failures - 1))
    return min(delay, policy.filing_retry_max)


def _first_retention_end(ref: Referral) -> datetime | None:
    return min((i.retention_until for i in ref.images if not i.shredded), default=None)


def _file(
    ref: Referral,
    *,
    at: datetime,
    policy: Policy | None,
    reason: str,
    eff: Effects,
    reply_to: Place | None = None,
    actor: str = BOT_ACTOR,
) -> Referral:
    """Ask for a new version of the record to be filed (no-op when filing is off)."""
    if policy is None or not policy.filing_enabled:
        return ref
    version = ref.filing_version + 1
    end = _first_retention_end(ref)
    ref = dataclasses.replace(
        ref,
        filing_version=version,
        filed_to=(),
        filing_failures=0,
        filing_retry_at=None,
        retention_warning_at=None if end is None else max(at + _WARN_NOT_BEFORE, end - policy.retention_warning),
    )
    eff.actions.append(FileRecord(referral_id=ref.referral_id, version=version, reason=reason, reply_to=reply_to))
    eff.audit.append(_audit(actor, "record.filing_requested", at, ref, reason=reason, attempt=1))
    return ref


def request_filing(
    ref: Referral, *, at: datetime, policy: Policy, reason: str, reply_to: Place | None = None, actor: str = BOT_ACTOR
) -> tuple[Referral, Effects]:
    """File the record now (``!export``, an addendum): a new version, through every sink.
    Destroys nothing. Raises ``IllegalTransition`` when filing is not configured."""
    _require(ref, Input.FILE)
    if not policy.filing_enabled:
        raise IllegalTransition(
            "Filing is not set up on this bot, so I cannot file the record; ask your administrator.",
            state=ref.state,
            input=Input.FILE,
        )
    eff = Effects()
    ref = _file(ref, at=at, policy=policy, reason=reason, eff=eff, reply_to=reply_to, actor=actor)
    return ref, eff


def _and(words: tuple[str, ...] | list[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def record_filed(
    ref: Referral,
    *,
    version: int,
    filed: tuple[str, ...],
    where: tuple[str, ...],
    failed: tuple[str, ...],
    failed_where: tuple[str, ...],
    reason: str,
    at: datetime,
    policy: Policy,
    reply_to: Place | None = None,
) -> tuple[Referral, Effects]:
    """Feedback from the sinks. All took it: the referral is filed (retention may now
    destroy the vault copies when it ends). Some failed: retry with a growing delay;
    the GP hears of the first failure and of the recovery, the operator sees every one
    (``referral-bot status``, the ``referral_bot_filing_failed`` metric, the audit)."""
    _require(ref, Input.FILED)
    eff = Effects()
    rid = ref.referral_id
    if filed:
        eff.audit.append(_audit(BOT_ACTOR, "record.filed", at, ref, sinks=list(filed), attempt=ref.filing_failures + 1))
    if version != ref.filing_version:  # a newer version was requested meanwhile: it decides
        return ref, eff
    filed_to = tuple(dict.fromkeys(ref.filed_to + tuple(filed)))
    to = reply_to
    if not failed:
        recovered = ref.filing_failures > 0
        ref = dataclasses.replace(
            ref, filed_to=filed_to, filed_version=version, filed_at=at, filing_failures=0,
            filing_retry_at=None, retention_warning_at=None,
        )
        text = f"{rid} filed to {_and(where)}." if where else f"{rid} filed."
        if to is not None:
            eff.actions.append(Reply(to=to, text=text))
        elif recovered:
            eff.actions.append(Notify(user_id=ref.referrer, text=f"{text} (It had failed before; it is done now.)"))
        return ref, eff
    failures = ref.filing_failures + 1
    retry_at = at + _retry_delay(policy, failures)
    ref = dataclasses.replace(ref, filed_to=filed_to, filing_failures=failures, filing_retry_at=retry_at)
    eff.audit.append(
        _audit(BOT_ACTOR, "record.filing_failed", at, ref, sinks=list(failed), attempt=failures, permanent=False)
    )
    done = f" It did reach {_and(where)}." if where else ""
    text = (
        f"I could not file {rid} to {_and(failed_where) or 'the record'}: {reason}{done} "
        f"I will try again at {fmt_time(retry_at, policy.time_zone)} and keep its images until it is filed; "
        f"your administrator has been alerted."
    )
    if to is not None:
        eff.actions.append(Reply(to=to, text=text))
    elif failures == 1:
        eff.actions.append(Notify(user_id=ref.referrer, text=text))
    return ref, eff


def copies_purged(ref: Referral, *, count: int, reason: str, at: datetime) -> tuple[Referral, Effects]:
    """Feedback: files the bot had left on disk for this referral were deleted."""
    _require(ref, Input.FILED)
    return ref, Effects(audit=[_audit(BOT_ACTOR, "record.copies_deleted", at, ref, count=count, reason=reason)])


def _filing_timers(ref: Referral, *, at: datetime, policy: Policy, eff: Effects) -> Referral:
    """Retry a failed filing; warn when retention is near and the referral is unfiled."""
    if not ref.awaiting_filing:
        return ref
    rid = ref.referral_id
    if ref.filing_retry_at is not None and at >= ref.filing_retry_at:
        ref = dataclasses.replace(ref, filing_retry_at=None)
        eff.actions.append(FileRecord(referral_id=rid, version=ref.filing_version, reason="retry", skip=ref.filed_to))
        eff.audit.append(_audit(BOT_ACTOR, "record.filing_requested", at, ref, reason="retry", attempt=ref.filing_failures + 1))
    if ref.retention_warning_at is not None and at >= ref.retention_warning_at:
        end = _first_retention_end(ref)
        if end is None:
            ref = dataclasses.replace(ref, retention_warning_at=None)
        else:
            ended = at >= end
            when = "has ended" if ended else f"ends at {fmt_time(end, policy.time_zone)}"
            eff.actions.append(
                Notify(
                    user_id=ref.referrer,
                    text=(
                        f"{rid} ({ref.specialty}) is not filed yet and the retention of its images {when}. "
                        f"I keep them until it is filed; your administrator has been alerted. "
                        f"You can try again with !export {rid}."
                    ),
                )
            )
            eff.audit.append(_audit(BOT_ACTOR, "record.retention_warning", at, ref, outcome="ended" if ended else "near"))
            ref = dataclasses.replace(ref, retention_warning_at=None if ended else end)
    return ref


# ------------------------------------------------------------------ timers
def _urgent_word(ref: Referral) -> str:
    return " (urgent)" if clock.is_urgent(ref) else ""


def _escalate(ref: Referral, *, at: datetime, policy: Policy, eff: Effects) -> Referral:
    """No opinion after the configured working time since the first photo was posted:
    once per referral, the specialty's lead (the whole roster when it has none) is
    mentioned in the thread, and the GP is told that no opinion has come and what to do
    if it cannot wait."""
    if (ref.state not in ALLOWED[Input.ESCALATE] or ref.escalate_at is None or ref.escalated_at is not None
            or at < ref.escalate_at):
        return ref
    ref = dataclasses.replace(ref, escalated_at=at)
    spec = policy.specialties.get(ref.specialty)
    lead = spec.lead if spec is not None and spec.lead else None
    to = (lead,) if lead else _roster(ref, policy)
    rid, zone = ref.referral_id, policy.time_zone
    waited = clock.fmt_working(clock.escalate_after(clock.urgency_of(ref), policy))
    discussed_note = (" It has been discussed here, but no opinion has been given."
                      if ref.thread_participants else "")
    if ref.thread_root_event_id is not None:
        eff.actions.append(
            Reply(
                to=_thread(ref),
                text=(
                    f"{rid}{_urgent_word(ref)} has had no opinion for {waited} since its photos were posted."
                    f"{discussed_note} Please make sure someone on the rota answers it (!opinion <text>) or asks "
                    f"the GP for what is missing, before {fmt_time(ref.expires_at, zone)} when it expires."
                ),
                mentions=to,
            )
        )
    who = f"the {ref.specialty} lead" if lead else f"the {ref.specialty} team"
    eff.actions.append(
        Notify(
            user_id=ref.referrer,
            text=(
                f"No opinion yet on {rid}{_urgent_word(ref)} ({ref.specialty}: {gist(ref.question)}) after {waited}. "
                f"I have asked {who} to make sure someone answers. If this is urgent, phone the on-call "
                f"{ref.specialty} team rather than wait. {rid} stays open until {fmt_time(ref.expires_at, zone)}."
            ),
            mentions=(ref.referrer,),
            referral_id=rid,
        )
    )
    eff.audit.append(_audit(BOT_ACTOR, "referral.escalated", at, ref, role="lead" if lead else "roster",
                            urgency=clock.urgency_of(ref)))
    return ref


def _warn_expiry(ref: Referral, *, at: datetime, policy: Policy, eff: Effects) -> Referral:
    """Once, a configured time before a referral would expire unanswered: the GP learns
    the local time of expiry and what happens then; the roster is reminded in the thread."""
    if ref.state not in ALLOWED[Input.REMIND] or ref.reminder_sent or at < ref.reminder_at:
        return ref
    ref = dataclasses.replace(ref, reminder_sent=True)
    eff.audit.append(_audit(BOT_ACTOR, "referral.reminder", at, ref, urgency=clock.urgency_of(ref)))
    zone = policy.time_zone
    rid, when = ref.referral_id, fmt_time(ref.expires_at, zone)
    if any(i.state.in_chat for i in ref.images):
        then = "its photos are removed from the specialists' room"
    else:
        then = "it closes (no photo of it has been shared)"
    if policy.filing_enabled:
        then += " and its record (question, photos, consent) is filed"
    eff.actions.append(
        Notify(
            user_id=ref.referrer,
            text=(
                f"{rid}{_urgent_word(ref)} ({ref.specialty}: {gist(ref.question)}) has no opinion yet. "
                f"It expires at {when}: then {then}. If you still need advice after that, open a new referral "
                f"with !refer; if it is urgent, phone the on-call {ref.specialty} team."
            ),
            mentions=(ref.referrer,),
            referral_id=rid,
        )
    )
    if ref.thread_root_event_id is not None:
        eff.actions.append(
            Reply(
                to=_thread(ref),
                text=f"Reminder: {rid}{_urgent_word(ref)} needs an opinion (!opinion <text>) before {when}.",
                mentions=_roster(ref, policy),
            )
        )
    return ref


def pathway_reminder(ref: Referral, *, at: datetime) -> tuple[Referral, Effects]:
    """Right after ``!refer``: a question that reads like suspected cancer
    (handlers/cancerwords.py), or ``urgency=2ww``, gets one line reminding the GP that
    suspected cancer goes through the urgent suspected-cancer referral pathway (NICE NG12),
    which advice and guidance is not. The referral stays open; the audit keeps only
    what triggered the reminder, never the words."""
    by_urgency = clock.urgency_of(ref) == clock.TWO_WEEK_WAIT
    by_wording = suspected_cancer(ref.question)
    eff = Effects()
    if not (by_urgency or by_wording):
        return ref, eff
    eff.actions.append(
        Reply(
            to=DirectChat(ref.referrer),
            text=(
                f"Reminder: suspected cancer goes through the urgent suspected-cancer referral pathway "
                f"(NICE NG12, the 2-week wait), not advice and guidance; if you suspect cancer, refer on that "
                f"pathway as well. {ref.referral_id} stays open for advice."
            ),
            referral_id=ref.referral_id,
        )
    )
    trigger = "urgency+wording" if by_urgency and by_wording else ("urgency" if by_urgency else "wording")
    eff.audit.append(_audit(ref.referrer, "referral.cancer_pathway_reminder", at, ref, reason=trigger))
    return ref, eff


def _held_expiry(ref: Referral, *, at: datetime, policy: Policy, eff: Effects) -> Referral:
    """Held photos the GP did not decide on in ``policy.held_photo_ttl``: destroyed (vault
    copy and preview) and the GP told. Nothing was sent; the referral stays open."""
    due = [i for i in ref.images if i.state is ImageState.HELD and i.held_until is not None and at >= i.held_until]
    if not due:
        return ref
    for item in due:
        ref = ref.with_image(dataclasses.replace(item, state=ImageState.DISCARDED, shredded=True))
        if not item.shredded:
            eff.shred.append(item.image_id)
        eff.audit.append(_audit(BOT_ACTOR, "image.discarded", at, ref, image_id=item.image_id, rule="held_expired"))
    rid = ref.referral_id
    what = f"the held photo {due[0].filename}" if len(due) == 1 else f"{len(due)} held photos"
    it = "it" if len(due) == 1 else "them"
    previewed = any(i.preview in (PreviewState.REQUESTED, PreviewState.SHOWN) for i in due)
    preview = f" and {'its' if len(due) == 1 else 'their'} preview" if previewed else ""
    eff.actions.append(Notify(
        user_id=ref.referrer,
        text=(f"I destroyed {what} of {rid} ({ref.specialty}: {gist(ref.question)}){preview}: you did not send {it} with !blur {rid} or drop {it} with !discard {rid} by "
              f"{fmt_time(due[0].held_until, policy.time_zone)}, so nothing was sent. {rid} is still open: "
              f"send a new photo if the specialists need one."),
        mentions=(ref.referrer,),
        referral_id=rid,
    ))
    return _settle_previews(ref, eff, at)


def tick(ref: Referral, *, at: datetime, policy: Policy) -> tuple[Referral, Effects]:
    """Everything due at *at*: escalation, expiry warning, max-lifetime expiry,
    grace-period removal, held photos nobody decided on, filing retries, vault retention.
    Idempotent: a second tick at the same time does nothing (each one-off is flagged on
    the referral it saves)."""
    eff = Effects()
    if ref.is_open and at >= ref.expires_at:
        ref, e = _start_removal(ref, at=at, reason=CloseReason.EXPIRED, actor=BOT_ACTOR)
        e.audit.insert(0, _audit(BOT_ACTOR, "referral.expired", at, ref))
        removing = any(isinstance(a, RemoveImages) for a in e.actions)
        outcome = "its images are removed" if removing else "no image of it was shared"
        e.actions.append(
            Notify(
                user_id=ref.referrer,
                text=f"{ref.referral_id} ({ref.specialty}: {gist(ref.question)}) got no opinion in time and has expired; {outcome}. Open a new referral with !refer if you still need advice.",
                mentions=(ref.referrer,),
                referral_id=ref.referral_id,
            )
        )
        if ref.thread_root_event_id is not None:
            e.actions.append(Reply(to=_thread(ref), text=f"{ref.referral_id} expired without an opinion; {outcome}."))
        ref = _file(ref, at=at, policy=policy, reason="closed", eff=e)
        eff.extend(e)
    else:
        ref = _escalate(ref, at=at, policy=policy, eff=eff)
        ref = _warn_expiry(ref, at=at, policy=policy, eff=eff)
    if ref.state is S.OPINION_GIVEN and ref.remove_images_at is not None and at >= ref.remove_images_at:
        ref, e = _start_removal(ref, at=at, reason=CloseReason.OPINION, actor=BOT_ACTOR)
        eff.extend(e)
    if ref.is_open:
        ref = _held_expiry(ref, at=at, policy=policy, eff=eff)
    ref = _filing_timers(ref, at=at, policy=policy, eff=eff)
    if ref.awaiting_filing:
        return ref, eff  # nothing is destroyed unfiled (only withdrawal does that)
    ended = 0
    for item in ref.images:
        if not item.shredded and at >= item.retention_until:
            ref = ref.with_image(dataclasses.replace(item, shredded=True))
            eff.shred.append(item.image_id)
            eff.audit.append(_audit(BOT_ACTOR, "vault.retention_ended", at, ref, image_id=item.image_id))
            ended += 1
    if ended and all(i.shredded for i in ref.images) and (ref.filing_version > 0 or ref.exported_at is not None):
        eff.actions.append(
            PurgeFiledCopies(referral_id=ref.referral_id, before_version=ref.filing_version + 1, reason="retention")
        )
    return ref, eff


# ------------------------------------------------------------------ the conversation
def relay_to_gp(
    ref: Referral, *, by: str, by_name: str, text: str, at: datetime, event_id: str
) -> tuple[Referral, Effects]:
    """A roster specialist wrote in the thread (the caller checked the roster): the
    message goes to the GP's direct chat, tagged with the referral and who wrote it,
    and alerts the GP. A reply to it comes back into the thread."""
    _require(ref, Input.RELAY_TO_GP)
    eff = Effects()
    if ref.state is S.POSTED:
        ref = dataclasses.replace(ref, state=S.DISCUSSED)
        eff.audit.append(_audit(by, "thread.discussed", at, ref))
    if by not in ref.thread_participants:
        ref = dataclasses.replace(ref, thread_participants=ref.thread_participants + (by,))
    eff.actions.append(
        Notify(
            user_id=ref.referrer,
            text=(
                f"{by_name or by} ({ref.specialty}) on {ref.referral_id} ({gist(ref.question)}):\n{text}\n"
                f"Reply to this message to answer, or type !reply {ref.referral_id} <answer>."
            ),
            mentions=(ref.referrer,),
            referral_id=ref.referral_id,
        )
    )
    eff.actions.append(Acknowledge(to=_thread(ref), event_id=event_id, reaction="✓ sent to the GP"))
    eff.audit.append(_audit(by, "thread.relayed_to_gp", at, ref))
    return ref, eff


def relay_to_thread(
    ref: Referral, *, text: str, at: datetime, event_id: str, reply_to: DirectChat, policy: Policy | None = None
) -> tuple[Referral, Effects]:
    """The referring GP answered (the caller checked it is the referrer): the answer is
    posted in the thread as "the referring GP (practice)", alerting the specialists who
    wrote there (the roster when nobody has yet)."""
    _require(ref, Input.RELAY_TO_THREAD)
    if ref.thread_root_event_id is None:
        raise IllegalTransition(
            f"The thread of {ref.referral_id} is not open yet, so I cannot pass your message on; try again in a minute.",
            state=ref.state,
            input=Input.RELAY_TO_THREAD,
        )
    eff = Effects()
    mentions = ref.thread_participants or _roster(ref, policy)
    eff.actions.append(
        Reply(to=_thread(ref), text=f"The referring GP ({ref.practice}) on {ref.referral_id}:\n{text}", mentions=mentions)
    )
    eff.actions.append(Acknowledge(to=reply_to, event_id=event_id, reaction=f"✓ sent to {ref.specialty}"))
    eff.audit.append(_audit(ref.referrer, "thread.relayed_to_thread", at, ref))
    return ref, eff


def request_more_photos(
    ref: Referral, *, by: str, by_name: str, text: str, at: datetime, policy: Policy
) -> tuple[Referral, Effects]:
    """A roster specialist asks for another photo: the GP is alerted with what is needed,
    the referral waits for photos again (so the next one goes straight to it when it is
    the only one waiting), and its deadline moves by ``policy.more_photos_extension``."""
    _require(ref, Input.MORE_PHOTOS)
    expires_at = ref.expires_at + policy.more_photos_extension
    reminder_at = clock.warning_time(expires_at, clock.urgency_of(ref), policy, not_before=at)
    ref = dataclasses.replace(
        ref,
        more_photos_requested=True,
        expires_at=expires_at,
        reminder_at=reminder_at,
        reminder_sent=ref.reminder_sent and reminder_at <= at,
    )
    if by not in ref.thread_participants:
        ref = dataclasses.replace(ref, thread_participants=ref.thread_participants + (by,))
    zone = policy.time_zone
    eff = Effects()
    eff.actions.append(
        Notify(
            user_id=ref.referrer,
            text=(
                f"{by_name or by} ({ref.specialty}) asks for another photo for {ref.referral_id} "
                f"({gist(ref.question)}):\n{text}\n"
                f"Send it as a reply to this message (or with {ref.referral_id} in its caption). "
                f"{ref.referral_id} now stays open until {fmt_time(expires_at, zone)}."
            ),
            mentions=(ref.referrer,),
            referral_id=ref.referral_id,
        )
    )
    eff.actions.append(
        Reply(
            to=_thread(ref),
            text=f"Asked the GP for another photo; it will appear in this thread. {ref.referral_id} now expires at {fmt_time(expires_at, zone)}.",
        )
    )
    hours = int(policy.more_photos_extension.total_seconds() // 3600)
    eff.audit.append(_audit(by, "photos.requested", at, ref, extended_hours=hours))
    return ref, eff


def add_addendum(
    ref: Referral, *, by: str, by_name: str, text: str, at: datetime, policy: Policy | None = None
) -> tuple[Referral, Effects]:
    """A roster specialist adds to the opinion: kept with it, relayed to the GP like it.
    A record already filed (or on its way) is filed again with the addendum; one not yet
    filed takes it when it is filed on closing."""
    _require(ref, Input.ADDENDUM)
    if ref.opinion is None:  # closed without an opinion (cancelled, expired, withdrawn)
        raise IllegalTransition(_why_not(ref, Input.ADDENDUM), state=ref.state, input=Input.ADDENDUM)
    ref = dataclasses.replace(ref, addenda=ref.addenda + (Addendum(by=by, at=at, text=text),))
    eff = Effects()
    eff.actions.append(
        Notify(
            user_id=ref.referrer,
            text=f"Addendum to the opinion on {ref.referral_id} ({ref.specialty}: {gist(ref.question)}) from {by_name or by}:\n{text}",
            mentions=(ref.referrer,),
            referral_id=ref.referral_id,
        )
    )
    eff.actions.append(Reply(to=_thread(ref), text="Addendum recorded and sent to the GP."))
    eff.audit.append(_audit(by, "opinion.addendum", at, ref, count=len(ref.addenda)))
    if ref.filing_version > 0:
        ref = _file(ref, at=at, policy=policy, reason="addendum", eff=eff, actor=by)
    return ref, eff
