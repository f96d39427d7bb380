"""Domain model of the referral bot (pure data, no I/O).

Everything here is a frozen dataclass or an Enum. State changes are made with
``dataclasses.replace`` by the pure rule modules (``handlers/consent.py``,
``handlers/lifecycle.py``); the store persists whole objects.

Persistence contract (for storage/): ``ConsentRecord`` and ``Referral`` have
``to_dict()`` / ``from_dict()`` producing/consuming plain JSON (see
``handlers/serial.py``). A store may keep the JSON as a blob and index the few
columns it queries by: ``consent_id``; ``referral_id``, ``consent_id``,
``referrer``, ``thread_root_event_id``, ``next_due_at()`` for referrals.

Privacy contract: ``ConsentRecord.patient_ref`` is already a keyed hash
(``handlers.patientref.PatientRefHasher``); ``best_interests_statement`` and
``Referral.question`` / ``Referral.opinion`` are clinical free text: they may be
stored (encrypted at rest where the store can) but never logged or audited.

All datetimes are timezone-aware UTC.
"""
from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from handlers.serial import from_jsonable, to_jsonable

__all__ = [
    "Actor",
    "Purpose",
    "ConsentBasis",
    "Sex",
    "ConsentRecord",
    "ReferralState",
    "CloseReason",
    "ImageState",
    "ImageItem",
    "PreviewState",
    "Referral",
    "Addendum",
    "UnassignedPhoto",
    "AuditEntry",
    "BOT_ACTOR",
]

#: user id used in audit entries for things the bot does on its own (timers).
BOT_ACTOR = "@referral-bot"


@dataclass(frozen=True)
class Actor:
    """A person talking to the bot, already resolved by the transport from the
    configured clinician directory.

    ``user_id``: the transport's stable user id (Matrix ``@gp:example.org``).
    ``practice``: the practice / organisation the clinician belongs to (None if
    the directory lists none; such a user cannot record consent or refer).
    ``display_name``: for replies only, never required.
    ``may_refer``: the directory lists them as a referrer (``role = "referrer"`` or
    ``"both"``): only then may they record consent or open a referral. A specialist
    who is not also a referrer may not, even with a practice (security review, issue 9).
    Transports set it False for anyone outside the directory.
    """

    user_id: str
    practice: str | None = None
    display_name: str = ""
    may_refer: bool = True


class Purpose(str, enum.Enum):
    """What the image may be used for. A referral for an opinion is ``CARE``."""

    CARE = "care"  # the patient's own care, including a second opinion
    TEACHING = "teaching"
    AUDIT = "audit"  # clinical audit / quality improvement
    RESEARCH = "research"
    PUBLICATION = "publication"


class ConsentBasis(str, enum.Enum):
    """Who gave the consent (DESIGN.md, "who consented")."""

    PATIENT = "patient"  # the patient themself (an adult, or a Gillick-competent child)
    PARENT = "parent"  # parent/guardian of a child who is not Gillick competent
    ATTORNEY = "attorney"  # LPA (health & welfare) attorney for an adult without capacity
    DEPUTY = "deputy"  # court-appointed deputy for an adult without capacity
    BEST_INTERESTS = "best-interests"  # best-interests decision, nobody holds authority
    DECEASED_WISHES = "deceased-wishes"  # known wishes of a deceased patient
    EXECUTOR = "executor"  # executor of a deceased patient
    FAMILY = "family"  # family of a deceased patient

    @property
    def on_behalf(self) -> bool:
        """True when someone other than the patient decided.

        ``DECEASED_WISHES`` is the patient's own (earlier) decision, so it is not
        "on behalf"; everything except ``PATIENT`` and ``DECEASED_WISHES`` is.
        """
        return self not in (ConsentBasis.PATIENT, ConsentBasis.DECEASED_WISHES)

    @property
    def deceased(self) -> bool:
        return self in (ConsentBasis.DECEASED_WISHES, ConsentBasis.EXECUTOR, ConsentBasis.FAMILY)


class Sex(str, enum.Enum):
    """The patient's sex as the GP recorded it (optional; shown to the specialist as
    clinical context, issue 12 part 1)."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"  # intersex / indeterminate / not male or female


@dataclass(frozen=True)
class ConsentRecord:
    """A recorded consent (id ``C-…``).

    ``patient_ref``: keyed hash of the patient reference, never the reference itself.
    ``practice``: the practice of the clinician who recorded it; only clinicians of
    the same practice may refer under it.
    ``purposes``: each purpose was named explicitly.
    ``identifiable``: whether identifiable images (e.g. a face) are covered.
    ``recorded_in_notes``: the clinician confirmed it is recorded in the patient's notes.
    ``retention``: how long the bot keeps the vault copy of each image taken under
    this consent, counted from when the image was received.
    ``age_out_at``: for a parent's consent, when the child reaches the configured
    age; from then on the consent no longer covers NEW sharing (the date of birth
    itself is not stored).
    ``gillick_competent``: as stated by the clinician (None = not stated).
    ``best_interests_statement``: free text (the field keeps its first name so stored
    records load): the statement of a decision made on the patient's behalf, or for a
    deceased patient their known wishes and/or the views of those close to them.
    Required in the cases handlers/consent.py names.
    ``expires_at``: optional end of the consent (None = until withdrawn).

    Added by issue 12 (all default to "unknown", so records stored before load):

    ``patient_ref_scheme`` / ``patient_ref_ending``: "NHS no." and the last 3
    characters of the reference, so a read-back can say "NHS no. ending 919" and the
    GP can catch a typo; never the reference itself.
    ``birth_month``: "YYYY-MM" from the date of birth, for an age band. Kept instead
    of the date: the day adds most of a date of birth's identifying power and none of
    the clinical meaning (a month is enough for an infant's age in months). The exact
    date is used while recording (who may consent, when a parent's consent ends) and
    dropped. ``adult_asserted``: the GP said adult=yes instead of giving a date of birth.
    ``sex``: as recorded, optional.
    ``specialties``: specialty keys the consent names; None = any specialty (said
    with specialties=any, or a record from before issue 12).
    ``refer_until``: the episode: new referrals may be opened under this consent until
    then (recorded_at + valid-for, default 30 days). None (records from before issue
    12) = recorded_at + the deployment's current window.
    """

    consent_id: str
    patient_ref: str
    practice: str
    recorded_by: str
    recorded_at: datetime
    basis: ConsentBasis
    purposes: frozenset[Purpose]
    identifiable: bool
    recorded_in_notes: bool
    retention: timedelta
    age_out_at: datetime | None = None
    gillick_competent: bool | None = None
    best_interests_statement: str | None = None
    expires_at: datetime | None = None
    withdrawn_at: datetime | None = None
    withdrawn_by: str | None = None
    patient_ref_scheme: str | None = None
    patient_ref_ending: str | None = None
    birth_month: str | None = None
    adult_asserted: bool | None = None
    sex: Sex | None = None
    specialties: frozenset[str] | None = None
    refer_until: datetime | None = None

    @property
    def withdrawn(self) -> bool:
        return self.withdrawn_at is not None

    @property
    def patient_hint(self) -> str:
        """"NHS no. ending 919" (or a neutral phrase for records from before issue 12)."""
        if self.patient_ref_scheme and self.patient_ref_ending:
            return f"{self.patient_ref_scheme} ending {self.patient_ref_ending}"
        return "patient reference not shown (recorded before read-back existed)"

    def __repr__(self) -> str:  # safe for logs: no patient hash, no statement
        return (
            f"ConsentRecord(consent_id={self.consent_id!r}, basis={self.basis.value!r}, "
            f"purposes={sorted(p.value for p in self.purposes)!r}, identifiable={self.identifiable!r}, "
            f"withdrawn={self.withdrawn!r})"
        )

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConsentRecord":
        return from_jsonable(cls, data)


class ReferralState(str, enum.Enum):
    """Lifecycle states (see handlers/lifecycle.py for the transition table)."""

    OPENED = "opened"  # waiting for images
    IMAGES_RECEIVED = "images_received"  # at least one clean image accepted, not yet posted
    POSTED = "posted"  # at least one image is in the specialty thread
    DISCUSSED = "discussed"  # someone wrote in the thread
    OPINION_GIVEN = "opinion_given"  # opinion relayed; images removed after the grace period
    IMAGES_EXPIRED = "images_expired"  # removal of posted images requested, waiting for confirmation
    CLOSED = "closed"  # nothing of the referral left in any chat


#: states in which a referral still waits for an opinion (images may be added)
OPEN_STATES = frozenset({ReferralState.OPENED, ReferralState.IMAGES_RECEIVED, ReferralState.POSTED,
                         ReferralState.DISCUSSED})


class CloseReason(str, enum.Enum):
    OPINION = "opinion"
    CANCELLED = "cancelled"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"  # max lifetime reached without an opinion


class ImageState(str, enum.Enum):
    HELD = "held"  # faces found, consent does not cover identifiable: waiting for the GP
    WAITING = "waiting"  # accepted, waiting for the thread root to be posted
    POSTING = "posting"  # PostImage is in the outbox
    POSTED = "posted"  # in the specialty thread (room_event_id/media_uri known)
    REMOVING = "removing"  # RemoveImages is in the outbox
    REMOVED = "removed"  # redacted / media deleted
    DISCARDED = "discarded"  # never posted, dropped

    @property
    def in_chat(self) -> bool:
        """The image is (or may be about to be) visible in a chat."""
        return self in (ImageState.POSTING, ImageState.POSTED, ImageState.REMOVING)


class PreviewState(str, enum.Enum):
    """The blurred preview a held image shows the GP in their direct chat (issue 11).
    A preview lives only while its image is held or on its way to the thread: once the
    image is posted, discarded, expired or withdrawn, the preview is removed too."""

    NONE = "none"  # no preview (the image was never held, or was held before previews)
    REQUESTED = "requested"  # SendPreview is in the outbox
    SHOWN = "shown"  # in the GP's direct chat (``ImageItem.preview_ref``)
    REMOVING = "removing"  # RemovePreview is in the outbox
    REMOVED = "removed"  # redacted, its media deleted where the transport can


@dataclass(frozen=True)
class ImageItem:
    """One clean image of a referral. The bytes live in the vault under ``image_id``.

    A held image (``HELD``: faces or text found, consent not covering identifiable
    images) is the blurred copy; ``held_until`` is when it is destroyed if the GP neither
    sends it (``!blur``) nor drops it (``!discard``). ``preview*``: the copy of it shown to
    the GP (``PreviewState``); ``preview_ref`` is the transport's reference to that message
    (Matrix ``"!room/$event"``, Telegram ``"chat:message"``)."""

    image_id: str
    referral_id: str
    filename: str  # renamed after the referral, e.g. "R-7K3QX9-1.jpg"
    media_type: str
    received_at: datetime
    retention_until: datetime
    upload_ref: str  # transport's reference to the GP's original upload (to redact it)
    state: ImageState = ImageState.WAITING
    faces: int = 0
    faces_blurred: bool = False
    width: int = 0
    height: int = 0
    removed_metadata: tuple[str, ...] = ()
    room_event_id: str | None = None
    media_uri: str | None = None
    shredded: bool = False  # the vault copy is destroyed
    text_regions: int = 0  # text areas the check found (blurred when the image is held)
    held_until: datetime | None = None
    preview: PreviewState = PreviewState.NONE
    preview_ref: str | None = None
    preview_media_uri: str | None = None


@dataclass(frozen=True)
class Addendum:
    """A specialist's addition to an opinion already given (``!addendum``)."""

    by: str
    at: datetime
    text: str  # clinical free text: never logged or audited

    def __repr__(self) -> str:
        return f"Addendum(by={self.by!r}, at={self.at.isoformat()}, text=<{len(self.text)} chars>)"


@dataclass(frozen=True)
class Referral:
    """A referral (id ``R-…``) and its whole state. Changed only by handlers/lifecycle.py."""

    referral_id: str
    consent_id: str
    referrer: str  # GP user id
    practice: str
    specialty: str
    question: str  # clinical free text: never logged or audited
    opened_at: datetime
    expires_at: datetime  # max lifetime without opinion
    reminder_at: datetime  # when the "no opinion yet" reminder goes out
    state: ReferralState = ReferralState.OPENED
    images: tuple[ImageItem, ...] = ()
    root_requested: bool = False  # PostThreadRoot is in the outbox (or done)
    thread_root_event_id: str | None = None
    reminder_sent: bool = False
    opinion: str | None = None  # clinical free text: never logged or audited
    opinion_by: str | None = None
    opinion_at: datetime | None = None
    remove_images_at: datetime | None = None  # end of the grace period after the opinion
    close_reason: CloseReason | None = None
    closed_at: datetime | None = None
    exported_at: datetime | None = None
    opened_seq: int = 0  # how many referrals this GP had before: orders referrals opened in the same instant
    # the bot's messages about this referral in the GP's direct chat (transport event ids):
    # a reply to any of them (a photo, or an answer) is about this referral
    dm_event_ids: tuple[str, ...] = ()
    more_photos_requested: bool = False  # a specialist asked for another photo (!morephotos)
    thread_participants: tuple[str, ...] = ()  # roster specialists who wrote in the thread
    addenda: tuple[Addendum, ...] = ()  # additions to the opinion

    #: how many direct-chat event ids are remembered (the newest); older replies fall back
    #: to the normal photo rules, which ask rather than guess
    MAX_DM_EVENTS = 50
    # filing into the record (handlers/lifecycle.py "filing"; docs/filing.md)
    filing_version: int = 0  # bumped each time the record must be (re)filed: close, !export, withdrawal, addendum
    filed_version: int = 0  # the last version every configured sink accepted
    filed_to: tuple[str, ...] = ()  # sinks that hold filing_version (a retry skips them)
    filed_at: datetime | None = None
    filing_failures: int = 0  # consecutive failed attempts at filing_version
    filing_retry_at: datetime | None = None  # when the next attempt is due (None = none scheduled)
    retention_warning_at: datetime | None = None  # warn the GP and the operator: retention near, still unfiled
    # the clock as a safety net (issue 12 part 5; handlers/clock.py). ``urgency`` is read only
    # through ``handlers.clock.urgency_of``: routine | urgent | 2ww (from !refer urgency=)
    urgency: str = "routine"
    escalate_at: datetime | None = None  # the specialty lead is asked then (set when the first photo is posted)
    escalated_at: datetime | None = None  # the escalation went out (once per referral)
    originals_reminder_sent: bool = False  # the GP was told to delete the phone's originals (once)

    def __repr__(self) -> str:  # safe for logs: no question, no opinion
        return (
            f"Referral(referral_id={self.referral_id!r}, consent_id={self.consent_id!r}, "
            f"state={self.state.value!r}, specialty={self.specialty!r}, images={len(self.images)})"
        )

    def image(self, image_id: str) -> ImageItem | None:
        for item in self.images:
            if item.image_id == image_id:
                return item
        return None

    def remember_dm_event(self, event_id: str) -> "Referral":
        if event_id in self.dm_event_ids:
            return self
        ids = (self.dm_event_ids + (event_id,))[-self.MAX_DM_EVENTS :]
        return dataclasses.replace(self, dm_event_ids=ids)

    @property
    def live_images(self) -> list[ImageItem]:
        return [i for i in self.images if i.state is not ImageState.DISCARDED]

    def waiting_for_photos(self, at: datetime, window: timedelta) -> bool:
        """Open and expecting photos: none yet, a specialist asked for more, or the last
        one arrived within *window* (a burst of photos of one patient stays together)."""
        if not self.is_open:
            return False
        live = self.live_images
        if not live or self.more_photos_requested:
            return True
        return at - max(i.received_at for i in live) <= window

    def with_image(self, item: ImageItem) -> "Referral":
        """Return a copy with *item* replacing the image of the same id (or appended)."""
        images = list(self.images)
        for i, old in enumerate(images):
            if old.image_id == item.image_id:
                images[i] = item
                break
        else:
            images.append(item)
        return dataclasses.replace(self, images=tuple(images))

    @property
    def is_open(self) -> bool:
        """Still waiting for an opinion (images may be added)."""
        return self.state in OPEN_STATES

    @property
    def awaiting_filing(self) -> bool:
        """A filing was requested and not every sink has the latest version yet. While
        this holds, retention does not destroy the vault copies (only withdrawal does)."""
        return self.filing_version > self.filed_version

    def next_due_at(self) -> datetime | None:
        """Earliest time a ``Tick`` has work to do for this referral (None = never).

        Stores index this value; ``Transaction.due_referrals(at)`` returns the
        referrals whose ``next_due_at() <= at``.
        """
        candidates: list[datetime] = []
        if self.is_open:
            if not self.reminder_sent:
                candidates.append(self.reminder_at)
            if self.escalate_at is not None and self.escalated_at is None:
                candidates.append(self.escalate_at)
            candidates.append(self.expires_at)
            candidates.extend(i.held_until for i in self.images
                              if i.state is ImageState.HELD and i.held_until is not None)
        if self.state is ReferralState.OPINION_GIVEN and self.remove_images_at is not None:
            candidates.append(self.remove_images_at)
        if self.awaiting_filing:
            if self.filing_retry_at is not None:
                candidates.append(self.filing_retry_at)
            if self.retention_warning_at is not None:
                candidates.append(self.retention_warning_at)
        else:  # images wait for their filing; the retry and the warning above are the timers then
            for item in self.images:
                if not item.shredded:
                    candidates.append(item.retention_until)
        return min(candidates) if candidates else None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Referral":
        return from_jsonable(cls, data)


@dataclass(frozen=True)
class UnassignedPhoto:
    """A clean photo the bot holds because it could not tell which of the GP's open
    referrals it is for (it never guesses). The bytes are in the vault under
    ``photo_id``; nothing is posted. It goes to a referral on ``!photo R-…`` or is
    destroyed at ``destroy_at``. ``candidates``: the referral ids the GP was offered."""

    photo_id: str
    referrer: str
    received_at: datetime
    destroy_at: datetime
    media_type: str
    extension: str
    upload_ref: str
    candidates: tuple[str, ...] = ()
    faces: int = 0  # what the face/text check found, when it ran (``checked``)
    text_regions: int = 0
    checked: bool = False  # the check ran (some open referral's consent needed it)
    width: int = 0
    height: int = 0
    removed_metadata: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnassignedPhoto":
        return from_jsonable(cls, data)


@dataclass(frozen=True)
class AuditEntry:
    """One audit record. ``details`` holds short codes and counts only: never a
    patient reference, consent free text, clinical question/opinion or image bytes.

    ``actor`` is a user id or ``BOT_ACTOR``; ``action`` a short verb code such as
    ``consent.recorded``, ``referral.opened``, ``image.accepted``, ``image.removed``.
    """

    actor: str
    action: str
    at: datetime
    referral_id: str | None = None
    consent_id: str | None = None
    details: dict[str, str | int | bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)
