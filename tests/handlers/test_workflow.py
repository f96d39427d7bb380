"""The workflow end to end through the in-memory store, with the real sanitizer,
real JPEGs (Pillow + a public-domain portrait) and exiftool to check the result.
A scripted transport (tests/handlers/helpers.py) executes the outbox and reports
the feedback events a real transport would."""
import json
import shutil
import subprocess
from datetime import timedelta

import pytest

from handlers import actions as A
from handlers import events as E
from handlers.model import Actor, CloseReason, ImageState, ReferralState
from handlers.policy import Policy

from .helpers import (
    CONSENT_OK,
    DERM,
    DERM2,
    GP,
    GP2,
    NOT_ROSTER,
    OTHER_GP,
    Harness,
    consent_id_from,
    face_jpeg,
    jpeg_with_metadata,
    policy,
    referral_id_from,
    reply_text,
)

CONSENT_IDENT = (
    "!consent patient=9434765919 by=patient adult=yes purposes=care identifiable=yes notes=yes specialties=dermatology"
)


def thread(rid: str) -> E.SpecialtyThread:
    # as the Matrix transport gives it: only the thread root event id
    return E.SpecialtyThread("dermatology", None, f"$root-{rid}")


async def open_referral(h: Harness, consent_text: str = CONSENT_OK, actor=GP, question="Is this a BCC?"):
    cid = consent_id_from(await h.say(actor, consent_text))
    rid = referral_id_from(await h.say(actor, f"!refer derm {cid} {question}"))
    return cid, rid


def exif_of(data: bytes, tmp_path) -> dict:
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    out = subprocess.run(["exiftool", "-json", "-a", "-G1", str(p)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)[0]


async def test_happy_path_consent_refer_image_opinion_removal(tmp_path):
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    acts = await h.say(GP, f"!refer derm {cid} Is this a BCC?")
    rid = referral_id_from(acts)
    # the thread root (question, no patient identifiers) is requested when the referral opens
    root = next(a for a in acts if isinstance(a, A.PostThreadRoot))
    assert "Is this a BCC?" in root.text and "9434765919" not in root.text
    upload = jpeg_with_metadata()
    acts = await h.send_image(GP, upload)
    text = reply_text(acts)
    assert "GPS location" in text and "camera serial number" in text and f"{rid}-1.jpg" in text
    assert any(isinstance(a, A.RedactOriginalUpload) for a in acts)
    assert not any(isinstance(a, (A.PostImage, A.PostThreadRoot)) for a in acts)  # waits for the root

    await h.drain()
    ref = h.store.referral(rid)
    assert ref.state is ReferralState.POSTED and ref.thread_root_event_id == f"$root-{rid}"
    posted = [a for a in h.executed if isinstance(a, A.PostImage)]
    assert len(posted) == 1 and posted[0].filename == f"{rid}-1.jpg" and posted[0].thread_root_event_id == f"$root-{rid}"
    assert len(h.chat) == 1

    # the vault copy is clean, checked by exiftool
    clean = await h.store.vault_get(posted[0].image_id)
    assert clean and clean != upload
    if shutil.which("exiftool"):
        tags = exif_of(clean, tmp_path)
        assert not any("GPS" in k for k in tags), tags
        assert "SERIAL123456" not in json.dumps(tags) and "PhoneMaker" not in json.dumps(tags)

    await h.workflow.handle(E.ThreadActivity(h.eid(), DERM2, h.now, thread(rid)))
    assert h.store.referral(rid).state is ReferralState.DISCUSSED

    h.advance(hours=2)
    acts = await h.say(DERM, "!opinion Seborrhoeic keratosis. Reassure; no referral needed.", place=thread(rid))
    note = next(a for a in acts if isinstance(a, A.Notify))
    assert note.user_id == GP.user_id and "Seborrhoeic keratosis" in note.text
    assert any(isinstance(a, A.Reply) and isinstance(a.to, E.SpecialtyThread) for a in acts)
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.OPINION_GIVEN

    h.advance(hours=23)
    assert await h.tick() == []  # still in the grace period
    h.advance(hours=1, seconds=1)
    acts = await h.tick()
    removal = [a for a in acts if isinstance(a, A.RemoveImages)]
    assert len(removal) == 1 and removal[0].images[0].room_event_id == f"$img-{posted[0].image_id}"
    assert "removed" in removal[0].placeholder
    await h.drain()
    ref = h.store.referral(rid)
    assert ref.state is ReferralState.CLOSED and ref.close_reason is CloseReason.OPINION
    assert h.chat == {}
    assert await h.tick() == []

    # the audit trail has who/what/when, never patient data or clinical text
    blob = json.dumps([e.to_dict() for e in h.store.audit])
    for secret in ("9434765919", "BCC", "keratosis", "hmac-sha256"):
        assert secret not in blob
    actions_seen = [e.action for e in h.store.audit]
    for expected in ("consent.recorded", "referral.opened", "image.accepted", "image.posted", "opinion.given", "image.removed", "referral.closed"):
        assert expected in actions_seen


async def test_same_event_is_handled_once():
    h = Harness()
    first = await h.say(GP, CONSENT_OK, event_id="$dup")
    again = await h.say(GP, CONSENT_OK, event_id="$dup")
    assert first and again == []
    assert len([e for e in h.store.audit if e.action == "consent.recorded"]) == 1
    cid = consent_id_from(first)
    rid = referral_id_from(await h.say(GP, f"!refer derm {cid} rash"))
    img = jpeg_with_metadata()
    await h.send_image(GP, img, event_id="$img-dup")
    assert await h.send_image(GP, img, event_id="$img-dup") == []
    assert len(h.store.referral(rid).images) == 1
    # feedback events are deduplicated too
    await h.drain()
    removed_before = len(h.store.all_actions)
    fb = E.ImagePosted("done:again", h.now, rid, h.store.referral(rid).images[0].image_id, "$x", "mxc://x")
    await h.workflow.handle(fb)
    await h.workflow.handle(fb)
    assert len(h.store.all_actions) == removed_before


@pytest.mark.parametrize(
    "data, words",
    [
        (b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n", "PDF"),
        (b"", "empty"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, ""),  # truncated JPEG
        (b"just some text, not an image at all", ""),
    ],
)
async def test_non_images_are_refused_plainly(data, words):
    h = Harness()
    _cid, rid = await open_referral(h)
    acts = await h.send_image(GP, data)
    text = reply_text(acts)
    assert words.lower() in text.lower()
    assert "removed your upload" in text and "Traceback" not in text
    assert any(isinstance(a, A.RedactOriginalUpload) for a in acts)
    assert not any(isinstance(a, (A.PostImage, A.PostThreadRoot)) for a in acts)
    assert h.store.image_vault_ids() == set() and h.store.referral(rid).state is ReferralState.OPENED


async def test_image_without_open_referral_is_refused_and_redacted():
    h = Harness()
    acts = await h.send_image(GP, jpeg_with_metadata())
    assert "no open referral" in reply_text(acts)
    assert any(isinstance(a, A.RedactOriginalUpload) for a in acts)


async def test_face_without_identifiable_consent_is_held_then_sent_blurred():
    h = Harness()
    _cid, rid = await open_referral(h)
    acts = await h.send_image(GP, face_jpeg())
    text = reply_text(acts)
    assert "face" in text and f"!blur {rid}" in text and f"!discard {rid}" in text
    assert not any(isinstance(a, (A.PostImage, A.PostThreadRoot)) for a in acts)
    await h.drain()
    assert h.chat == {}  # nothing posted
    ref = h.store.referral(rid)
    (item,) = ref.images
    assert item.state is ImageState.HELD and item.faces >= 1 and item.faces_blurred
    assert "held" in reply_text(await h.say(GP, f"!status {rid}"))

    acts = await h.say(GP, f"!blur {rid}")
    assert "blurred" in reply_text(acts)
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.POSTED and len(h.chat) == 1
    # what was posted is the blurred copy (the only copy kept)
    from handlers.sanitizer import sanitize

    posted = await h.store.vault_get(item.image_id)
    assert posted is not None and sanitize(posted).faces == 0


async def test_face_held_then_discarded_is_shredded():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, face_jpeg())
    (item,) = h.store.referral(rid).images
    assert item.image_id in h.store.image_vault_ids()
    assert "Destroyed the held photo" in reply_text(await h.say(GP, f"!discard {rid}"))
    assert item.image_id not in h.store.image_vault_ids()
    await h.drain()
    assert h.chat == {} and h.store.referral(rid).images[0].state is ImageState.DISCARDED
    assert "no held image" in reply_text(await h.say(GP, f"!blur {rid}"))


async def test_face_with_identifiable_consent_is_posted():
    h = Harness()
    _cid, rid = await open_referral(h, CONSENT_IDENT)
    acts = await h.send_image(GP, face_jpeg())
    assert "covers identifiable" in reply_text(acts)
    await h.drain()
    assert len(h.chat) == 1 and h.store.referral(rid).images[0].faces_blurred is False


async def test_opinion_rules():
    h = Harness()
    _cid, rid = await open_referral(h)
    # before any image is posted
    assert "No image" in reply_text(await h.say(DERM, "!opinion benign", place=E.SpecialtyThread("dermatology", rid)))
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    # not on the roster
    assert "roster" in reply_text(await h.say(NOT_ROSTER, "!opinion benign", place=thread(rid)))
    # not in the thread
    assert "thread" in reply_text(await h.say(DERM, "!opinion benign", place=E.SpecialtyThread("dermatology")))
    assert "thread" in reply_text(await h.say(DERM, "!opinion benign"))
    # wrong id for this thread
    text = reply_text(await h.say(DERM, "!opinion R-ABCDEF benign", place=thread(rid)))
    assert f"This thread is {rid}, not the referral you named" in text and "ABCDEF" not in text
    assert h.store.referral(rid).state is ReferralState.POSTED
    # the real one, then a second one
    await h.say(DERM, "!opinion benign naevus", place=thread(rid))
    assert h.store.referral(rid).opinion == "benign naevus"
    assert "already" in reply_text(await h.say(DERM2, "!opinion actually...", place=thread(rid)))
    # images can't be added after the opinion (the referral no longer takes any)
    assert "no open referral" in reply_text(await h.send_image(GP, jpeg_with_metadata(seed=3)))
    assert len(h.store.referral(rid).images) == 1


async def test_withdrawal_reaches_every_image_already_shared():
    h = Harness()
    cid, rid1 = await open_referral(h, question="lesion A")
    await h.send_image(GP, jpeg_with_metadata(seed=1))
    await h.send_image(GP, jpeg_with_metadata(seed=2))
    await h.drain()
    rid2 = referral_id_from(await h.say(GP2, f"!refer dermatology {cid} lesion B"))  # same practice, other GP
    await h.send_image(GP2, jpeg_with_metadata(seed=3))
    await h.drain()
    await h.say(DERM, "!opinion benign", place=thread(rid1))  # rid1 is in its grace period
    assert len(h.chat) == 3 and len(h.store.image_vault_ids()) == 3

    acts = await h.say(GP, f"!withdraw {cid}")
    text = reply_text(acts)
    assert "withdrawn" in text and "2 referrals" in text and "3 images" in text and "3 stored copies destroyed" in text
    removals = [a for a in acts if isinstance(a, A.RemoveImages)]
    assert sorted(len(r.images) for r in removals) == [1, 2]
    assert any(isinstance(a, A.Notify) and a.user_id == GP2.user_id for a in acts)  # the other GP is told
    assert h.store.vault_ids() == set()  # withdrawal beats retention: shredded at once
    await h.drain()
    assert h.chat == {}
    for rid in (rid1, rid2):
        ref = h.store.referral(rid)
        assert ref.state is ReferralState.CLOSED and ref.close_reason is CloseReason.WITHDRAWN
    # and the consent covers nothing new
    assert "withdrawn" in reply_text(await h.say(GP, f"!refer derm {cid} again"))
    assert "already withdrawn" in reply_text(await h.say(GP, f"!withdraw {cid}"))


async def test_withdrawal_while_a_post_is_in_flight():
    h = Harness()
    cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    # a second image: PostImage is enqueued but not executed yet
    await h.send_image(GP, jpeg_with_metadata(seed=9))
    assert h.store.referral(rid).images[1].state is ImageState.POSTING
    await h.say(GP, f"!withdraw {cid}")
    assert h.store.image_vault_ids() == set()
    # the transport now runs the stale PostImage: the vault copy is gone, so it fails
    for entry in await h.store.pending_actions():
        if isinstance(entry.action, A.PostImage):
            data = await h.store.vault_get(entry.action.image_id)
            assert data is None
            await h.workflow.handle(
                E.ActionFailed(f"done:{entry.action.key}", h.now, entry.action.key, "PostImage", "The image is no longer available.", rid)
            )
            await h.store.complete_action(entry.outbox_id)
    await h.drain()
    assert h.chat == {} and h.store.referral(rid).state is ReferralState.CLOSED


async def test_withdrawal_only_by_the_recording_practice():
    h = Harness()
    cid, _rid = await open_referral(h)
    assert "another practice" in reply_text(await h.say(OTHER_GP, f"!withdraw {cid}"))
    assert h.store.consent(cid).withdrawn_at is None


async def test_consent_of_another_practice_cannot_be_used():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    text = reply_text(await h.say(OTHER_GP, f"!refer derm {cid} rash"))
    assert "another practice" in text and not h.store.referrals()


async def test_max_lifetime_reminder_then_expiry():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    h.advance(days=1, hours=8)  # Tue 17:00: 16 working hours without an opinion, escalated (issue 12)
    assert any(isinstance(a, A.Notify) and "No opinion yet" in a.text for a in await h.tick())
    h.advance(days=4, hours=15)  # 5 days 23 hours after opening
    assert await h.tick() == []
    h.advance(hours=1)  # 6 days: reminder (1 day before the 7-day lifetime)
    acts = await h.tick()
    assert any(isinstance(a, A.Notify) and "no opinion yet" in a.text for a in acts)
    assert any(isinstance(a, A.Reply) and "Reminder" in a.text for a in acts)
    assert await h.tick() == []  # not twice
    h.advance(days=1)
    acts = await h.tick()
    assert any(isinstance(a, A.RemoveImages) for a in acts)
    assert any(isinstance(a, A.Notify) and "expired" in a.text for a in acts)
    await h.drain()
    ref = h.store.referral(rid)
    assert ref.state is ReferralState.CLOSED and ref.close_reason is CloseReason.EXPIRED and h.chat == {}
    assert "closed" in reply_text(await h.say(DERM, "!opinion late", place=thread(rid)))


async def test_expiry_after_downtime_runs_at_first_tick():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    h.advance(days=30)  # the bot was down: one tick does everything due
    acts = await h.tick()
    assert any(isinstance(a, A.RemoveImages) for a in acts)
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.CLOSED


async def test_age_out_between_referral_and_image():
    h = Harness()
    # the child turns 16 on 2026-03-05 (T0 is 2026-03-02)
    cid = consent_id_from(
        await h.say(GP, "!consent patient=4000000004 by=parent dob=2010-03-05 purposes=care identifiable=no notes=yes "
            'specialties=derm statement="Parent wants eczema reviewed; child too young to decide; photos guide treatment"')
    )
    rid = referral_id_from(await h.say(GP, f"!refer derm {cid} eczema"))
    h.advance(days=3)
    text = reply_text(await h.send_image(GP, jpeg_with_metadata()))
    assert "reached 16" in text and "by=patient" in text
    assert h.store.image_vault_ids() == set() and h.store.referral(rid).images == ()
    assert "reached 16" in reply_text(await h.say(GP, f"!refer derm {cid} eczema again"))


async def test_vault_retention_shreds_after_closing():
    h = Harness()
    _cid, rid = await open_referral(h, CONSENT_OK + " retention=10d")
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    await h.say(DERM, "!opinion fine", place=thread(rid))
    h.advance(days=2)
    await h.tick()
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.CLOSED
    assert len(h.store.image_vault_ids()) == 1  # kept for the retention period
    h.advance(days=8)
    await h.tick()
    assert h.store.image_vault_ids() == set()
    assert h.store.referral(rid).next_due_at() is None
    assert "vault.retention_ended" in [e.action for e in h.store.audit]


async def test_export_refiles_and_destroys_nothing():
    """Issue 13: !export re-files on demand, says where it went, and never destroys the
    vault copy (before this change an export before the opinion lost the images)."""
    h = Harness(policy=policy(filing_enabled=True))
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    acts = await h.say(GP, f"!export {rid}")  # before the opinion
    assert any(isinstance(a, A.FileRecord) and a.referral_id == rid and a.reason == "export" for a in acts)
    assert "Nothing is deleted" in reply_text(acts)
    assert "not one of your" in reply_text(await h.say(OTHER_GP, f"!export {rid}"))
    done = await h.drain()
    assert any(isinstance(a, A.Reply) and a.text == f"{rid} filed to the practice document inbox." for a in done)
    assert len(h.store.image_vault_ids()) == 1
    # the opinion later: filed again (a new version), the image still there for it
    await h.say(DERM, "!opinion fine", place=thread(rid))
    await h.drain()
    assert [f.version for f in h.filed] == [1, 2]
    assert len(h.store.image_vault_ids()) == 1
    assert all("/" not in a.text for a in done if isinstance(a, A.Reply))  # never a server path


async def test_export_when_filing_is_not_configured_says_so():
    h = Harness()
    _cid, rid = await open_referral(h)
    text = reply_text(await h.say(GP, f"!export {rid}"))
    assert "Filing is not set up" in text
    assert not [a for a in await h.store.pending_actions() if isinstance(a.action, A.FileRecord)]


async def test_cancel():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    assert "not one of your" in reply_text(await h.say(GP2, f"!cancel {rid}"))
    text = reply_text(await h.say(GP, f"!cancel {rid}"))
    assert "cancelled" in text and "1 image" in text
    await h.drain()
    assert h.chat == {} and h.store.referral(rid).state is ReferralState.CLOSED
    assert "closed" in reply_text(await h.say(GP, f"!cancel {rid}"))
    # someone else's referral and one that does not exist get the same answer (no existence leak)
    unknown = reply_text(await h.say(GP, "!cancel R-ZZZZZZ"))
    theirs = reply_text(await h.say(GP2, f"!cancel {rid}"))
    assert unknown.replace("R-ZZZZZZ", "<id>") == theirs.replace(rid, "<id>")


async def test_cancel_before_root_feedback_and_late_post_is_removed():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.say(GP, f"!cancel {rid}")  # thread root not posted yet: image discarded
    ref = h.store.referral(rid)
    assert ref.state is ReferralState.CLOSED and ref.images[0].state is ImageState.DISCARDED
    await h.drain()
    assert h.chat == {}  # the root was posted, but no image followed


async def test_room_refuses_post_gp_is_told_and_image_not_kept():
    h = Harness()
    _cid, rid = await open_referral(h)
    h.fail_posts = "The dermatology room is not end-to-end encrypted."
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    notes = [a for a in h.executed if isinstance(a, A.Notify)]
    assert any("not end-to-end encrypted" in n.text for n in notes)
    ref = h.store.referral(rid)
    assert ref.state is ReferralState.OPENED and ref.images[0].state is ImageState.DISCARDED
    assert h.store.image_vault_ids() == set() and h.chat == {}
    # once the room is fixed, the next image asks for the thread root again
    h.fail_posts = None
    await h.send_image(GP, jpeg_with_metadata(seed=4))
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.POSTED and len(h.chat) == 1


async def test_commands_in_the_wrong_place_and_unknown_things():
    h = Harness()
    room = E.SpecialtyThread("dermatology")
    assert "direct chat" in reply_text(await h.say(GP, CONSENT_OK, place=room))
    assert not [e for e in h.store.audit if e.action == "consent.recorded"]
    assert "!help" in reply_text(await h.say(GP, "!wibble"))
    assert "Commands start with" in reply_text(await h.say(GP, "hello bot"))
    assert "!consent" in reply_text(await h.say(GP, "!help"))
    assert "no referrals" in reply_text(await h.say(GP, "!status"))
    assert "There is no consent" in reply_text(await h.say(GP, "!refer derm C-ZZZZZZ rash"))
    assert "choose one of: dermatology, plastics" in reply_text(await h.say(GP, "!refer cardiology C-ZZZZZZ rash"))
    text = reply_text(await h.say(GP, "!consent patient=9434765919 by=parent purposes=care identifiable=no notes=yes specialties=derm"))
    assert text.startswith("Consent not recorded:") and "dob=" in text
    assert [e.details for e in h.store.audit if e.action == "consent.refused"] == [{"rule": "who.parent"}]


async def test_status_lists_and_shows():
    h = Harness()
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    text = reply_text(await h.say(GP, "!status"))
    assert rid in text and "posted" in text and "1 in the thread" in text
    assert rid in reply_text(await h.say(DERM, f"!status {rid}", place=thread(rid)))  # roster may look
    assert rid in reply_text(await h.say(DERM, "!status", place=thread(rid)))  # the thread's referral
    assert "!status R-" in reply_text(await h.say(DERM, "!status", place=E.SpecialtyThread("dermatology")))
    assert "not one of your" in reply_text(await h.say(OTHER_GP, f"!status {rid}"))


async def test_max_images_per_referral():
    h = Harness()
    h.workflow.policy = Policy(**{**vars(h.policy), "max_images_per_referral": 2})
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata(seed=1))
    await h.send_image(GP, jpeg_with_metadata(seed=2))
    assert "the most allowed" in reply_text(await h.send_image(GP, jpeg_with_metadata(seed=3)))
    assert len(h.store.referral(rid).images) == 2


class _BrokenStore:
    """A real MemoryStore whose outbox write fails once (e.g. disk full)."""

    def __init__(self, inner):
        self.inner = inner
        self.fail = True

    def transaction(self):
        store = self

        class _Tx:
            async def __aenter__(self_inner):
                self_inner.cm = store.inner.transaction()
                tx = await self_inner.cm.__aenter__()
                orig = tx.enqueue

                async def enqueue(actions):
                    if store.fail:
                        store.fail = False
                        raise OSError("disk full")
                    return await orig(actions)

                tx.enqueue = enqueue
                return tx

            async def __aexit__(self_inner, *exc):
                return await self_inner.cm.__aexit__(*exc)

        return _Tx()

    def __getattr__(self, name):
        return getattr(self.inner, name)


async def test_failure_mid_transaction_changes_nothing_and_says_sorry():
    h = Harness()
    broken = _BrokenStore(h.store)
    h.workflow.store = broken
    acts = await h.say(GP, CONSENT_OK, event_id="$boom")
    assert "something went wrong" in reply_text(acts) and "nothing was changed" in reply_text(acts)
    # the consent was NOT recorded (rolled back with the failed outbox write)
    assert not [e for e in h.store.audit if e.action == "consent.recorded"]
    assert h.store.is_processed("$boom")
    assert await h.say(GP, CONSENT_OK, event_id="$boom") == []
    # a new message works
    assert "recorded" in reply_text(await h.say(GP, CONSENT_OK))


async def test_export_failure_is_reported_and_keeps_the_vault_copy():
    h = Harness(policy=policy(filing_enabled=True))
    _cid, rid = await open_referral(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    acts = await h.say(GP, f"!export {rid}")
    export = next(a for a in acts if isinstance(a, A.FileRecord))
    acts = await h.workflow.handle(
        E.ActionFailed(f"done:{export.key}", h.now, export.key, "FileRecord", "Filing is not configured on this bot.", rid)
    )
    assert any(isinstance(a, A.Notify) and "did not complete" in a.text and a.user_id == GP.user_id for a in acts)
    assert len(h.store.image_vault_ids()) == 1 and h.store.referral(rid).exported_at is None


async def test_photo_never_goes_to_the_latest_referral_by_guess():
    """Issue 10: with several referrals waiting for photos, the newest one used to get the
    photo (patient A's photo under patient B's referral). Now it is held and the GP asked."""
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rids = [referral_id_from(await h.say(GP, f"!refer derm {cid} lesion number {i}")) for i in range(5)]
    acts = await h.send_image(GP, jpeg_with_metadata())
    assert [len(h.store.referral(r).images) for r in rids] == [0, 0, 0, 0, 0]
    assert not any(isinstance(a, A.PostImage) for a in acts)
    assert "Which referral is this photo for" in reply_text(acts)


async def test_a_specialist_may_not_record_consent_or_refer_unless_also_a_referrer():
    """Roles are enforced (security review, issue 9, finding 14): a specialist with a
    practice is still not a referrer."""
    h = Harness()
    specialist = Actor("@derm:example.org", practice="Riverside Surgery", may_refer=False)
    text = reply_text(await h.say(specialist, CONSENT_OK))
    assert "Only clinicians listed as referrers" in text and "Consent" not in text.split(".")[0]
    cid = consent_id_from(await h.say(GP, CONSENT_OK))  # a GP of the same practice
    text = reply_text(await h.say(specialist, f"!refer dermatology {cid} Rash?"))
    assert "Only clinicians listed as referrers" in text and "R-" not in text
    assert h.store.referrals() == []
    rules = [(e.action, e.details.get("rule")) for e in h.store.audit if e.action.endswith(".refused")]
    assert rules == [("consent.refused", "role"), ("referral.refused", "role")]
    both = Actor("@derm:example.org", practice="Riverside Surgery", may_refer=True)
    assert "opened" in reply_text(await h.say(both, f"!refer dermatology {cid} Rash?"))


async def test_a_clock_stepped_back_never_sends_a_photo_to_an_older_referral():
    """Finding 10: the target used to be picked by wall-clock opened_at."""
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    first = referral_id_from(await h.say(GP, f"!refer derm {cid} first patient's lesion"))
    h.advance(hours=-1)  # NTP steps the clock back an hour
    second = referral_id_from(await h.say(GP, f"!refer derm {cid} second patient's lesion"))
    await h.send_image(GP, jpeg_with_metadata())
    # never to the older referral (whether it goes to the newer one or is held and the GP
    # asked is the photo-targeting rule's business, not the clock's)
    assert h.store.referral(first).images == ()
    status = reply_text(await h.say(GP, "!status"))
    assert status.index(first) < status.index(second)  # listed in the order they were opened


# ---------------------------------------------------------------- issue 12: consents read back, episodes
async def test_consent_reply_echoes_only_the_last_three_digits():
    h = Harness()
    text = reply_text(await h.say(
        GP, "!consent patient=943-476-5919 by=patient adult=yes purposes=care identifiable=no notes=yes specialties=derm"))
    assert "NHS no. ending 919" in text and "9434765919" not in text and "943-476" not in text
    assert "specialties: dermatology" in text and "new referrals until 2026-04-01" in text
    bad = reply_text(await h.say(GP, CONSENT_OK.replace("9434765919", "9434765918")))
    assert "not a valid NHS number" in bad and "9434765918" not in bad
    refused = [e.details for e in h.store.audit if e.action == "consent.refused"]
    assert refused == [{"rule": "patient.format"}]


async def test_consent_show_reads_back_to_the_practice_only():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK + " sex=female"))
    mine = reply_text(await h.say(GP, f"!consent show {cid.lower()}"))
    assert cid in mine and "NHS no. ending 919" in mine and "sex female" in mine and "adult" in mine
    assert "9434765919" not in mine and "hmac" not in mine
    colleague = reply_text(await h.say(GP2, f"!consent {cid}"))  # same practice, other GP
    assert "NHS no. ending 919" in colleague
    other = reply_text(await h.say(OTHER_GP, f"!consent show {cid}"))
    assert "another practice" in other and "919" not in other
    assert "direct chat" in reply_text(await h.say(GP, f"!consent show {cid}", place=E.SpecialtyThread("dermatology")))
    missing = reply_text(await h.say(GP, "!consent show C-ZZZZZZ"))
    assert "no consent with that id" in missing and "ZZZZZZ" not in missing  # never echoed (issue 9)
    shown = [(e.actor, e.action, e.consent_id) for e in h.store.audit if e.action.startswith("consent.show")]
    assert shown == [(GP.user_id, "consent.shown", cid), (GP2.user_id, "consent.shown", cid),
                     (OTHER_GP.user_id, "consent.show_refused", cid)]


async def test_a_referral_after_the_episode_or_to_another_specialty_is_refused():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    text = reply_text(await h.say(GP, f"!refer plastics {cid} scar revision?"))
    assert text.startswith("Referral not opened:") and "specialties=plastics" in text
    rid = referral_id_from(await h.say(GP, f"!refer derm {cid} rash"))
    h.advance(days=30)
    text = reply_text(await h.say(GP, f"!refer derm {cid} same rash, new question"))
    assert "one episode" in text and "!consent" in text
    assert [e.details["rule"] for e in h.store.audit if e.action == "referral.refused"] == ["specialty", "episode"]
    # the referral opened inside the window still takes its photos
    assert "on its way" in reply_text(await h.send_image(GP, jpeg_with_metadata()))
    assert h.store.referral(rid).images
