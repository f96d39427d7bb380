"""Logs never carry access tokens, patient references, consent free text or image bytes.

Two checks: (1) plant every kind of secret in log calls of every shape (args, f-strings,
exceptions, bytes) and scan the JSON lines; (2) run the whole Telegram flow with DEBUG
logging for every library (httpx logs request URLs, which contain the bot token) and scan
every line for the planted secrets.
"""
from __future__ import annotations

import io
import json
import logging
from datetime import timedelta

import pytest

from bot.matrix.photo import make_photo
from bot.metrics import configure_logging, redact
from tests.telegram.fakebotapi import FakeBotAPI
from tests.telegram.world import DERM_CHAT, DERM_TG, GP_TG, World

TG_TOKEN = "7012345678:AAHf3kVx9Q2mLw8ZpR4tYc6Ns1Bd0EgJiKu"
MATRIX_TOKEN = "syt_cmVmZXJyYWwtYm90_kQwErTyUiOpAsDfGhJkL_3x9Z2b"
NHS = "943 476 5919"
NHS_COMPACT = "9434765919"
HOSPITAL_NO = "RXH-00412233"
STATEMENT = "Mother says the rash started after the holiday in Crete"
PATIENT_HASH = "5f2c0e7b9a1d4c3e8f6a2b0d9c7e5a3f1b8d6c4e2a0f9e7d5c3b1a9f8e6d4c2b"
QUESTION = "Spreading ring-shaped rash on the left forearm, tinea or discoid eczema?"


def _lines(stream: io.StringIO) -> list[str]:
    lines = [l for l in stream.getvalue().splitlines() if l.strip()]
    for line in lines:
        json.loads(line)  # every line is one JSON object
    return lines


@pytest.fixture
def captured():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    redactor = configure_logging("DEBUG", "json", stream=stream)
    try:
        yield stream, redactor
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_planted_secrets_never_reach_a_log_line(captured):
    stream, redactor = captured
    redactor.add_secret(HOSPITAL_NO)  # a configured secret with no recognisable shape
    log = logging.getLogger("referral_bot.test")
    jpeg = make_photo(64, 48)
    log.info("GET https://api.telegram.org/bot%s/getUpdates", TG_TOKEN)
    log.info("token=%s and Authorization: Bearer %s", TG_TOKEN, MATRIX_TOKEN)
    log.warning(f"request failed: https://matrix.example.org/_matrix/client/v3/sync?access_token={MATRIX_TOKEN}")
    log.info("received text %r", f"!consent patient={NHS_COMPACT} by=parent statement=\"{STATEMENT}\" notes=yes")
    log.info("patient %s / %s, hash %s, ref %s", NHS, NHS_COMPACT, PATIENT_HASH, HOSPITAL_NO)
    log.info("upload %s", jpeg)
    log.info("upload repr %r", jpeg[:400])
    log.debug("raw %s", __import__("base64").b64encode(jpeg).decode())
    try:
        raise ValueError(f"cannot parse statement={STATEMENT!r} for patient {NHS}")
    except ValueError:
        log.exception("workflow failed with token %s", TG_TOKEN)
    lines = _lines(stream)
    assert len([l for l in lines if '"referral_bot.test"' in l]) == 9
    text = "\n".join(lines)
    for secret in (TG_TOKEN, MATRIX_TOKEN, NHS, NHS_COMPACT, STATEMENT, "Crete", PATIENT_HASH, HOSPITAL_NO,
                   "\\xff\\xd8", "JFIF", "/9j/"):
        assert secret not in text, f"{secret!r} leaked into the logs"
    # and the logs are still useful
    assert "getUpdates" in text and "workflow failed" in text and "ValueError" in text
    assert "bytes>" in text


def test_redact_keeps_ordinary_text():
    plain = "referral R-7K3QX9 opened; 2 images posted to dermatology, 3 actions pending"
    assert redact(plain) == plain


async def test_whole_telegram_flow_logs_nothing_secret(captured, tmp_path):
    stream, redactor = captured
    api = FakeBotAPI(token=TG_TOKEN)
    await api.start()
    world = await World.create(api, tmp_path, allow_images=True)
    redactor.add_secret(TG_TOKEN)
    try:
        photo = make_photo(640, 480)
        reply = await world.gp_says(
            f"!consent patient={NHS_COMPACT} by=patient adult=yes specialties=dermatology purposes=care "
            f"identifiable=yes notes=yes "
            f"statement=\"{STATEMENT}\"")
        cid = reply.split("Consent ", 1)[1].split(" ", 1)[0]
        await world.gp_says(f"!refer dermatology {cid} {QUESTION}")
        api.user_sends_document(GP_TG, photo, "IMG_2041.jpg", "image/jpeg")
        await world.step()
        topic = world.topic_of(next(iter(
            n.split(" ")[0] for n in api.chats[DERM_CHAT].topics.values())))
        api.user_sends_text(DERM_TG, "!opinion Tinea; terbinafine.", chat_id=DERM_CHAT, thread_id=topic)
        await world.step()
        await world.advance(timedelta(hours=7))
        assert world.images_in_group() == []  # the flow really ran to the end
    finally:
        await world.close()
        await api.stop()
    lines = _lines(stream)
    assert any("httpx" in l for l in lines), "library DEBUG/INFO logs were not captured"
    text = "\n".join(lines)
    for secret in (TG_TOKEN, TG_TOKEN.split(":")[1], NHS_COMPACT, STATEMENT, QUESTION, "IMG_2041",
                   "\\xff\\xd8", "JFIF"):
        assert secret not in text, f"{secret!r} leaked into the logs"
