"""Shared helpers for the handlers tests: a policy, people, real JPEGs, and a harness
that plays the transport's part (drains the outbox, reports feedback events)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, ImageDraw

from handlers import actions as A
from handlers import events as E
from handlers.model import Actor
from handlers.patientref import PatientRefHasher
from handlers.policy import Policy, Specialty
from handlers.workflow import Workflow
from storage.memory import MemoryStore

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
SECRET = b"test-deployment-secret-0123456789"
FACE_JPEG = Path(__file__).resolve().parent.parent / "sanitizer" / "data" / "astronaut.jpg"

GP = Actor("@gp:example.org", practice="Riverside Surgery", display_name="Dr Green")
GP2 = Actor("@gp2:example.org", practice="Riverside Surgery", display_name="Dr Grey")
OTHER_GP = Actor("@gp:elsewhere.org", practice="Hilltop Practice", display_name="Dr Brown")
NO_PRACTICE = Actor("@locum:example.org", practice=None)
DERM = Actor("@derm:example.org", practice="Trust", display_name="Dr Skin")
DERM2 = Actor("@derm2:example.org", practice="Trust", display_name="Dr Mole")
NOT_ROSTER = Actor("@student:example.org", practice="Trust")


def policy(**kw) -> Policy:
    base = dict(
        specialties={
            "dermatology": Specialty(
                key="dermatology",
                title="Dermatology advice",
                roster=frozenset({DERM.user_id, DERM2.user_id}),
                aliases=frozenset({"derm", "skin"}),
            ),
            "plastics": Specialty(key="plastics", title="Plastic surgery", roster=frozenset({"@plastic:example.org"})),
        }
    )
    base.update(kw)
    return Policy(**base)


def jpeg_with_metadata(width: int = 320, height: int = 240, seed: int = 0) -> bytes:
    """A small real JPEG with EXIF: GPS position, camera make/model, serial number, time."""
    im = Image.new("RGB", (width, height), (200 - seed % 50, 120, 90))
    d = ImageDraw.Draw(im)
    d.ellipse((width // 3, height // 3, width // 2, height // 2), fill=(120, 40, 40))
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    exif[0x0110] = "Model X"  # Model
    exif[0x0132] = "2026:03:01 08:00:00"  # DateTime
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = (51.0, 30.0, 12.5)
    gps[3] = "W"
    gps[4] = (0.0, 7.0, 40.0)
    exif_ifd = exif.get_ifd(0x8769)
    exif_ifd[0xA431] = "SERIAL123456"  # BodySerialNumber
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85, exif=exif)
    return buf.getvalue()


def face_jpeg() -> bytes:
    return FACE_JPEG.read_bytes()


#: valid NHS numbers (modulus 11) for tests that need several patients
NHS_NUMBERS = ("9434765919", "4000000004", "4000000012", "4000000020", "4000000039", "4000000047", "4000000055")

CONSENT_OK = (
    "!consent patient=9434765919 by=patient adult=yes purposes=care identifiable=no notes=yes specialties=dermatology"
)


@dataclass
class Harness:
    """Workflow + memory store + a scripted transport (executes the outbox, reports feedback)."""

    policy: Policy = field(default_factory=policy)
    now: datetime = T0
    counter: int = 0
    store: object = None  # any storage.interfaces.Store; a fresh MemoryStore by default

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = MemoryStore()
        self.workflow = Workflow(self.store, self.policy, PatientRefHasher(SECRET))
        self.executed: list[A.Action] = []
        self.chat: dict[str, str] = {}  # room_event_id -> what is visible (posted images)
        self.fail_posts: str | None = None  # reason: make the "room" refuse posts
        self.dm_events: dict[str, A.Action] = {}  # direct-chat event id -> the Reply/Notify sent
        self.fail_filing: str | None = None  # reason: make every filing sink refuse
        self.filed: list[A.FileRecord] = []  # what the scripted sinks took
        self.room_members: tuple[str, ...] = ()  # reported with each ImagePosted
        self.previews: dict[str, A.SendPreview] = {}  # preview ref -> the preview in the GP's chat
        self.fail_previews: str | None = None  # reason: make sending previews fail for good

    def eid(self, tag: str = "ev") -> str:
        self.counter += 1
        return f"${tag}{self.counter}"

    def advance(self, **kw) -> datetime:
        self.now = self.now + timedelta(**kw)
        return self.now

    async def say(self, actor: Actor, text: str, place=None, event_id: str | None = None) -> list[A.Action]:
        place = place or E.DirectChat(actor.user_id)
        return await self.workflow.handle(
            E.CommandReceived(event_id=event_id or self.eid("cmd"), actor=actor, at=self.now, text=text, place=place)
        )

    async def send_image(
        self, actor: Actor, data: bytes, event_id: str | None = None, caption: str = "", in_reply_to: str | None = None
    ) -> list[A.Action]:
        eid = event_id or self.eid("img")
        return await self.workflow.handle(
            E.ImageReceived(
                event_id=eid,
                actor=actor,
                at=self.now,
                data=data,
                filename="IMG_0001.jpg",
                declared_mimetype="image/jpeg",
                upload_ref=f"!dm:example.org/{eid}",
                place=E.DirectChat(actor.user_id),
                caption=caption,
                in_reply_to=in_reply_to,
            )
        )

    async def reply_to(self, actor: Actor, dm_event_id: str, text: str) -> list[A.Action]:
        """*actor* answers the bot's direct-chat message *dm_event_id* with a Matrix reply."""
        return await self.workflow.handle(
            E.CommandReceived(event_id=self.eid("re"), actor=actor, at=self.now, text=text,
                              place=E.DirectChat(actor.user_id), in_reply_to=dm_event_id)
        )

    async def in_thread(self, actor: Actor, rid: str, text: str) -> list[A.Action]:
        """*actor* writes *text* in the referral's thread (a command or a plain message)."""
        place = E.SpecialtyThread("dermatology", thread_event_id=f"$root-{rid}")
        if text.lstrip().startswith("!"):
            return await self.say(actor, text, place)
        return await self.workflow.handle(E.ThreadActivity(self.eid("th"), actor, self.now, place, text=text))

    def dm_event_of(self, needle: str, user_id: str | None = None) -> str:
        """The direct-chat event id of the newest bot message containing *needle*."""
        for eid, action in reversed(list(self.dm_events.items())):
            if needle in action.text and (user_id is None or getattr(action, "user_id", None) in (None, user_id)):
                return eid
        raise AssertionError(f"no direct-chat message containing {needle!r}")

    async def tick(self) -> list[A.Action]:
        return await self.workflow.handle(E.Tick(at=self.now))

    async def drain(self, rounds: int = 10) -> list[A.Action]:
        """Execute pending actions like a transport would, feeding back outcomes."""
        done: list[A.Action] = []
        for _ in range(rounds):
            pending = await self.store.pending_actions()
            if not pending:
                break
            for entry in pending:
                action = entry.action
                feedback = self._execute(action)
                if feedback is not None:
                    await self.workflow.handle(feedback)
                await self.store.complete_action(entry.outbox_id)
                self.executed.append(action)
                done.append(action)
        return done

    def _execute(self, action: A.Action):
        done_id = f"done:{action.key}"
        if isinstance(action, A.PostThreadRoot):
            if self.fail_posts:
                return E.ActionFailed(done_id, self.now, action.key, "PostThreadRoot", self.fail_posts, action.referral_id)
            return E.ThreadRootPosted(done_id, self.now, action.referral_id, f"$root-{action.referral_id}")
        if isinstance(action, A.PostImage):
            if self.fail_posts:
                return E.ActionFailed(done_id, self.now, action.key, "PostImage", self.fail_posts, action.referral_id)
            room_event = f"$img-{action.image_id}"
            self.chat[room_event] = action.image_id
            return E.ImagePosted(done_id, self.now, action.referral_id, action.image_id, room_event,
                                 f"mxc://hs/{action.image_id}", members=self.room_members)
        if isinstance(action, A.RemoveImages):
            for ref in action.images:
                self.chat.pop(ref.room_event_id, None)
            return E.ImagesRemoved(done_id, self.now, action.referral_id, tuple(r.image_id for r in action.images))
        if isinstance(action, A.ExportReferral):
            return E.ExportCompleted(done_id, self.now, action.referral_id)
        if isinstance(action, A.SendPreview):
            vault_ids = getattr(self.store, "vault_ids", None)
            if vault_ids is not None and action.image_id not in vault_ids():  # as a real transport finds it
                return E.ActionFailed(done_id, self.now, action.key, "SendPreview", "The photo is no longer held.",
                                      action.referral_id, image_id=action.image_id)
            if self.fail_previews:
                return E.ActionFailed(done_id, self.now, action.key, "SendPreview", self.fail_previews,
                                      action.referral_id, image_id=action.image_id)
            ref = f"!dm:example.org/$preview-{action.image_id}"
            self.previews[ref] = action
            return E.PreviewSent(done_id, self.now, action.referral_id, action.image_id, ref,
                                 f"mxc://hs/preview-{action.image_id}")
        if isinstance(action, A.RemovePreview):
            self.previews.pop(action.preview_ref, None)
            return E.PreviewRemoved(done_id, self.now, action.referral_id, action.image_id)
        if isinstance(action, (A.Reply, A.Notify)):
            in_dm = isinstance(action, A.Notify) or isinstance(action.to, E.DirectChat)
            if in_dm:
                dm_event = f"$dm-{action.key}"
                self.dm_events[dm_event] = action
                if action.referral_id:
                    return E.MessageSent(done_id, self.now, action.referral_id, dm_event)
        if isinstance(action, A.FileRecord):
            if self.fail_filing:
                return E.RecordFiled(done_id, self.now, action.referral_id, action.version, failed=("inbox",),
                                     failed_where=("the practice document inbox",), reason=self.fail_filing,
                                     reply_to=action.reply_to)
            self.filed.append(action)
            return E.RecordFiled(done_id, self.now, action.referral_id, action.version, filed=("inbox",),
                                 where=("the practice document inbox",), reply_to=action.reply_to)
        if isinstance(action, A.PurgeFiledCopies):
            return E.FiledCopiesPurged(done_id, self.now, action.referral_id, count=1, reason=action.reason)
        return None

    def texts(self, actions) -> str:
        return "\n".join(getattr(a, "text", "") for a in actions)


def reply_text(actions) -> str:
    replies = [a.text for a in actions if isinstance(a, (A.Reply, A.Notify))]
    assert replies, f"no reply in {actions!r}"
    return "\n".join(replies)


def consent_id_from(actions) -> str:
    import re

    m = re.search(r"Consent (C-[0-9A-Z]+) recorded", reply_text(actions))
    assert m, reply_text(actions)
    return m.group(1)


def referral_id_from(actions) -> str:
    import re

    m = re.search(r"Referral (R-[0-9A-Z]+) opened", reply_text(actions))
    assert m, reply_text(actions)
    return m.group(1)


def small_face_jpeg(width: int = 160) -> bytes:
    """The public-domain portrait scaled down (the face is still detected; fast)."""
    im = Image.open(io.BytesIO(face_jpeg()))
    buf = io.BytesIO()
    im.resize((width, width * im.size[1] // im.size[0])).save(buf, "JPEG", quality=85)
    return buf.getvalue()
