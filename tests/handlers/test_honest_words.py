"""Honest words (issue 11 part 5): every reply that describes the face/text check says what
was checked and what was found, never that something cannot be there; the docs neither."""
from __future__ import annotations

import re
from pathlib import Path

from handlers.commands import HELP_TOPICS

from .helpers import DERM, GP, Harness, face_jpeg, jpeg_with_metadata
from .test_workflow import CONSENT_IDENT, open_referral

ROOT = Path(__file__).resolve().parents[2]

#: claims no detector can back: that nothing identifying is (or can be) in a picture
OVER_PROMISES = re.compile(
    r"will be blurred|faces? (are|is) blurred|(contains|shows|has) no (faces?|text)|"
    r"no (faces?|text) (is|are) (there|present|visible|shown)|"
    r"nothing identif|not identifiable|cannot be (seen|identified|recogni[sz]ed)|anonymi[sz]ed|"
    r"(is|are|now) de-?identified|guarantee|every bit of metadata|safe to share|free of (faces|text)",
    re.IGNORECASE)


def _all_texts(actions) -> list[str]:
    out = []
    for a in actions:
        for field in ("text", "text_without_image", "placeholder"):
            value = getattr(a, field, "")
            if value:
                out.append(value)
    return out


async def _every_check_reply() -> list[str]:
    """The bot's words wherever it speaks of the check: intake with nothing found, a face,
    a covering consent, the preview, !blur, !discard, !status, !help, the thread root."""
    texts: list[str] = []
    h = Harness()
    _cid, rid = await open_referral(h)
    texts += _all_texts(await h.send_image(GP, jpeg_with_metadata()))
    h.advance(minutes=30)
    texts += _all_texts(await h.send_image(GP, face_jpeg(), caption=rid))
    texts += _all_texts(await h.say(GP, f"!status {rid}"))
    texts += _all_texts(await h.say(GP, f"!blur {rid}"))
    texts += _all_texts(await h.drain())
    h2 = Harness()
    _cid, rid2 = await open_referral(h2)
    texts += _all_texts(await h2.send_image(GP, face_jpeg()))
    texts += _all_texts(await h2.say(GP, f"!discard {rid2}"))
    h3 = Harness()
    await open_referral(h3, CONSENT_IDENT)
    texts += _all_texts(await h3.send_image(GP, face_jpeg()))
    texts += _all_texts(await h3.drain())
    texts += _all_texts(await h3.in_thread(DERM, rid, "!help"))
    texts += [HELP_TOPICS["blur"], HELP_TOPICS["discard"]]
    return texts


async def test_replies_say_what_was_checked_and_found_never_that_nothing_is_there():
    texts = await _every_check_reply()
    joined = "\n".join(texts)
    # each outcome is worded as a check and its finding
    assert "I checked it for faces and text and found none (the check can miss some)" in joined
    assert re.search(r"I checked R-\w+-\d\.jpg for faces and text and found 1 face", joined)
    assert re.search(r"PREVIEW, not sent: R-\w+-\d\.jpg, checked for faces and text: 1 face", joined)
    assert "so I did not check it for faces or text" in joined
    assert "photos checked for faces and text; what was found is blurred" in joined  # the thread root
    for text in texts:
        assert not OVER_PROMISES.search(text), text


def test_the_docs_make_no_such_promise_either():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert len(docs) > 5
    for path in docs:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            hit = OVER_PROMISES.search(line)
            assert not hit, f"{path.name}:{n}: {hit.group(0)!r} in {line.strip()!r}"


def test_the_pattern_catches_the_old_wordings():
    """The check above would have caught what the bot used to say."""
    for old in ("faces will be blurred", "strips every bit of metadata from the image",
                "Nothing identifying may leave the bot", "the photo contains no face"):
        assert OVER_PROMISES.search(old), old
