"""The lifecycle state machine on its own: the ALLOWED table is what the functions
enforce, illegal inputs raise a plain-language IllegalTransition, and the
main paths give the right states and actions."""
import dataclasses
from datetime import timedelta

import pytest

from handlers import actions as A
from handlers import lifecycle as lc
from handlers.commands import parse_command
from handlers.consent import record_consent
from handlers.model import ImageItem, ImageState, ReferralState
from handlers.patientref import PatientRefHasher

from .helpers import GP, SECRET, T0, policy

POLICY = policy()
CONSENT = record_consent(
    parse_command(
        "!consent patient=9434765919 by=patient adult=yes purposes=care identifiable=no notes=yes specialties=dermatology"
    ),
    consent_id="C-LIFE01",
    actor=GP,
    at=T0,
    hasher=PatientRefHasher(SECRET),
    policy=POLICY,
)


def fresh():
    ref, _ = lc.open_referral(
        referral_id="R-LIFE01",
        consent=CONSENT,
        referrer=GP.user_id,
        practice="Riverside Surgery",
        specialty="dermatology",
        question="q",
        at=T0,
        policy=POLICY,
    )
    return ref


def item(n=1, state=ImageState.WAITING):
    return ImageItem(
        image_id=f"I-{n:06d}",
        referral_id="R-LIFE01",
        filename=f"R-LIFE01-{n}.jpg",
        media_type="image/jpeg",
        received_at=T0,
        retention_until=T0 + timedelta(days=90),
        upload_ref=f"up{n}",
        state=state,
    )


def posted():
    ref, _ = lc.add_image(fresh(), item(), consent=CONSENT, at=T0, actor=GP.user_id)
    ref, _ = lc.root_posted(ref, room_event_id="$root", consent=CONSENT, at=T0)
    ref, _ = lc.image_posted(ref, image_id="I-000001", room_event_id="$img1", media_uri="mxc://a/1", at=T0)
    return ref


def in_state(state: ReferralState):
    ref = posted()
    if state is ReferralState.OPENED:
        return fresh()
    if state is ReferralState.IMAGES_RECEIVED:
        return lc.add_image(fresh(), item(), consent=CONSENT, at=T0, actor=GP.user_id)[0]
    if state is ReferralState.POSTED:
        return ref
    if state is ReferralState.DISCUSSED:
        return lc.discussed(ref, at=T0, actor="@derm:example.org")[0]
    ref = lc.give_opinion(ref, by="@derm:example.org", text="fine", at=T0, policy=POLICY)[0]
    if state is ReferralState.OPINION_GIVEN:
        return ref
    ref = lc.tick(ref, at=T0 + POLICY.grace_period, policy=POLICY)[0]
    if state is ReferralState.IMAGES_EXPIRED:
        return ref
    return lc.images_removed(ref, image_ids=("I-000001",), at=T0 + POLICY.grace_period, media_deleted=True)[0]


@pytest.mark.parametrize("state", list(ReferralState))
def test_fixture_states(state):
    assert in_state(state).state is state


CALLS = {
    lc.Input.ADD_IMAGE: lambda r: lc.add_image(r, item(9), consent=CONSENT, at=T0, actor=GP.user_id),
    lc.Input.OPINION: lambda r: lc.give_opinion(r, by="@derm:example.org", text="x", at=T0, policy=POLICY),
    lc.Input.CANCEL: lambda r: lc.cancel(r, at=T0, actor=GP.user_id),
    lc.Input.WITHDRAW: lambda r: lc.withdraw(r, at=T0, actor=GP.user_id),
    lc.Input.DISCUSS: lambda r: lc.discussed(r, at=T0, actor="@derm:example.org"),
}


@pytest.mark.parametrize("state", list(ReferralState))
@pytest.mark.parametrize("inp", list(CALLS))
def test_allowed_table_is_enforced(state, inp):
    ref = in_state(state)
    if state in lc.ALLOWED[inp]:
        new, eff = CALLS[inp](ref)
        assert new.referral_id == ref.referral_id
    else:
        with pytest.raises(lc.IllegalTransition) as exc:
            CALLS[inp](ref)
        msg = str(exc.value)
        assert "R-LIFE01" in msg and "\n" not in msg and exc.value.state is state


@pytest.mark.parametrize(
    "state, inp, words",
    [
        (ReferralState.OPENED, lc.Input.OPINION, "No image"),
        (ReferralState.OPINION_GIVEN, lc.Input.OPINION, "already been given"),
        (ReferralState.OPINION_GIVEN, lc.Input.ADD_IMAGE, "no more images"),
        (ReferralState.CLOSED, lc.Input.CANCEL, "is closed"),
        (ReferralState.IMAGES_EXPIRED, lc.Input.CANCEL, "closing"),
    ],
)
def test_illegal_messages_are_plain(state, inp, words):
    with pytest.raises(lc.IllegalTransition, match=words):
        CALLS[inp](in_state(state))


def test_thread_root_requested_at_open_and_images_wait_for_it():
    ref, eff = lc.open_referral(referral_id="R-LIFE01", consent=CONSENT, referrer=GP.user_id,
                                practice="Riverside Surgery", specialty="dermatology",
                                question="Itchy plaque?", at=T0, policy=POLICY)
    (root,) = eff.actions
    assert isinstance(root, A.PostThreadRoot) and ref.root_requested
    assert "Itchy plaque?" in root.text and "photos follow" in root.text
    ref, eff = lc.add_image(ref, item(1), consent=CONSENT, at=T0, actor=GP.user_id)
    assert eff.actions == []  # root already requested: the image waits for it
    ref, eff = lc.add_image(ref, item(2), consent=CONSENT, at=T0, actor=GP.user_id)
    assert eff.actions == []
    ref, eff = lc.root_posted(ref, room_event_id="$root", consent=CONSENT, at=T0)
    assert [a.image_id for a in eff.actions] == ["I-000001", "I-000002"]
    ref2, eff2 = lc.root_posted(ref, room_event_id="$root", consent=CONSENT, at=T0)
    assert eff2.actions == [] and ref2 == ref  # duplicate feedback


def test_a_failed_root_is_requested_again_by_the_next_image():
    ref, _ = lc.post_failed(fresh(), at=T0, root=True)
    assert not ref.root_requested
    ref, eff = lc.add_image(ref, item(1), consent=CONSENT, at=T0, actor=GP.user_id)
    assert [type(a) for a in eff.actions] == [A.PostThreadRoot]
    ref, eff = lc.root_posted(ref, room_event_id="$root", consent=CONSENT, at=T0)
    assert [a.image_id for a in eff.actions] == ["I-000001"]


def test_withdrawn_consent_stops_waiting_images_at_root_time():
    ref, _ = lc.add_image(fresh(), item(1), consent=CONSENT, at=T0, actor=GP.user_id)
    withdrawn = dataclasses.replace(CONSENT, withdrawn_at=T0)
    ref, eff = lc.root_posted(ref, room_event_id="$root", consent=withdrawn, at=T0)
    assert not any(isinstance(a, A.PostImage) for a in eff.actions)
    assert ref.images[0].state is ImageState.DISCARDED and eff.shred == ["I-000001"]


def test_grace_period_then_removal_then_closed():
    ref = in_state(ReferralState.OPINION_GIVEN)
    assert ref.next_due_at() == T0 + POLICY.grace_period
    same, eff = lc.tick(ref, at=T0 + POLICY.grace_period - timedelta(seconds=1), policy=POLICY)
    assert same == ref and eff.actions == []
    ref, eff = lc.tick(ref, at=T0 + POLICY.grace_period, policy=POLICY)
    (rm,) = eff.actions
    assert isinstance(rm, A.RemoveImages) and rm.images[0].room_event_id == "$img1" and rm.images[0].media_uri == "mxc://a/1"
    assert ref.state is ReferralState.IMAGES_EXPIRED
    ref, _ = lc.images_removed(ref, image_ids=("I-000001",), at=T0, media_deleted=False)
    assert ref.state is ReferralState.CLOSED


def test_late_image_post_after_close_is_removed_at_once():
    ref, _ = lc.add_image(fresh(), item(1), consent=CONSENT, at=T0, actor=GP.user_id)
    ref, _ = lc.root_posted(ref, room_event_id="$root", consent=CONSENT, at=T0)  # PostImage in flight
    ref, _ = lc.cancel(ref, at=T0, actor=GP.user_id)
    assert ref.state is ReferralState.IMAGES_EXPIRED  # waits for the in-flight post
    ref, eff = lc.image_posted(ref, image_id="I-000001", room_event_id="$late", media_uri="mxc://late", at=T0)
    assert [type(a) for a in eff.actions] == [A.RemoveImages]
    ref, _ = lc.images_removed(ref, image_ids=("I-000001",), at=T0, media_deleted=True)
    assert ref.state is ReferralState.CLOSED


def test_reminder_then_expiry_timeline():
    ref = posted()
    assert ref.reminder_at == T0 + POLICY.max_lifetime - POLICY.reminder_lead
    ref, eff = lc.tick(ref, at=ref.reminder_at, policy=POLICY)
    assert ref.reminder_sent and {type(a) for a in eff.actions} == {A.Notify, A.Reply}
    ref, eff = lc.tick(ref, at=ref.reminder_at, policy=POLICY)
    assert eff.actions == []
    ref, eff = lc.tick(ref, at=ref.expires_at, policy=POLICY)
    assert ref.state is ReferralState.IMAGES_EXPIRED and any(isinstance(a, A.RemoveImages) for a in eff.actions)
    note = next(a for a in eff.actions if isinstance(a, A.Reply))
    assert "expired without an opinion; its images are removed" in note.text


def test_withdrawal_of_a_thread_without_images_says_so():
    ref, _ = lc.root_posted(fresh(), room_event_id="$root", consent=CONSENT, at=T0)
    ref, eff = lc.withdraw(ref, at=T0, actor=GP.user_id)
    (note,) = [a for a in eff.actions if isinstance(a, A.Reply)]
    assert ref.state is ReferralState.CLOSED and note.text.endswith("was withdrawn; the referral is closed.")


def test_expiry_of_a_thread_without_images_says_so():
    # the thread opens with the referral, so it may expire before any photo was shared
    ref, _ = lc.root_posted(fresh(), room_event_id="$root", consent=CONSENT, at=T0)
    ref, eff = lc.tick(ref, at=ref.expires_at, policy=POLICY)
    assert ref.state is ReferralState.CLOSED
    assert not any(isinstance(a, A.RemoveImages) for a in eff.actions)
    (note,) = [a for a in eff.actions if isinstance(a, A.Reply)]
    (told,) = [a for a in eff.actions if isinstance(a, A.Notify)]
    assert note.text.endswith("expired without an opinion; no image of it was shared.")
    assert "no image of it was shared" in told.text and "images are removed" not in told.text


def test_referral_round_trips_through_json():
    from handlers.model import Referral

    ref = in_state(ReferralState.IMAGES_EXPIRED)
    assert Referral.from_dict(ref.to_dict()) == ref


def test_actions_round_trip_through_json():
    ref = posted()
    _, eff = lc.cancel(ref, at=T0, actor=GP.user_id)
    for action in eff.actions:
        assert A.action_from_dict(action.to_dict()) == action
    with pytest.raises(ValueError):
        A.action_from_dict({"type": "LaunchMissiles"})


def test_reprs_are_safe_for_logs():
    ref = dataclasses.replace(in_state(ReferralState.OPINION_GIVEN), question="Mrs Smith's mole")
    consent = dataclasses.replace(CONSENT, best_interests_statement="private words")
    note = A.Notify(key="k", user_id="@gp:example.org", text="Opinion: melanoma, Mrs Smith")
    for obj in (ref, consent, note):
        text = repr(obj)
        for secret in ("Smith", "melanoma", "private words", "fine", "hmac-sha256"):
            assert secret not in text, (secret, text)
