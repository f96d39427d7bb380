"""Operations on the Matrix bot: the metrics/health endpoint, and the redacting JSON logs
over a whole referral with every library at its most talkative allowed level."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import aiohttp
import pytest

from bot.matrix.photo import make_photo
from tests.matrix import flow

pytestmark = pytest.mark.synapse

FAST = {"grace_period_seconds": 2, "max_lifetime_hours": 72, "reminder_before_hours": 12}


def _gauge(exposition: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", exposition, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


async def _scrape(port: int) -> tuple[str, int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200
            text = await r.text()
        async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
            return text, r.status, await r.json()


async def test_metrics_and_redacted_logs_over_a_whole_referral(make_world):
    from bot.metrics import configure_logging

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    redactor = configure_logging("DEBUG", "json", stream=stream)
    try:
        w = await make_world(start=False, policy=FAST)
        with open(w.config_path, "a") as fh:
            fh.write('\n[metrics]\nhost = "127.0.0.1"\nport = 0\n')
        app = await w.start_bot()
        for secret in app.secrets():
            redactor.add_secret(secret)
        await w.wait_bot_joined()
        port = app.metrics_port
        assert port

        text, status, health = await _scrape(port)
        assert status == 200 and health["status"] == "ok", health
        assert _gauge(text, "referral_bot_images_live_in_chat") == 0

        cid = await flow.consent(w)
        rid = await flow.refer(w, cid)
        up = await flow.send_photo(w, make_photo(1024, 768))
        img, clean_mxc = await flow.clean_image(w)
        text, status, _ = await _scrape(port)
        assert _gauge(text, "referral_bot_images_live_in_chat") == 1
        assert _gauge(text, "referral_bot_referrals_open") == 1
        assert _gauge(text, 'referral_bot_sync_lag_seconds') >= 0

        await w.sp.say(w.derm_room, "!opinion Benign seborrhoeic keratosis.", thread_root=img.thread_root)
        await w.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted, 20, "image redacted")
        await flow.media_gone(w, [clean_mxc, *up.mxcs])
        # the removal is recorded once the transport reports it back: give it a moment
        for _ in range(50):
            text, status, health = await _scrape(port)
            if _gauge(text, "referral_bot_images_live_in_chat") == 0:
                break
            await asyncio.sleep(0.2)
        assert _gauge(text, "referral_bot_images_live_in_chat") == 0
        assert _gauge(text, "referral_bot_referrals_open") == 0
        assert status == 200 and health["status"] == "ok"

        # a refusal shows up by reason
        await w.gp_says("!refer dermatology C-ZZZZZZ lesion?")
        text, _, _ = await _scrape(port)
        assert "referral_bot_refusals_total" in text
        secrets = ["9434765919", "melanoma", "seborrhoeic", *app.secrets(),
                   w.gp.client.access_token, w.sp.client.access_token]
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])

    lines = [ln for ln in stream.getvalue().splitlines() if ln.strip()]
    assert len(lines) > 10, "the bot logged almost nothing: the scan would prove nothing"
    for ln in lines:
        json.loads(ln)  # every line is one JSON object
    logged = "\n".join(lines).lower()
    assert rid.lower() in logged or "referral" in logged  # it did log the work...
    for secret in secrets:                                 # ...but none of these
        assert secret and secret.lower() not in logged, "a secret reached the log"
