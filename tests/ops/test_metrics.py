"""Scrape /metrics and /healthz over HTTP while a real Telegram flow runs."""
from __future__ import annotations

import time
from datetime import timedelta

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from bot.matrix.photo import make_photo
from bot.metrics import Metrics, MetricsServer
from tests.telegram.world import GP_TG, World


async def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def _health(port: int) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
            return resp.status, await resp.json()


async def test_metrics_follow_the_flow_and_healthz_reports_lag(fake_api, tmp_path):
    clock = [None]
    world = await World.create(fake_api, tmp_path, allow_images=True)
    metrics = Metrics(world.store, clock=lambda: world.now[0], overdue_after=timedelta(minutes=2),
                      max_sync_lag=60)
    world.transport.metrics = metrics
    metrics.add_transport(world.transport)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    port = await server.start()
    try:
        # a refused consent (workflow, from the audit trail) and a refused stranger (transport)
        await world.gp_says("!consent patient=9434765919 by=patient purposes=care identifiable=yes notes=no")
        cid = await world.consent()
        await world.refer(cid)
        fake_api.user_sends_photo(GP_TG, make_photo(640, 480))
        fake_api.user_sends_text(3001, "hello", chat_id=3001)
        await world.step()

        v = await _scrape(port)
        assert v[("referral_bot_referrals_open", ())] == 1
        assert v[("referral_bot_images_live_in_chat", ())] == 1
        assert v[("referral_bot_expiries_overdue", ())] == 0
        assert v[("referral_bot_outbox_pending", ())] == 0
        assert v[("referral_bot_referrals", (("state", "posted"),))] == 1
        workflow_refusals = {k[1]: n for k, n in v.items() if k[0] == "referral_bot_refusals_total"}
        assert any(dict(labels)["source"] == "workflow" and dict(labels)["reason"].startswith("consent:")
                   for labels in workflow_refusals)
        assert workflow_refusals[(("reason", "not_listed"), ("source", "telegram"))] == 1
        lag = v[("referral_bot_sync_lag_seconds", (("transport", "telegram"),))]
        assert 0 <= lag < 5
        assert v[("referral_bot_next_due_timestamp_seconds", ())] > world.now[0].timestamp()
        status, body = await _health(port)
        assert status == 200 and body == {"status": "ok", "problems": []}

        # time passes without a tick: the expiry is overdue and health says so
        world.now[0] += timedelta(hours=31)
        v = await _scrape(port)
        assert v[("referral_bot_expiries_overdue", ())] == 1
        status, body = await _health(port)
        assert status == 503 and "overdue" in " ".join(body["problems"])
        # the tick catches up: images deleted, nothing overdue
        await world.transport.tick()
        v = await _scrape(port)
        assert v[("referral_bot_expiries_overdue", ())] == 0
        assert v[("referral_bot_images_live_in_chat", ())] == 0
        assert v[("referral_bot_referrals_open", ())] == 0

        # the transport stops hearing from Telegram: sync lag makes /healthz fail
        world.transport.last_sync_at = time.monotonic() - 600
        status, body = await _health(port)
        assert status == 503 and any("telegram" in p for p in body["problems"])
        v = await _scrape(port)
        assert v[("referral_bot_sync_lag_seconds", (("transport", "telegram"),))] >= 600
    finally:
        await server.stop()
        await world.close()


async def test_store_failure_is_a_503_not_a_crash(fake_api, tmp_path):
    world = await World.create(fake_api, tmp_path)
    metrics = Metrics(world.store)
    server = MetricsServer(metrics, "127.0.0.1", 0)
    port = await server.start()
    try:
        await world.store.close()  # the database goes away
        status, body = await _health(port)
        assert status == 503 and body["problems"] == [body["problems"][0]] and "store" in body["problems"][0]
        v = await _scrape(port)
        assert v[("referral_bot_scrape_errors_total", ())] >= 1
    finally:
        await server.stop()
        await world.transport.stop()
