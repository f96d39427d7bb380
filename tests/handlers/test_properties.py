"""Stateful property test (hypothesis) over the whole workflow + lifecycle.

Random interleavings of consents, referrals, images (plain, with a face, garbage),
transport executions (some refused by the room), thread chatter, opinions (from
roster and non-roster users), cancel, withdraw, blur/discard, export, time passing
and replayed events. Invariants:

* no image is ever posted without valid consent at the moment the post is ordered,
  and never with a face the consent does not cover unless it was blurred;
* every posted image is out of the chat once the referral's max lifetime (plus the
  grace period) has passed and the outbox has been drained;
* no action is emitted twice (unique keys; one PostImage per image; an image is in
  at most one RemoveImages);
* a processed event id is never handled twice (replays change nothing);
* a photo lands only where the GP said (its caption's R-…, the referral of the message it
  replies to, the !photo answer) or, unnamed, in the only referral waiting for photos;
  never anywhere else (issue 10);
* words from someone off the roster never reach a GP; held photos never outlive their
  time (they are destroyed, with the vault copy);
* previews (issue 11): only a held image is previewed; what ``!blur`` posts is byte for
  byte what was previewed; a preview whose image is no longer held or on its way has its
  removal in the outbox, and none is left once every deadline has passed.
"""
from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from handlers import actions as A
from handlers import events as E
from handlers.consent import check_cover
from handlers.model import ImageState, ReferralState

from .helpers import DERM, GP, GP2, NOT_ROSTER, Harness, jpeg_with_metadata, small_face_jpeg

PLAIN = jpeg_with_metadata()
FACE = small_face_jpeg()
GARBAGE = b"%PDF-1.4 not an image"
STRANGER_WORDS = "stranger-words-never-relayed"

CONSENTS = [
    "!consent patient=4000000004 by=patient adult=yes purposes=care identifiable=no notes=yes specialties=any",
    "!consent patient=4000000012 by=patient adult=yes purposes=care identifiable=yes notes=yes retention=3d specialties=any",
    # turns 16 a few days after T0: a parent's consent that ages out mid-test
    "!consent patient=4000000020 by=parent dob=2010-03-06 purposes=care identifiable=no notes=yes specialties=any "
    'statement="Mother wants the rash reviewed; child too unwell to decide; photos guide treatment"',
    # no care: refer refused
    "!consent patient=4000000039 by=patient adult=yes purposes=teaching identifiable=no notes=yes specialties=any",
    "!consent patient=4000000047 by=parent purposes=care identifiable=no notes=yes specialties=any",  # refused: no dob
]


class WorkflowMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.h = Harness()
        self.consents: list[str] = []
        self.referrals: list[str] = []
        self.handled: list[object] = []  # events handled (for replays)
        self.keys: set[str] = set()
        self.posted_images: set[str] = set()
        self.removed_images: set[str] = set()
        self.root_failures: dict[str, int] = {}
        self.seen_outbox = 0
        # upload ref -> where the photo may go: ("named", rid), ("refused", None) or
        # ("only", rid-or-None) for an unnamed photo (the only waiting referral then, if any)
        self.intent: dict[str, tuple[str, str | None]] = {}
        self.previewed: dict[str, bytes] = {}  # image id -> the bytes its preview showed

    def teardown(self) -> None:
        self.loop.close()

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    async def _handle(self, event):
        acts = await self.h.workflow.handle(event)
        self.handled.append(event)
        await self._check_new_actions()
        return acts

    async def _check_new_actions(self):
        """Inspect every action the moment it is enqueued."""
        entries = self.h.store.all_actions[self.seen_outbox :]
        self.seen_outbox += len(entries)
        for entry in entries:
            a = entry.action
            assert a.key and a.key not in self.keys, f"duplicate action key {a.key}"
            self.keys.add(a.key)
            if isinstance(a, (A.Notify, A.Reply)):
                assert STRANGER_WORDS not in a.text, "words from off the roster were relayed"
            if isinstance(a, A.PostImage):
                assert a.image_id not in self.posted_images, "image posted twice"
                self.posted_images.add(a.image_id)
                ref = self.h.store.referral(a.referral_id)
                kind, target = self.intent[ref.image(a.image_id).upload_ref]
                assert kind != "refused", "a photo refused for its caption was posted"
                assert a.referral_id == target, f"photo meant for {target} posted to {a.referral_id}"
                consent = self.h.store.consent(ref.consent_id)
                assert check_cover(consent, actor=None, at=self.h.now) is None, "post without valid consent"
                item = ref.image(a.image_id)
                assert item.faces == 0 or consent.identifiable or item.faces_blurred, "unblurred face posted"
            if isinstance(a, A.SendPreview):
                item = self.h.store.referral(a.referral_id).image(a.image_id)
                assert item is not None and item.state is ImageState.HELD, "a preview of an image not held"
                assert a.text.startswith("PREVIEW") and a.user_id == self.h.store.referral(a.referral_id).referrer
            if isinstance(a, A.RemoveImages):
                for r in a.images:
                    assert r.image_id not in self.removed_images, "image removed twice"
                    self.removed_images.add(r.image_id)
            if isinstance(a, A.PostThreadRoot):
                n = sum(
                    1
                    for e in self.h.store.all_actions
                    if isinstance(e.action, A.PostThreadRoot) and e.action.referral_id == a.referral_id
                )
                assert n <= 1 + self.root_failures.get(a.referral_id, 0), "thread root requested twice"

    # ------------------------------------------------------------------ rules
    @rule(which=st.integers(0, len(CONSENTS) - 1), gp=st.sampled_from([GP, GP2]))
    def consent(self, which, gp):
        acts = self.run(self._handle(self._cmd(gp, CONSENTS[which])))
        for a in acts:
            if isinstance(a, A.Reply) and a.text.startswith("Consent C-"):
                self.consents.append(a.text.split()[1])

    def _cmd(self, actor, text, place=None):
        return E.CommandReceived(self.h.eid("c"), actor, self.h.now, text, place or E.DirectChat(actor.user_id))

    @precondition(lambda self: self.consents)
    @rule(data=st.data(), gp=st.sampled_from([GP, GP2]))
    def refer(self, data, gp):
        cid = data.draw(st.sampled_from(self.consents))
        acts = self.run(self._handle(self._cmd(gp, f"!refer derm {cid} question")))
        for a in acts:
            if isinstance(a, A.Reply) and a.text.startswith("Referral R-"):
                self.referrals.append(a.text.split()[1])

    @rule(gp=st.sampled_from([GP, GP2]), which=st.sampled_from([0, 0, 1, 2]), kind=st.sampled_from(["plain", "face"]))
    def new_case(self, gp, which, kind):
        """Consent + referral + first image in one step (the common path)."""
        self.consent(which, gp)
        cid = self.consents[-1]
        acts = self.run(self._handle(self._cmd(gp, f"!refer derm {cid} question")))
        for a in acts:
            if isinstance(a, A.Reply) and a.text.startswith("Referral R-"):
                self.referrals.append(a.text.split()[1])
        self.image(gp, kind)

    @precondition(lambda self: self.referrals)
    @rule(gp=st.sampled_from([GP, GP2]), kind=st.sampled_from(["plain", "plain", "face", "garbage"]))
    def image(self, gp, kind):
        self._send_image(gp, kind)

    def _send_image(self, gp, kind, caption: str = "", in_reply_to: str | None = None, named: str | None = None):
        data = {"plain": PLAIN, "face": FACE, "garbage": GARBAGE}[kind]
        eid = self.h.eid("i")
        if named is not None:
            ref = self.h.store.referral(named)
            mine = ref is not None and ref.referrer == gp.user_id
            self.intent[f"!dm/{eid}"] = ("named", named) if mine else ("refused", None)
        else:
            waiting = [r for r in self.h.store.referrals()
                       if r.referrer == gp.user_id and r.waiting_for_photos(self.h.now, self.h.policy.photo_window)]
            self.intent[f"!dm/{eid}"] = ("only", waiting[0].referral_id if len(waiting) == 1 else None)
        self.run(
            self._handle(
                E.ImageReceived(eid, gp, self.h.now, data, "x.jpg", "image/jpeg", f"!dm/{eid}", E.DirectChat(gp.user_id),
                                caption=caption, in_reply_to=in_reply_to)
            )
        )

    @precondition(lambda self: self.referrals)
    @rule(data=st.data(), gp=st.sampled_from([GP, GP, GP2]), kind=st.sampled_from(["plain", "face"]))
    def image_with_caption(self, data, gp, kind):
        rid = data.draw(st.sampled_from(self.referrals))
        self._send_image(gp, kind, caption=f"{rid.lower()} second view", named=rid)

    @precondition(lambda self: self.h.dm_events)
    @rule(data=st.data(), kind=st.sampled_from(["plain", "face"]))
    def image_as_reply(self, data, kind):
        dm_event = data.draw(st.sampled_from(sorted(self.h.dm_events)))
        action = self.h.dm_events[dm_event]
        gp = GP if getattr(action, "user_id", None) == GP.user_id or getattr(getattr(action, "to", None), "user_id", None) == GP.user_id else GP2
        named = action.referral_id
        if named is None:
            self._send_image(gp, kind, in_reply_to=dm_event)
        else:
            self._send_image(gp, kind, in_reply_to=dm_event, named=named)

    @precondition(lambda self: self.referrals)
    @rule(data=st.data(), gp=st.sampled_from([GP, GP2]))
    def photo_command(self, data, gp):
        rid = data.draw(st.sampled_from(self.referrals))
        held = [p for p in self.h.store.unassigned() if p.referrer == gp.user_id]
        ref = self.h.store.referral(rid)
        for photo in held:  # only ever to the named referral (or nowhere)
            if ref.referrer == gp.user_id:
                self.intent[photo.upload_ref] = ("named", rid)
        self.run(self._handle(self._cmd(gp, f"!photo {rid}")))

    @precondition(lambda self: self.referrals)
    @rule(data=st.data(), cmd=st.sampled_from(["!blur", "!discard", "!cancel", "!export", "!status"]))
    def gp_command(self, data, cmd):
        rid = data.draw(st.sampled_from(self.referrals))
        self.run(self._handle(self._cmd(GP, f"{cmd} {rid}")))

    @precondition(lambda self: self.consents)
    @rule(data=st.data())
    def withdraw(self, data):
        cid = data.draw(st.sampled_from(self.consents))
        self.run(self._handle(self._cmd(GP, f"!withdraw {cid}")))

    @precondition(lambda self: self.referrals)
    @rule(data=st.data(), who=st.sampled_from([DERM, DERM, NOT_ROSTER]),
          what=st.sampled_from(["chat", "chat", "!opinion looks benign", "!morephotos closer please",
                                "!addendum also this", "!ask any bleeding?"]))
    def specialist(self, data, who, what):
        rid = data.draw(st.sampled_from(self.referrals))
        place = E.SpecialtyThread("dermatology", None, f"$root-{rid}")
        words = STRANGER_WORDS if who is NOT_ROSTER else "how long has it been there?"
        if what == "chat":
            self.run(self._handle(E.ThreadActivity(self.h.eid("t"), who, self.h.now, place, text=words)))
        else:
            text = what if who is not NOT_ROSTER else what.split()[0] + " " + STRANGER_WORDS
            self.run(self._handle(self._cmd(who, text, place)))

    @precondition(lambda self: self.h.dm_events)
    @rule(data=st.data())
    def gp_answers(self, data):
        dm_event = data.draw(st.sampled_from(sorted(self.h.dm_events)))
        self.run(self._handle(E.CommandReceived(self.h.eid("r"), GP, self.h.now, "about three months",
                                                E.DirectChat(GP.user_id), in_reply_to=dm_event)))

    def _posted(self):
        return [r.referral_id for r in self.h.store.referrals() if r.state in (ReferralState.POSTED, ReferralState.DISCUSSED)]

    @precondition(lambda self: self._posted())
    @rule(data=st.data())
    def opinion_on_posted(self, data):
        rid = data.draw(st.sampled_from(self._posted()))
        place = E.SpecialtyThread("dermatology", None, f"$root-{rid}")
        self.run(self._handle(self._cmd(DERM, "!opinion benign, no action", place)))
        assert self.h.store.referral(rid).state is ReferralState.OPINION_GIVEN

    @rule(n=st.integers(1, 200), fail=st.sampled_from([False, False, False, True]))
    def transport(self, n, fail):
        """Execute up to n pending actions; the room may refuse posts."""
        self.run(self._transport(n, fail))

    async def _transport(self, n, fail):
        h = self.h
        for entry in (await h.store.pending_actions())[:n]:
            a = entry.action
            fb = None
            if fail and isinstance(a, (A.PostThreadRoot, A.PostImage)):
                if isinstance(a, A.PostThreadRoot):
                    self.root_failures[a.referral_id] = self.root_failures.get(a.referral_id, 0) + 1
                fb = E.ActionFailed(f"done:{a.key}", h.now, a.key, type(a).__name__, "Room not encrypted.", a.referral_id)
            elif isinstance(a, A.PostImage) and await h.store.vault_get(a.image_id) is None:
                fb = E.ActionFailed(f"done:{a.key}", h.now, a.key, "PostImage", "Image gone.", a.referral_id, image_id=a.image_id)
            else:
                data = await h.store.vault_get(a.image_id) if isinstance(a, (A.SendPreview, A.PostImage)) else None
                if isinstance(a, A.SendPreview) and data is not None:
                    self.previewed[a.image_id] = data
                if isinstance(a, A.PostImage) and a.image_id in self.previewed:
                    assert data == self.previewed[a.image_id], "posted bytes differ from the preview"
                fb = h._execute(a)
            if fb is not None:
                await self._handle(fb)
            await h.store.complete_action(entry.outbox_id)

    @rule(hours=st.integers(1, 30))
    def time_passes(self, hours):
        self.h.advance(hours=hours)
        self.run(self._handle(E.Tick(at=self.h.now)))
        assert all(p.destroy_at > self.h.now for p in self.h.store.unassigned()), "a due held photo survived a tick"

    @precondition(lambda self: self.handled)
    @rule(data=st.data())
    def replay(self, data):
        event = data.draw(st.sampled_from(self.handled))
        if isinstance(event, E.Tick):
            return
        before = (len(self.h.store.all_actions), len(self.h.store.audit))
        acts = self.run(self.h.workflow.handle(event))
        assert acts == [] and (len(self.h.store.all_actions), len(self.h.store.audit)) == before

    @precondition(lambda self: len(self.handled) > 12)
    @rule()
    def settle_after_lifetime(self):
        """Jump past every deadline, tick and drain: nothing may be left in the chat."""
        pol = self.h.policy
        # each !morephotos moved a deadline on by the extension
        asked = sum(1 for e in self.h.store.audit if e.action == "photos.requested")
        self.h.advance(seconds=int((pol.max_lifetime + pol.grace_period + asked * pol.more_photos_extension)
                                   .total_seconds()) + 1)
        self.run(self._settle())
        assert self.h.chat == {}, "images left in the chat after max lifetime"
        for ref in self.h.store.referrals():
            assert ref.state is ReferralState.CLOSED, (ref.referral_id, ref.state)
        assert self.h.store.unassigned() == [], "a held photo outlived its time"
        assert self.h.previews == {}, "a preview outlived its photo"

    async def _settle(self):
        await self._handle(E.Tick(at=self.h.now))
        for _ in range(20):
            if not await self.h.store.pending_actions():
                break
            await self._transport(100, False)
            await self._handle(E.Tick(at=self.h.now))

    # ------------------------------------------------------------------ invariants
    @invariant()
    def chat_matches_state(self):
        # whatever is visible in the chat belongs to a referral the bot still tracks as in chat
        for room_event, image_id in self.h.chat.items():
            owner = [r for r in self.h.store.referrals() if r.image(image_id)]
            assert owner, room_event
            assert owner[0].image(image_id).state.in_chat or owner[0].image(image_id).state.name == "DISCARDED"

    @invariant()
    def a_preview_lives_only_while_its_photo_is_held_or_on_its_way(self):
        removing = {e.action.image_id for e in self.run(self.h.store.pending_actions())
                    if isinstance(e.action, A.RemovePreview)}
        for preview in self.h.previews.values():
            item = self.h.store.referral(preview.referral_id).image(preview.image_id)
            if item.state not in (ImageState.HELD, ImageState.WAITING, ImageState.POSTING):
                assert item.image_id in removing, f"preview of a {item.state.value} image left in the chat"

    @invariant()
    def withdrawn_consent_leaves_no_vault_copy(self):
        for ref in self.h.store.referrals():
            consent = self.h.store.consent(ref.consent_id)
            if consent.withdrawn:
                assert not {i.image_id for i in ref.images} & self.h.store.vault_ids()

    @invariant()
    def held_photos_are_in_the_vault_until_destroyed(self):
        for photo in self.h.store.unassigned():
            assert photo.photo_id in self.h.store.vault_ids()

    @invariant()
    def processed_events_are_marked(self):
        for event in self.handled[-3:]:
            if not isinstance(event, E.Tick):
                assert self.h.store.is_processed(event.event_id)


TestWorkflowMachine = WorkflowMachine.TestCase
TestWorkflowMachine.settings = settings(
    # REFERRAL_BOT_DEEP=1 for a long run; the default keeps the handlers suite in seconds
    max_examples=600 if os.environ.get("REFERRAL_BOT_DEEP") else 40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
