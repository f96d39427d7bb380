"""Actions: what the workflow asks a transport to do (the outbox contents).

Every action is a frozen, keyword-only dataclass with:

* ``key``: a string unique across all actions ever emitted (``"<event_id>/<n>"``).
  Transports should use it as their idempotency key (Matrix ``txn_id``) so
  re-running an unfinished action after a crash does not post twice, and put it
  in the feedback event (``ActionFailed.action_key``).
* ``to_dict()`` -> JSON-able dict with a ``"type"`` tag; ``action_from_dict(d)``
  rebuilds the action. The store keeps this dict in the outbox.

Actions never carry image bytes: ``PostImage`` names the vault item
(``image_id``); the transport reads it with ``store.vault_get(image_id)``.

After executing an action the transport reports the outcome as a domain event
(see handlers/events.py) where one is listed below, then calls
``store.complete_action(outbox_id)``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from handlers.events import DirectChat, Place, SpecialtyThread
from handlers.serial import from_jsonable, to_jsonable

__all__ = [
    "Action",
    "Reply",
    "Notify",
    "Acknowledge",
    "PostThreadRoot",
    "PostImage",
    "PostedImageRef",
    "SendPreview",
    "RemovePreview",
    "RedactOriginalUpload",
    "RemoveImages",
    "ExportReferral",
    "FileRecord",
    "PurgeFiledCopies",
    "action_from_dict",
    "ACTION_TYPES",
]


_FREE_TEXT = frozenset({"text", "placeholder", "text_without_image"})


@dataclass(frozen=True, kw_only=True, repr=False)
class Action:
    """Base class. ``key`` is stamped by the workflow (unique, stable)."""

    key: str = ""

    #: name of the feedback event the transport reports afterwards (None = just complete it)
    feedback: ClassVar[str | None] = None

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self, tag=True)

    def __repr__(self) -> str:
        """Safe for logs: free text (``text``, ``placeholder``) shows only its length."""
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FREE_TEXT:
                parts.append(f"{f.name}=<{len(value)} chars>")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Action":
        return action_from_dict(data)


@dataclass(frozen=True, kw_only=True, repr=False)
class Reply(Action):
    """Send ``text`` (plain, short) to a place: a direct chat, a referral thread, or a
    specialty room's main timeline.

    ``mentions``: user ids this message must alert. Empty = a routine acknowledgement
    (Matrix: ``m.notice``, which clients do not notify); otherwise the transport sends
    it so that the person is notified (Matrix: ``m.text`` with ``m.mentions`` and a pill).
    ``referral_id``: the referral the message is about; in a direct chat the transport
    reports ``MessageSent`` so that a reply to this message is tied to the referral."""

    feedback: ClassVar[str | None] = "MessageSent"  # only with referral_id, in a direct chat
    to: Place
    text: str
    mentions: tuple[str, ...] = ()
    referral_id: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False)
class Notify(Action):
    """Send ``text`` to ``user_id`` in the bot's direct chat with them (opens one if needed).
    ``mentions`` and ``referral_id`` as for ``Reply``."""

    feedback: ClassVar[str | None] = "MessageSent"  # only with referral_id
    user_id: str
    text: str
    mentions: tuple[str, ...] = ()
    referral_id: str | None = None


@dataclass(frozen=True, kw_only=True, repr=False)
class Acknowledge(Action):
    """Mark a person's message ``event_id`` in ``to`` as passed on (Matrix: a reaction
    with ``reaction`` as its key, like a messenger's delivery tick). Best effort: a
    transport that cannot do it completes it without doing anything."""

    to: Place
    event_id: str
    reaction: str


@dataclass(frozen=True, kw_only=True, repr=False)
class PostThreadRoot(Action):
    """Post the root message of the referral's thread in the specialty room.
    Feedback: ``ThreadRootPosted(referral_id, room_event_id)``.
    The transport must refuse (``ActionFailed(permanent=True)``) if the room is not
    end-to-end encrypted or has a member outside the clinician directory."""

    feedback: ClassVar[str | None] = "ThreadRootPosted"
    referral_id: str
    specialty: str
    text: str
    mentions: tuple[str, ...] = ()  # the specialty's roster: a new referral needs a person


@dataclass(frozen=True, kw_only=True, repr=False)
class PostImage(Action):
    """Upload the vault item ``image_id`` (encrypted attachment) and post it in the
    referral's thread (``thread_root_event_id``) as ``filename``.
    Feedback: ``ImagePosted(referral_id, image_id, room_event_id, media_uri)``.
    Same room checks as ``PostThreadRoot``."""

    feedback: ClassVar[str | None] = "ImagePosted"
    referral_id: str
    specialty: str
    thread_root_event_id: str
    image_id: str
    filename: str
    media_type: str
    width: int = 0
    height: int = 0


@dataclass(frozen=True, kw_only=True, repr=False)
class SendPreview(Action):
    """Show the GP (``user_id``), in their direct chat, the held image ``image_id`` exactly
    as ``!blur`` would post it: the same vault item, so the same bytes. ``text`` is the
    caption (it starts with "PREVIEW": what was found and blurred, how to confirm).
    A transport that must not carry the picture (one without end-to-end encryption whose
    operator has not allowed previews there) sends ``text_without_image`` instead.
    Feedback: ``PreviewSent(referral_id, image_id, preview_ref, media_uri)``."""

    feedback: ClassVar[str | None] = "PreviewSent"
    user_id: str
    referral_id: str
    image_id: str
    filename: str
    media_type: str
    width: int = 0
    height: int = 0
    text: str
    text_without_image: str = ""


@dataclass(frozen=True, kw_only=True, repr=False)
class RemovePreview(Action):
    """Take a preview out of the GP's direct chat: redact ``preview_ref`` (when the
    preview was sent) and delete every upload the transport made for the preview of
    ``image_id`` (also one whose message never got sent). Feedback:
    ``PreviewRemoved(referral_id, image_id, media_deleted)``."""

    feedback: ClassVar[str | None] = "PreviewRemoved"
    user_id: str
    referral_id: str
    image_id: str
    preview_ref: str = ""
    media_uri: str = ""
    reason: str = "Preview no longer needed"


@dataclass(frozen=True, kw_only=True)
class PostedImageRef:
    """Where a posted image lives in the chat."""

    image_id: str
    room_event_id: str
    media_uri: str


@dataclass(frozen=True, kw_only=True, repr=False)
class RedactOriginalUpload(Action):
    """Redact the GP's original upload (``ImageReceived.upload_ref``) and delete its
    media where allowed. No feedback event."""

    upload_ref: str
    reason: str = "Replaced by a cleaned copy"


@dataclass(frozen=True, kw_only=True, repr=False)
class RemoveImages(Action):
    """Redact each posted image event, delete its media from the homeserver where the
    bot is allowed, and post ``placeholder`` in the referral thread.
    Feedback: ``ImagesRemoved(referral_id, image_ids, media_deleted)``."""

    feedback: ClassVar[str | None] = "ImagesRemoved"
    referral_id: str
    specialty: str
    thread_root_event_id: str | None
    images: tuple[PostedImageRef, ...]
    placeholder: str
    reason: str = "Image removed"


@dataclass(frozen=True, kw_only=True, repr=False)
class ExportReferral(Action):
    """Export the referral as a FHIR R4 bundle (storage's exporter), and tell
    ``reply_to`` where it went. Feedback: ``ExportCompleted(referral_id)``, after
    which the workflow crypto-shreds the vault copies of its images."""

    feedback: ClassVar[str | None] = "ExportCompleted"
    referral_id: str
    requested_by: str
    reply_to: Place


@dataclass(frozen=True, kw_only=True, repr=False)
class FileRecord(Action):
    """File the referral's record document (images, question, consent, opinion, addenda,
    timeline) through the configured sinks (``bot/filing/``): PACS, the practice's document
    inbox, its mailbox. ``version`` is ``Referral.filing_version`` when it was requested;
    sinks named in ``skip`` already hold that version (a retry does not send twice).
    The record is built when the action runs, from the store, so it is current.
    Carries ids only. Feedback: ``RecordFiled``, which says which sinks took it, which
    failed and why; the workflow replies to ``reply_to`` (``!export``) with where it went."""

    feedback: ClassVar[str | None] = "RecordFiled"
    referral_id: str
    version: int
    reason: str = "closed"  # closed | export | withdrawn | addendum | retry
    skip: tuple[str, ...] = ()
    reply_to: Place | None = None


@dataclass(frozen=True, kw_only=True, repr=False)
class PurgeFiledCopies(Action):
    """Delete whatever the bot itself left on disk for this referral and that nobody has
    taken in yet: files of versions before ``before_version`` still in a filing folder,
    and FHIR files the old ``!export`` wrote. Requested on withdrawal and at the end of
    retention. Feedback: ``FiledCopiesPurged(referral_id, count)``."""

    feedback: ClassVar[str | None] = "FiledCopiesPurged"
    referral_id: str
    before_version: int
    reason: str  # withdrawn | retention


ACTION_TYPES: dict[str, type[Action]] = {
    cls.__name__: cls
    for cls in (Reply, Notify, Acknowledge, PostThreadRoot, PostImage, RedactOriginalUpload, RemoveImages, ExportReferral,
                FileRecord, PurgeFiledCopies, SendPreview, RemovePreview)
}


def action_from_dict(data: dict[str, Any]) -> Action:
    """Rebuild an action from ``Action.to_dict()`` output. Raises ValueError if unknown."""
    name = data.get("type")
    cls = ACTION_TYPES.get(name)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown action type {name!r}")
    body = {k: v for k, v in data.items() if k != "type"}
    return from_jsonable(cls, body)


# re-exported for convenience of transports
DirectChat = DirectChat
SpecialtyThread = SpecialtyThread
