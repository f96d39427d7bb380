"""Filing into the record (issue 13), in the sans-I/O core: when it is requested, what
retention does before and after, retries and warnings, withdrawal, the patient reference
and the audit of who was in the room. The sinks themselves: tests/filing/."""
from __future__ import annotations

import json

from handlers import actions as A
from handlers.model import ReferralState
from handlers.patientref import PATIENT_REF_MEDIA_TYPE, patient_ref_vault_id

from .helpers import (
    CONSENT_OK,
    DERM,
    GP,
    Harness,
    consent_id_from,
    jpeg_with_metadata,
    policy,
    referral_id_from,
    reply_text,
)

NHS = "9434765919"


def thread(rid: str):
    from handlers.events import SpecialtyThread

    return SpecialtyThread("dermatology", rid)


async def opened(h: Harness, consent: str = CONSENT_OK) -> tuple[str, str]:
    cid = consent_id_from(await h.say(GP, consent))
    rid = referral_id_from(await h.say(GP, f"!refer derm {cid} Pigmented lesion, grown over 3 months"))
    await h.drain()
    return cid, rid


def filing_harness(**kw) -> Harness:
    return Harness(policy=policy(filing_enabled=True, **kw))


def actions_of(h: Harness, kind):
    return [a for a in h.executed if isinstance(a, kind)]


async def test_opinion_files_the_record_and_retention_waits_for_it():
    h = filing_harness()
    _cid, rid = await opened(h, CONSENT_OK + " retention=10d")
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    acts = await h.say(DERM, "!opinion Seborrhoeic keratosis.", place=thread(rid))
    assert [a.reason for a in acts if isinstance(a, A.FileRecord)] == ["closed"]
    assert "I am filing the record" in reply_text(acts)
    await h.drain()
    ref = h.store.referral(rid)
    assert ref.filed_version == ref.filing_version == 1 and ref.filed_to == ("inbox",)
    assert "record.filed" in [e.action for e in h.store.audit]
    h.advance(days=2)
    await h.tick()
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.CLOSED
    assert len(h.store.image_vault_ids()) == 1  # filed, but kept until its retention ends
    h.advance(days=9)
    await h.tick()
    assert h.store.image_vault_ids() == set()
    purge = [a for a in await h.store.pending_actions() if isinstance(a.action, A.PurgeFiledCopies)]
    assert [p.action.reason for p in purge] == ["retention"]


async def test_unfiled_images_outlive_retention_with_retries_and_warnings():
    h = filing_harness()
    _cid, rid = await opened(h, CONSENT_OK + " retention=10d")
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    h.fail_filing = "the PACS did not answer."
    await h.say(DERM, "!opinion fine", place=thread(rid))
    await h.drain()
    ref = h.store.referral(rid)
    assert ref.awaiting_filing and ref.filing_failures == 1 and ref.filing_retry_at is not None
    gp_notes = [a.text for a in actions_of(h, A.Notify) if "could not file" in a.text]
    assert len(gp_notes) == 1 and "the PACS did not answer." in gp_notes[0] and "administrator" in gp_notes[0]
    # retries back off: 1 min, 2 min, 4 min ... and the GP is not told again each time
    delays = []
    for _ in range(4):
        before = h.now
        h.now = h.store.referral(rid).filing_retry_at
        delays.append((h.now - before).total_seconds())
        await h.tick()
        await h.drain()
    assert delays == [60, 120, 240, 480]
    assert len([a for a in actions_of(h, A.Notify) if "could not file" in a.text]) == 1
    assert {a.skip for a in actions_of(h, A.FileRecord)} == {()}
    # retention near, then ended: warnings, and the image is NOT destroyed
    h.advance(days=4)
    await h.tick()
    await h.drain()
    h.advance(days=7)
    await h.tick()
    await h.drain()
    warnings = [a.text for a in actions_of(h, A.Notify) if "is not filed yet" in a.text]
    assert len(warnings) == 2 and "ends at" in warnings[0] and "has ended" in warnings[1]
    assert len(h.store.image_vault_ids()) == 1
    assert [e.details.get("outcome") for e in h.store.audit if e.action == "record.retention_warning"] == ["near", "ended"]
    # the sink comes back: filed, the GP hears it, and retention then destroys the copy
    h.fail_filing = None
    h.now = h.store.referral(rid).filing_retry_at
    await h.tick()
    await h.drain()
    assert any("It had failed before" in a.text for a in actions_of(h, A.Notify))
    assert not h.store.referral(rid).awaiting_filing
    h.advance(minutes=1)
    await h.tick()
    assert h.store.image_vault_ids() == set()


async def test_export_during_a_failure_answers_the_gp_in_place():
    h = filing_harness()
    _cid, rid = await opened(h)
    h.fail_filing = "the practice inbox folder is full."
    acts = await h.say(GP, f"!export {rid}")
    assert "Filing" in reply_text(acts)
    done = await h.drain()
    reply = [a for a in done if isinstance(a, A.Reply) and "could not file" in a.text]
    assert reply and "the practice inbox folder is full." in reply[0].text


async def test_cancel_and_expiry_file_the_record():
    h = filing_harness()
    _cid, rid = await opened(h)
    await h.say(GP, f"!cancel {rid}")
    await h.drain()
    assert [(a.referral_id, a.reason) for a in h.filed] == [(rid, "closed")]
    _cid2, rid2 = await opened(h)
    h.advance(days=8)
    await h.tick()
    await h.drain()
    assert (rid2, "closed") in [(a.referral_id, a.reason) for a in h.filed]


async def test_withdrawal_deletes_left_copies_then_files_the_notice_without_images():
    h = filing_harness()
    cid, rid = await opened(h)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    await h.say(DERM, "!opinion fine", place=thread(rid))
    await h.drain()
    assert h.store.referral(rid).filed_version == 1
    acts = await h.say(GP, f"!withdraw {cid}")
    kinds = [type(a).__name__ for a in acts if isinstance(a, (A.PurgeFiledCopies, A.FileRecord))]
    assert kinds == ["PurgeFiledCopies", "FileRecord"]  # old copies go first, then the notice
    purge = next(a for a in acts if isinstance(a, A.PurgeFiledCopies))
    assert purge.before_version == 2 and purge.reason == "withdrawn"
    assert h.store.vault_ids() == set()  # images AND the patient reference, at once
    await h.drain()
    ref = h.store.referral(rid)
    assert ref.filed_version == 2 and [a.reason for a in h.filed] == ["closed", "withdrawn"]
    actions = [e.action for e in h.store.audit]
    assert "record.copies_deleted" in actions and "patient_ref.shredded" in actions


async def test_patient_reference_kept_in_the_vault_not_in_audit_or_outbox():
    h = filing_harness()
    cid, rid = await opened(h)
    vid = patient_ref_vault_id(cid)
    assert await h.store.vault_get(vid) == NHS.encode()
    assert h.store._state.vault[vid][1] == PATIENT_REF_MEDIA_TYPE
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    await h.say(DERM, "!opinion fine", place=thread(rid))
    await h.drain()
    audit = json.dumps([e.to_dict() for e in h.store.audit])
    outbox = json.dumps([e.action.to_dict() for e in h.store.all_actions])
    assert NHS not in audit and NHS not in outbox
    assert NHS not in repr(h.store.consent(cid))


async def test_patient_reference_goes_at_the_end_of_the_record_retention():
    h = filing_harness()
    cid, rid = await opened(h, CONSENT_OK + " retention=10d")
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    h.fail_filing = "down."
    await h.say(DERM, "!opinion fine", place=thread(rid))
    await h.drain()
    h.advance(days=11)  # the consent's retention is over, but the referral is unfiled
    await h.tick()
    assert await h.store.vault_get(patient_ref_vault_id(cid)) is not None
    h.fail_filing = None
    await h.drain()  # the retry that tick queued now succeeds
    h.advance(minutes=1)
    await h.tick()  # filed: the image goes (its retention is over)
    h.advance(minutes=2)
    await h.tick()  # and with nothing left to file, the reference too
    assert h.store.vault_ids() == set()
    assert "patient_ref.shredded" in [e.action for e in h.store.audit]
    text = reply_text(await h.say(GP, f"!refer derm {cid} another lesion"))
    assert "record a fresh consent" in text


async def test_room_members_at_each_post_are_audited():
    h = filing_harness()
    _cid, rid = await opened(h)
    h.room_members = tuple(f"@m{i:03d}:example.org" for i in range(120)) + (DERM.user_id,)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    entries = [e for e in h.store.audit if e.action == "image.room_members"]
    members = [m for e in entries for m in e.details["members"]]
    assert len(entries) == 3 and sorted(members) == sorted(h.room_members)
    assert all(e.details["count"] == 121 for e in entries)
    # and every author in the thread, not only the first
    from handlers.events import ThreadActivity

    for n in range(2):
        await h.workflow.handle(ThreadActivity(h.eid("t"), DERM, h.now, thread(rid)))
    assert len([e for e in h.store.audit if e.action == "thread.discussed"]) == 2
