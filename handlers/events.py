"""Domain events: what transports hand to ``Workflow.handle(event)``.

Two kinds:

* **Inputs from people** (``CommandReceived``, ``ImageReceived``, ``ThreadActivity``),
  built by a transport from a chat event after resolving the sender to an ``Actor``.
* **Feedback from the transport** after it executed an outbox action
  (``ThreadRootPosted``, ``ImagePosted``, ``ImagesRemoved``, ``PreviewSent``,
  ``PreviewRemoved``, ``ExportCompleted``, ``MessageSent``, ``ActionFailed``), plus the
  timer ``Tick``.

``in_reply_to`` on a person's message is the transport event id it answers (a Matrix
reply's ``m.in_reply_to``); the workflow uses it to tell which referral a photo or an
answer is about (see ``MessageSent``).

Every event except ``Tick`` carries ``event_id``: a string unique per transport
event (Matrix event id; for feedback events use something unique and stable for
that action execution, e.g. ``f"done:{action.key}"``). The workflow marks it
processed in the same transaction as its effects, so handing the same event twice
is a no-op. ``at`` is a timezone-aware UTC datetime supplied by the transport.

Places: ``DirectChat(user_id)`` is the bot's encrypted direct chat with that user;
``SpecialtyThread(specialty, referral_id, thread_event_id)`` is the specialty room,
in a referral thread when ``referral_id`` or ``thread_event_id`` is known (the
transport may give either; the workflow resolves the other), or the room's main
timeline when both are None.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Union

from handlers.model import Actor

__all__ = [
    "DirectChat",
    "SpecialtyThread",
    "Place",
    "CommandReceived",
    "ImageReceived",
    "ThreadActivity",
    "ThreadRootPosted",
    "ImagePosted",
    "ImagesRemoved",
    "PreviewSent",
    "PreviewRemoved",
    "ExportCompleted",
    "MessageSent",
    "ActionFailed",
    "RecordFiled",
    "FiledCopiesPurged",
    "Tick",
    "Event",
]


@dataclass(frozen=True)
class DirectChat:
    """The bot's direct (encrypted) chat with ``user_id``."""

    user_id: str


@dataclass(frozen=True)
class SpecialtyThread:
    """A specialty room (``specialty`` is the configured key, e.g. "dermatology"),
    optionally a referral's thread in it."""

    specialty: str
    referral_id: str | None = None
    thread_event_id: str | None = None


Place = Union[DirectChat, SpecialtyThread]


@dataclass(frozen=True)
class CommandReceived:
    """A text message starting with ``!`` (the transport may pass any text; non-commands
    in a direct chat get the help hint)."""

    event_id: str
    actor: Actor
    at: datetime
    text: str
    place: Place
    in_reply_to: str | None = None

    def __repr__(self) -> str:  # never print the command text (patient refs, opinions)
        word = self.text.strip().split(" ", 1)[0][:20]
        return (
            f"CommandReceived(event_id={self.event_id!r}, actor={self.actor.user_id!r}, "
            f"at={self.at.isoformat()}, command={word!r}, place={self.place!r})"
        )


@dataclass(frozen=True)
class ImageReceived:
    """A file/image the GP sent in the direct chat (already decrypted by the transport).

    ``upload_ref`` is the transport's opaque reference to the original message so
    that it can redact it later (``RedactOriginalUpload``); for Matrix e.g.
    ``"!room:server/$event"``. ``declared_mimetype`` and ``filename`` are as sent:
    untrusted, used only in messages. ``caption``: text the GP sent with the photo
    (Matrix: a ``body`` that differs from ``filename``), only searched for ``R-…``;
    ``in_reply_to``: the message the photo was sent as a reply to.
    """

    event_id: str
    actor: Actor
    at: datetime
    data: bytes
    filename: str
    declared_mimetype: str
    upload_ref: str
    place: Place
    caption: str = ""
    in_reply_to: str | None = None

    def __repr__(self) -> str:  # never print image bytes
        return (
            f"ImageReceived(event_id={self.event_id!r}, actor={self.actor.user_id!r}, "
            f"at={self.at.isoformat()}, bytes={len(self.data)})"
        )


@dataclass(frozen=True)
class ThreadActivity:
    """Someone wrote a non-command message in a referral thread. ``text`` is what they
    wrote (relayed to the GP when they are on the specialty's roster; never logged)."""

    event_id: str
    actor: Actor
    at: datetime
    place: SpecialtyThread
    text: str = ""

    def __repr__(self) -> str:
        return (
            f"ThreadActivity(event_id={self.event_id!r}, actor={self.actor.user_id!r}, "
            f"at={self.at.isoformat()}, text=<{len(self.text)} chars>, place={self.place!r})"
        )


@dataclass(frozen=True)
class ThreadRootPosted:
    """Feedback for ``PostThreadRoot``: the root message's event id in the specialty room."""

    event_id: str
    at: datetime
    referral_id: str
    room_event_id: str


@dataclass(frozen=True)
class ImagePosted:
    """Feedback for ``PostImage``: the image event and the uploaded media (mxc:// URI).
    ``members``: the user ids joined to the room when the image was posted (who could
    see it), for the audit trail; empty when the transport cannot tell."""

    event_id: str
    at: datetime
    referral_id: str
    image_id: str
    room_event_id: str
    media_uri: str
    members: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImagesRemoved:
    """Feedback for ``RemoveImages``: these images were redacted (and their media
    deleted where the server allows: ``media_deleted``)."""

    event_id: str
    at: datetime
    referral_id: str
    image_ids: tuple[str, ...]
    media_deleted: bool = True


@dataclass(frozen=True)
class PreviewSent:
    """Feedback for ``SendPreview``: the preview is in the GP's direct chat.
    ``preview_ref``: the transport's reference to that message, for ``RemovePreview``
    (Matrix ``"!room/$event"``); ``media_uri``: its upload ("" when the transport sent
    the words only)."""

    event_id: str
    at: datetime
    referral_id: str
    image_id: str
    preview_ref: str
    media_uri: str = ""


@dataclass(frozen=True)
class PreviewRemoved:
    """Feedback for ``RemovePreview``: the preview left the chat (and its media was
    deleted from the server where the transport can: ``media_deleted``)."""

    event_id: str
    at: datetime
    referral_id: str
    image_id: str
    media_deleted: bool = True


@dataclass(frozen=True)
class ExportCompleted:
    """Feedback for ``ExportReferral``: the record was exported; vault copies may go."""

    event_id: str
    at: datetime
    referral_id: str


@dataclass(frozen=True)
class MessageSent:
    """Feedback for a ``Reply`` / ``Notify`` about one referral (``referral_id`` set) sent
    to a direct chat: ``room_event_id`` is the message's event id there, so a reply to it
    (a photo, or the GP's answer) can be tied to the referral."""

    event_id: str
    at: datetime
    referral_id: str
    room_event_id: str


@dataclass(frozen=True)
class ActionFailed:
    """An outbox action could not be executed. ``permanent=False`` means the transport
    will retry (the workflow only records it); ``permanent=True`` means it gave up
    (e.g. the specialty room is not encrypted or has a member outside the directory).
    ``reason`` is one plain sentence without patient data. ``image_id`` (optional,
    added later) names the image of a failed ``PostImage``; without it every image
    still being posted for that referral is treated as failed (and removed at once
    should it turn up in the room after all)."""

    event_id: str
    at: datetime
    action_key: str
    action_type: str
    reason: str
    referral_id: str | None = None
    permanent: bool = True
    image_id: str | None = None


@dataclass(frozen=True)
class RecordFiled:
    """Feedback for ``FileRecord``: which sinks took ``version`` (``filed``, with
    ``where``: their plain labels, e.g. "the practice document inbox"), and which did not
    (``failed``, with ``reason``: one plain sentence, no patient data, no server path)."""

    event_id: str
    at: datetime
    referral_id: str
    version: int
    filed: tuple[str, ...] = ()
    where: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    failed_where: tuple[str, ...] = ()
    reason: str = ""
    reply_to: Place | None = None


@dataclass(frozen=True)
class FiledCopiesPurged:
    """Feedback for ``PurgeFiledCopies``: how many files were deleted."""

    event_id: str
    at: datetime
    referral_id: str
    count: int
    reason: str = ""


@dataclass(frozen=True)
class Tick:
    """Timer: run everything that fell due at or before ``at``. Not deduplicated
    (has no event id); handling it twice is harmless because due work changes state."""

    at: datetime


Event = Union[
    CommandReceived,
    ImageReceived,
    ThreadActivity,
    ThreadRootPosted,
    ImagePosted,
    ImagesRemoved,
    PreviewSent,
    PreviewRemoved,
    ExportCompleted,
    MessageSent,
    ActionFailed,
    RecordFiled,
    FiledCopiesPurged,
    Tick,
]
