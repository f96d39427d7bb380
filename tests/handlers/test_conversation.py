"""Issue 10 in the workflow: a photo reaches only the referral it was meant for, the thread
is a two-way conversation, what needs a person alerts them, and !morephotos / !addendum."""
from __future__ import annotations

import re

import pytest

from handlers import actions as A
from handlers import events as E
from handlers.model import ImageState, ReferralState

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
    jpeg_with_metadata,
    referral_id_from,
    reply_text,
    face_jpeg,
)

QUESTIONS = [
    "Pigmented lesion left forearm, grown over 3 months",
    "Leg ulcer right shin not healing after 6 weeks",
    "Scalp rash with scaling in a child, tinea?",
]


async def open_referrals(h: Harness, n: int, actor=GP, consent: str = CONSENT_OK) -> list[str]:
    cid = consent_id_from(await h.say(actor, consent))
    rids = [referral_id_from(await h.say(actor, f"!refer dermatology {cid} {QUESTIONS[i]}")) for i in range(n)]
    await h.drain()  # thread roots posted, "send the photos" messages delivered
    return rids


def images_of(h: Harness, rid: str) -> list:
    return [i for i in h.store.referral(rid).images if i.state is not ImageState.DISCARDED]


def posted_in(h: Harness, rid: str) -> list[A.PostImage]:
    return [a for a in h.executed if isinstance(a, A.PostImage) and a.referral_id == rid]


# ------------------------------------------------------------------ part 1: which referral
async def test_one_referral_waiting_gets_the_photo_straight_away():
    h = Harness()
    (rid,) = await open_referrals(h, 1)
    text = reply_text(await h.send_image(GP, jpeg_with_metadata()))
    await h.drain()
    assert len(posted_in(h, rid)) == 1 and f"on its way to dermatology ({rid}" in text
    audit = [e for e in h.store.audit if e.action == "image.accepted"]
    assert audit[-1].details["routed_by"] == "only_waiting"


@pytest.mark.parametrize("n", [2, 3])
async def test_ambiguous_photo_is_held_and_lands_only_where_the_gp_says(n):
    h = Harness()
    rids = await open_referrals(h, n)
    acts = await h.send_image(GP, jpeg_with_metadata())
    text = reply_text(acts)
    # nothing posted, nothing attached; the question names every referral with its first words
    assert not any(isinstance(a, A.PostImage) for a in acts)
    assert all(images_of(h, r) == [] for r in rids)
    assert "Which referral is this photo for:" in text
    for rid, q in zip(rids, QUESTIONS):
        assert f"{rid} ({' '.join(q.split()[:3])}" in text and f"!photo {rid}" in text
    assert re.search(r"destroy it at \d\d:\d\d GMT", text)
    (held,) = h.store.unassigned()
    assert held.photo_id in h.store.vault_ids()  # kept, clean, encrypted in the vault
    # the GP names the middle one: it lands there and nowhere else
    target = rids[1]
    await h.say(GP, f"!photo {target}")
    await h.drain()
    assert [len(images_of(h, r)) for r in rids] == [1 if r == target else 0 for r in rids]
    (post,) = [a for a in h.executed if isinstance(a, A.PostImage)]
    assert post.referral_id == target and post.thread_root_event_id == f"$root-{target}"
    assert h.store.unassigned() == []
    assert [e.details["routed_by"] for e in h.store.audit if e.action == "image.accepted"] == ["photo_command"]


@pytest.mark.parametrize("n", [2, 3])
async def test_caption_names_the_referral(n):
    h = Harness()
    rids = await open_referrals(h, n)
    target = rids[0]  # the oldest: the one the old rule would never have picked
    await h.send_image(GP, jpeg_with_metadata(), caption=f"close-up {target.lower()} with ruler")
    await h.drain()
    assert [len(posted_in(h, r)) for r in rids] == [1] + [0] * (n - 1)
    assert h.store.unassigned() == []


async def test_caption_without_an_id_is_not_read_as_one():
    h = Harness()
    rids = await open_referrals(h, 2)
    # "reddish" would be R-EDD1SH if ids were read without their dash
    text = reply_text(await h.send_image(GP, jpeg_with_metadata(), caption="reddish patch, second view"))
    assert "Which referral" in text and all(images_of(h, r) == [] for r in rids)


async def test_caption_naming_two_referrals_or_a_wrong_one_is_refused_not_redirected():
    h = Harness()
    a, b = await open_referrals(h, 2)
    acts = await h.send_image(GP, jpeg_with_metadata(), caption=f"{a} and {b}")
    assert "one referral" in reply_text(acts) and any(isinstance(x, A.RedactOriginalUpload) for x in acts)
    # another GP's referral and an unknown id read the same (no existence leak)
    (theirs,) = await open_referrals(h, 1, actor=OTHER_GP)
    t1 = reply_text(await h.send_image(GP, jpeg_with_metadata(), caption=theirs))
    t2 = reply_text(await h.send_image(GP, jpeg_with_metadata(), caption="R-ZZZZZZ"))
    assert t1.replace(theirs, "<id>") == t2.replace("R-ZZZZZZ", "<id>") and "not one of your referrals" in t1
    await h.drain()
    assert not any(isinstance(x, A.PostImage) for x in h.executed)
    assert h.store.unassigned() == [] and images_of(h, a) == images_of(h, b) == []


async def test_caption_naming_a_referral_that_has_its_opinion_is_refused():
    h = Harness()
    a, b = await open_referrals(h, 2)
    await h.send_image(GP, jpeg_with_metadata(), caption=a)
    await h.drain()
    await h.in_thread(DERM, a, "!opinion Benign.")
    await h.drain()
    text = reply_text(await h.send_image(GP, jpeg_with_metadata(), caption=a))
    assert "takes no more images" in text and len(images_of(h, a)) == 1 and images_of(h, b) == []


@pytest.mark.parametrize("n", [2, 3])
async def test_a_reply_to_the_bots_message_names_the_referral(n):
    h = Harness()
    rids = await open_referrals(h, n)
    target = rids[0]
    opened = h.dm_event_of(f"Referral {target} opened")
    await h.send_image(GP, jpeg_with_metadata(), in_reply_to=opened)
    await h.drain()
    assert [len(posted_in(h, r)) for r in rids] == [1] + [0] * (n - 1)
    assert [e.details["routed_by"] for e in h.store.audit if e.action == "image.accepted"] == ["reply"]


async def test_a_reply_to_an_unrelated_message_falls_back_to_asking():
    h = Harness()
    rids = await open_referrals(h, 2)
    text = reply_text(await h.send_image(GP, jpeg_with_metadata(), in_reply_to="$something-else"))
    assert "Which referral" in text and all(images_of(h, r) == [] for r in rids)


async def test_only_the_referral_still_waiting_gets_it_and_a_burst_is_not_split():
    h = Harness()
    (a,) = await open_referrals(h, 1)
    await h.send_image(GP, jpeg_with_metadata())  # A's photo
    await h.drain()
    # two hours later A has its photo and waits for the specialist; B is opened
    h.advance(hours=2)
    cid = h.store.referral(a).consent_id
    b = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[1]}"))
    await h.drain()
    await h.send_image(GP, jpeg_with_metadata())  # only B is waiting: straight in
    await h.drain()
    assert len(images_of(h, a)) == 1 and len(posted_in(h, b)) == 1
    # C opened a minute after B's photo: B is still in its burst, so the next photo is asked about
    h.advance(minutes=1)
    c = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[2]}"))
    await h.drain()
    text = reply_text(await h.send_image(GP, jpeg_with_metadata()))
    assert "Which referral" in text and b in text and c in text
    assert len(images_of(h, b)) == 1 and images_of(h, c) == []


async def test_a_single_open_referral_no_longer_waiting_is_asked_about_not_assumed():
    h = Harness()
    (a,) = await open_referrals(h, 1)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    h.advance(days=1)  # a day later: maybe a new patient whose referral the GP forgot to open
    text = reply_text(await h.send_image(GP, jpeg_with_metadata()))
    assert f"Is this photo for {a}" in text and len(images_of(h, a)) == 1
    await h.say(GP, f"!photo {a}")
    await h.drain()
    assert len(posted_in(h, a)) == 2


async def test_unclaimed_photo_is_destroyed_and_the_gp_told():
    h = Harness()
    rids = await open_referrals(h, 2)
    await h.send_image(GP, jpeg_with_metadata())
    (held,) = h.store.unassigned()
    h.advance(minutes=9)
    assert not [a for a in await h.tick() if isinstance(a, A.Notify)]
    h.advance(minutes=2)
    told = [a for a in await h.tick() if isinstance(a, A.Notify)]
    assert len(told) == 1 and told[0].user_id == GP.user_id and told[0].mentions == (GP.user_id,)
    assert "destroyed" in told[0].text and "nothing was sent" in told[0].text
    assert h.store.unassigned() == [] and held.photo_id not in h.store.vault_ids()
    assert any(e.action == "image.unassigned_destroyed" for e in h.store.audit)
    assert "not holding any photo" in reply_text(await h.say(GP, f"!photo {rids[0]}"))
    assert all(images_of(h, r) == [] for r in rids)


async def test_a_batch_of_held_photos_goes_together_and_can_be_discarded():
    h = Harness()
    a, b = await open_referrals(h, 2)
    await h.send_image(GP, jpeg_with_metadata(seed=1))
    h.advance(minutes=8)
    text = reply_text(await h.send_image(GP, jpeg_with_metadata(seed=2)))
    assert "holding 2 photos" in text and "sends all 2" in text
    h.advance(minutes=5)  # 13 min after the first: the batch clock restarted with the second
    await h.tick()
    assert len(h.store.unassigned()) == 2
    await h.say(GP, f"!photo {b}")
    await h.drain()
    assert len(posted_in(h, b)) == 2 and images_of(h, a) == []
    await h.send_image(GP, jpeg_with_metadata(seed=3))
    assert "destroyed" in reply_text(await h.say(GP, "!discard")) and h.store.unassigned() == []


async def test_held_photo_with_a_face_is_blurred_when_its_referral_does_not_cover_faces():
    h = Harness()
    a, b = await open_referrals(h, 2)
    await h.send_image(GP, face_jpeg())
    (held,) = h.store.unassigned()
    assert held.faces >= 1
    text = reply_text(await h.say(GP, f"!photo {a}"))
    assert "holding it (not sent)" in text and f"!blur {a}" in text
    (item,) = images_of(h, a)
    assert item.state is ImageState.HELD and item.faces_blurred
    assert held.photo_id not in h.store.vault_ids()  # only the blurred copy is kept
    await h.drain()
    assert posted_in(h, a) == []


async def test_held_photo_under_identifiable_consent_is_posted_as_is():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK.replace("identifiable=no", "identifiable=yes")))
    a = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[0]}"))
    b = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[1]}"))
    await h.drain()
    await h.send_image(GP, face_jpeg())
    await h.say(GP, f"!photo {a}")
    await h.drain()
    assert len(posted_in(h, a)) == 1 and images_of(h, b) == []


async def test_photo_command_checks():
    h = Harness()
    a, b = await open_referrals(h, 2)
    await h.send_image(GP, jpeg_with_metadata())
    # someone else's referral, an unknown one: the same refusal; the photo stays held
    (theirs,) = await open_referrals(h, 1, actor=OTHER_GP)
    t1 = reply_text(await h.say(GP, f"!photo {theirs}"))
    t2 = reply_text(await h.say(GP, "!photo R-ZZZZZZ"))
    assert t1.replace(theirs, "<id>") == t2.replace("R-ZZZZZZ", "<id>")
    assert len(h.store.unassigned()) == 1 and images_of(h, theirs) == []
    await h.say(GP, f"!cancel {a}")
    assert "closed" in reply_text(await h.say(GP, f"!photo {a}")) and len(h.store.unassigned()) == 1
    assert "direct chat" in reply_text(await h.say(DERM, f"!photo {b}", E.SpecialtyThread("dermatology")))


# ------------------------------------------------------------------ part 2: the conversation
async def started(h: Harness) -> str:
    (rid,) = await open_referrals(h, 1)
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    return rid


async def test_specialist_question_reaches_the_gp_and_the_answer_reaches_the_thread():
    h = Harness()
    rid = await started(h)
    question = "How long has it been itchy, and any bleeding?"
    acts = await h.in_thread(DERM, rid, question)
    (note,) = [a for a in acts if isinstance(a, A.Notify)]
    assert note.user_id == GP.user_id and note.mentions == (GP.user_id,) and note.referral_id == rid
    assert question in note.text and rid in note.text and DERM.display_name in note.text
    assert "Pigmented lesion" in note.text  # which patient, at a glance
    assert any(isinstance(a, A.Acknowledge) and a.event_id.startswith("$th") for a in acts)
    assert h.store.referral(rid).state is ReferralState.DISCUSSED
    await h.drain()
    # the GP answers with a Matrix reply to the relayed message
    answer = "Itchy for 2 weeks, bled once last Tuesday."
    acts = await h.reply_to(GP, h.dm_event_of(question), answer)
    (posted,) = [a for a in acts if isinstance(a, A.Reply) and isinstance(a.to, E.SpecialtyThread)]
    assert posted.to.referral_id == rid and answer in posted.text
    assert posted.text.startswith(f"The referring GP (Riverside Surgery) on {rid}")
    assert posted.mentions == (DERM.user_id,)  # the specialist who asked is alerted
    assert any(isinstance(a, A.Acknowledge) and isinstance(a.to, E.DirectChat) for a in acts)
    # and !reply R-… works the same
    acts = await h.say(GP, f"!reply {rid} Also on methotrexate.")
    assert any(isinstance(a, A.Reply) and isinstance(a.to, E.SpecialtyThread) and "methotrexate" in a.text for a in acts)
    # audited: who, when, which referral; never the text
    relays = [e for e in h.store.audit if e.action.startswith("thread.relayed")]
    assert [(e.action, e.actor, e.referral_id) for e in relays] == [
        ("thread.relayed_to_gp", DERM.user_id, rid),
        ("thread.relayed_to_thread", GP.user_id, rid),
        ("thread.relayed_to_thread", GP.user_id, rid),
    ]
    dumped = repr([e.to_dict() for e in h.store.audit])
    assert "itchy" not in dumped.lower() and "methotrexate" not in dumped and "bled" not in dumped


async def test_ask_in_a_thread_is_a_question_for_the_gp_not_a_referral():
    h = Harness()
    rid = await started(h)
    acts = await h.in_thread(DERM2, rid, "!ask Any family history of melanoma?")
    assert any(isinstance(a, A.Notify) and "family history" in a.text and DERM2.display_name in a.text for a in acts)
    assert "consent" not in h.texts(acts).lower()


async def test_the_relay_carries_only_the_roster():
    h = Harness()
    rid = await started(h)
    stranger = E.ThreadActivity("$x1", NOT_ROSTER, h.now, E.SpecialtyThread("dermatology", thread_event_id=f"$root-{rid}"),
                                text="I know this patient, she is Jane Doe")
    acts = await h.workflow.handle(stranger)
    assert not any(isinstance(a, A.Notify) for a in acts)
    assert "Not passed to the GP" in reply_text(acts)
    assert any(e.action == "thread.relay_refused" and e.actor == NOT_ROSTER.user_id for e in h.store.audit)
    # nor !reply / !morephotos / !addendum from them
    for cmd in ("!reply hello", "!morephotos closer please", "!addendum also this"):
        acts = await h.in_thread(NOT_ROSTER, rid, cmd)
        assert not any(isinstance(a, A.Notify) for a in acts) and "roster" in reply_text(acts)
    # and only the referring GP can answer into the thread
    assert "not one of your referrals" in reply_text(await h.say(GP2, f"!reply {rid} hello"))


async def test_gp_plain_text_without_a_reply_is_not_relayed_but_hinted():
    h = Harness()
    rid = await started(h)
    await h.in_thread(DERM, rid, "Any bleeding?")
    await h.drain()
    acts = await h.say(GP, "yes it bled")
    assert not any(isinstance(a, A.Reply) and isinstance(a.to, E.SpecialtyThread) for a in acts)
    assert f"!reply {rid}" in reply_text(acts)
    assert "Say which referral" in reply_text(await h.say(GP, "!reply it bled"))


async def test_more_photos_asks_the_gp_extends_the_deadline_and_the_photo_lands_in_the_same_thread():
    h = Harness()
    rid = await started(h)
    before = h.store.referral(rid).expires_at
    acts = await h.in_thread(DERM, rid, "!morephotos Close-up with a ruler, in daylight")
    (note,) = [a for a in acts if isinstance(a, A.Notify)]
    assert note.mentions == (GP.user_id,) and "ruler" in note.text and rid in note.text
    ref = h.store.referral(rid)
    assert ref.expires_at == before + h.policy.more_photos_extension and ref.more_photos_requested
    await h.drain()
    # meanwhile the GP opened another referral (waiting too): the reply names the referral
    cid = ref.consent_id
    other = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[1]}"))
    await h.drain()
    await h.send_image(GP, jpeg_with_metadata(seed=9), in_reply_to=h.dm_event_of("asks for another photo"))
    await h.drain()
    posts = posted_in(h, rid)
    assert len(posts) == 2 and {p.thread_root_event_id for p in posts} == {f"$root-{rid}"}
    assert images_of(h, other) == [] and not h.store.referral(rid).more_photos_requested
    assert any(e.action == "photos.requested" and e.details["extended_hours"] == 48 for e in h.store.audit)


async def test_more_photos_only_before_the_opinion_and_addendum_only_after():
    h = Harness()
    rid = await started(h)
    assert "no opinion yet" in reply_text(await h.in_thread(DERM, rid, "!addendum also consider X"))
    await h.in_thread(DERM, rid, "!opinion Seborrhoeic keratosis.")
    await h.drain()
    assert "no more photos" in reply_text(await h.in_thread(DERM, rid, "!morephotos another one"))
    acts = await h.in_thread(DERM2, rid, "!addendum Dermoscopy would confirm; not urgent.")
    (note,) = [a for a in acts if isinstance(a, A.Notify)]
    assert note.mentions == (GP.user_id,) and "Addendum" in note.text and "Dermoscopy" in note.text
    assert DERM2.display_name in note.text
    ref = h.store.referral(rid)
    assert [(x.by, x.text) for x in ref.addenda] == [(DERM2.user_id, "Dermoscopy would confirm; not urgent.")]
    assert "Dermoscopy" not in repr(ref) and "Dermoscopy" not in repr(acts)
    # still possible after the images are gone
    h.advance(hours=25)
    await h.tick()
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.CLOSED
    assert any(isinstance(a, A.Notify) for a in await h.in_thread(DERM, rid, "!addendum Review in 3 months."))
    # but a closed referral passes no more messages
    assert "no longer passed on" in reply_text(await h.in_thread(DERM, rid, "thanks"))


# ------------------------------------------------------------------ part 3: who is alerted
async def test_what_needs_a_person_mentions_them_and_acknowledgements_do_not():
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    acts = await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[0]}")
    (root,) = [a for a in acts if isinstance(a, A.PostThreadRoot)]
    assert root.mentions == tuple(sorted({DERM.user_id, DERM2.user_id}))  # the roster
    assert all(a.mentions == () for a in acts if isinstance(a, A.Reply))  # "opened": an acknowledgement
    rid = root.referral_id
    await h.drain()
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    acts = await h.in_thread(DERM, rid, "!opinion Benign.")
    (op,) = [a for a in acts if isinstance(a, A.Notify)]
    assert op.mentions == (GP.user_id,)
    assert all(a.mentions == () for a in acts if isinstance(a, A.Reply))
    # reminders alert both sides
    h2 = Harness()
    (r2,) = await open_referrals(h2, 1)
    h2.advance(days=6, minutes=1)
    acts = await h2.tick()
    assert [a.mentions for a in acts if isinstance(a, A.Notify)] == [(GP.user_id,)]
    assert [a.mentions for a in acts if isinstance(a, A.Reply)] == [tuple(sorted({DERM.user_id, DERM2.user_id}))]


# ------------------------------------------------------------------ part 5: !help and refusals
async def test_help_shows_the_commands_of_the_room_it_is_asked_in():
    h = Harness()
    rid = await started(h)
    dm = reply_text(await h.say(GP, "!help"))
    thread = reply_text(await h.in_thread(DERM, rid, "!help"))
    room = reply_text(await h.say(DERM, "!help", E.SpecialtyThread("dermatology")))
    assert "!consent" in dm and "!refer" in dm and "!morephotos" not in dm
    assert "!morephotos" in thread and "!addendum" in thread and "!consent" not in thread and "!refer " not in thread
    assert room == thread


async def test_refusals_about_someone_elses_referral_read_the_same_as_for_no_referral():
    h = Harness()
    rid = await started(h)
    for cmd in ("!status {}", "!cancel {}", "!export {}", "!blur {}", "!discard {}", "!photo {}", "!reply {} hi"):
        real = reply_text(await h.say(OTHER_GP, cmd.format(rid)))
        fake = reply_text(await h.say(OTHER_GP, cmd.format("R-ZZZZZZ")))
        assert real.replace(rid, "<id>") == fake.replace("R-ZZZZZZ", "<id>"), cmd


# ------------------------------------------------------------------ part 6: time
async def test_times_are_local_with_the_zone_across_the_clock_change():
    from datetime import datetime, timezone

    # opened in GMT (Fri 27 Mar 2026), expires a week later in BST (clocks go forward on 29 Mar)
    h = Harness(now=datetime(2026, 3, 27, 14, 5, tzinfo=timezone.utc))
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    text = reply_text(await h.say(GP, f"!refer dermatology {cid} {QUESTIONS[0]}"))
    assert "Fri 3 Apr 15:05 BST" in text  # 14:05 UTC is 15:05 in London in April
    rid = referral_id_from([A.Reply(to=E.DirectChat(GP.user_id), text=text)])
    assert "UTC" not in reply_text(await h.say(GP, f"!status {rid}"))
    # and an October referral expires in GMT
    h2 = Harness(now=datetime(2026, 10, 20, 14, 5, tzinfo=timezone.utc))
    cid = consent_id_from(await h2.say(GP, CONSENT_OK))
    assert "Tue 27 Oct 14:05 GMT" in reply_text(await h2.say(GP, f"!refer dermatology {cid} {QUESTIONS[0]}"))
    # the stored time stays UTC
    ref = h.store.referral(rid)
    assert ref.expires_at.utcoffset().total_seconds() == 0 and ref.expires_at.hour == 14


async def test_an_addendum_to_a_filed_record_files_it_again():
    from .helpers import policy

    h = Harness(policy=policy(filing_enabled=True))
    rid = await started(h)
    await h.in_thread(DERM, rid, "!opinion Seborrhoeic keratosis.")
    await h.drain()
    h.advance(hours=25)  # the grace period ends: images removed, the referral closes and is filed
    await h.tick()
    await h.drain()
    assert h.store.referral(rid).state is ReferralState.CLOSED
    assert [f.reason for f in h.filed] == ["closed"]
    # an addendum before closing rides with the filing on closing; after it, a new version
    await h.in_thread(DERM2, rid, "!addendum Dermoscopy would confirm; not urgent.")
    await h.drain()
    assert [f.reason for f in h.filed] == ["closed", "addendum"]
    ref = h.store.referral(rid)
    assert ref.filed_version == ref.filing_version == 2 and ref.addenda[0].text.startswith("Dermoscopy")


async def test_withdrawal_also_destroys_a_photo_held_for_a_referral_under_that_consent():
    h = Harness()
    a, b = await open_referrals(h, 2)
    await h.send_image(GP, jpeg_with_metadata())
    (held,) = h.store.unassigned()
    cid = h.store.referral(a).consent_id
    text = reply_text(await h.say(GP, f"!withdraw {cid}"))
    assert "2 stored copies destroyed" not in text and "1 stored copy destroyed" in text
    assert h.store.unassigned() == [] and held.photo_id not in h.store.vault_ids()


async def test_an_answer_carrying_an_nhs_number_or_postcode_is_not_posted_in_the_thread():
    h = Harness()
    rid = await started(h)
    await h.in_thread(DERM, rid, "Any bleeding?")
    await h.drain()
    relayed = h.dm_event_of("Any bleeding?")
    for answer in ("No bleeding. NHS 943 476 5919", "No bleeding; lives at LS1 4AP"):
        acts = await h.reply_to(GP, relayed, answer)
        assert not any(isinstance(a, A.Reply) and isinstance(a.to, E.SpecialtyThread) for a in acts)
        text = reply_text(acts)
        assert "remove" in text and "Nothing was passed on" in text and "5919" not in text and "LS1" not in text
    held = [e for e in h.store.audit if e.action == "thread.relay_refused"]
    assert [e.details["rule"] for e in held] == ["identifier", "identifier"]
    # conversation words that merely look like a name go through
    acts = await h.reply_to(GP, relayed, "Thanks Dr Skin, no bleeding.")
    assert any(isinstance(a, A.Reply) and isinstance(a.to, E.SpecialtyThread) for a in acts)


async def test_the_filed_timeline_shows_the_conversation_without_its_words():
    from bot.filing.record import load_record

    from .helpers import policy

    h = Harness(policy=policy(filing_enabled=True))
    rid = await started(h)
    await h.in_thread(DERM, rid, "Any bleeding at all?")
    await h.drain()
    await h.reply_to(GP, h.dm_event_of("Any bleeding at all?"), "None whatsoever.")
    await h.in_thread(DERM, rid, "!morephotos A close-up please")
    await h.in_thread(DERM, rid, "!opinion Benign.")
    await h.in_thread(DERM, rid, "!addendum Review in 6 months.")
    await h.drain()
    record = await load_record(h.store, rid, version=1, at=h.now)
    lines = [line for _, line in record.timeline]
    assert f"Message from {DERM.user_id} passed to the referring GP" in lines
    assert "The referring GP answered in the thread" in lines
    assert f"Another photo asked for by {DERM.user_id}" in lines and f"Addendum by {DERM.user_id}" in lines
    assert not any("bleeding" in line or "whatsoever" in line for line in lines)
    assert [a.text for a in record.addenda] == ["Review in 6 months."]


async def test_the_offer_names_each_referrals_site_so_two_lesions_can_be_told_apart():
    """One patient, two lesions, the same first words in both questions: the site the GP
    gave is what tells them apart in the "which referral" question."""
    h = Harness()
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    a = referral_id_from(await h.say(GP, f"!refer dermatology {cid} site=left forearm; Pigmented lesion, changing. Melanoma?"))
    b = referral_id_from(await h.say(GP, f"!refer dermatology {cid} site=right shoulder; Pigmented lesion, changing. Melanoma?"))
    await h.drain()
    text = reply_text(await h.send_image(GP, jpeg_with_metadata()))
    assert f"{a} (left forearm: Pigmented lesion" in text and f"{b} (right shoulder: Pigmented lesion" in text
    assert "dermatology" not in text.split("Which referral")[1]  # one specialty: not repeated
