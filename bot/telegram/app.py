"""Wiring for a Telegram deployment: config -> keys -> store -> workflow -> Telegram transport,
plus the metrics endpoint and redacting JSON logs.

The Telegram transport runs with its own config file and its own database: a store's outbox
is drained by one transport, so a config that also has a [matrix] section is refused here
(for Telegram notifications next to Matrix, see :mod:`bot.telegram.notifier`).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Callable

from bot.config import Config, ConfigError
from bot.telegram.config import TelegramConfigError, fit_policy_to_telegram, parse_telegram_config

log = logging.getLogger("referral_bot.telegram.app")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class TelegramApp:
    def __init__(self, config: Config, clock: Callable[[], datetime] = utcnow):
        self.config = config
        self.clock = clock
        if config.raw.get("matrix") is not None:
            raise ConfigError(
                "Run the Telegram transport with its own config file and database (no [matrix] section): "
                "one store's outbox serves one transport. For data-free Telegram notifications next to "
                "Matrix, see docs/telegram.md.")
        try:
            self.tg = parse_telegram_config(config.raw, config.path.parent if config.path else None,
                                            known_users=set(config.clinicians),
                                            known_specialties=set(config.specialties))
        except TelegramConfigError as exc:
            raise ConfigError(str(exc)) from None
        if self.tg is None:
            raise ConfigError("The configuration has no [telegram] section.")
        try:
            self.policy, self.policy_notes = fit_policy_to_telegram(config.policy(), self.tg.lifetimes)
        except TelegramConfigError as exc:
            raise ConfigError(str(exc)) from None
        self.store: Any = None
        self.transport: Any = None
        self.metrics_server: Any = None

    async def start(self) -> None:
        from telegram import Bot
        from telegram.request import HTTPXRequest

        from bot.app import directory_actors, open_store
        from bot.metrics import Metrics, MetricsServer, metrics_settings
        from bot.telegram.transport import TelegramSettings, TelegramTransport
        from handlers.workflow import Workflow

        for note in self.policy_notes:
            log.warning("Telegram deletes only within 48 h: %s", note)
        if not self.tg.allow_images:
            log.info("Telegram runs without allow_images: no patient data is taken over Telegram")
        from bot.app import sanitizer_pool

        self.pool = sanitizer_pool(self.config) if self.tg.allow_images else None  # no images: no sanitizing
        if self.pool is not None:
            await asyncio.to_thread(self.pool.start)
        self.store, keys = await open_store(self.config, exclusive=True)  # one bot per database
        workflow = Workflow(store=self.store, policy=self.policy, hasher=keys.patient_ref_hasher(), sanitize=self.pool)
        from bot.app import make_filer

        filer = make_filer(self.config, self.store, keys, self.clock)
        export_dir = (self.config.raw.get("telegram") or {}).get("export_dir")
        if export_dir:  # files the old !export left there are deleted on withdrawal and retention
            from pathlib import Path

            filer.legacy_export_dir = Path(export_dir)
        # the poll loop and the tick loop send concurrently: PTB's default pool has 1 connection
        bot = Bot(self.tg.token, base_url=self.tg.base_url, base_file_url=self.tg.base_file_url,
                  request=HTTPXRequest(connection_pool_size=8, media_write_timeout=60.0))
        metrics = None
        settings = metrics_settings(self.config.raw)
        if settings is not None:
            metrics = Metrics(self.store, clock=self.clock,
                              max_sync_lag=max(120.0, 3 * self.tg.poll_timeout_seconds))
        self.transport = TelegramTransport(
            bot, self.store, workflow,
            TelegramSettings(config=self.tg, directory=directory_actors(self.config),
                             specialty_titles={k: (s.title or k.capitalize())
                                               for k, s in self.config.specialties.items()},
                             rosters={k: self.config.roster(k) for k in self.config.specialties}),
            clock=self.clock, metrics=metrics, filer=filer)
        await self.transport.start()
        if metrics is not None:
            metrics.add_transport(self.transport)
            self.metrics_server = MetricsServer(metrics, *settings)
            await self.metrics_server.start()
        log.info("Telegram transport is running")

    async def stop(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        if self.transport is not None:
            await self.transport.stop()
        if self.store is not None:
            await self.store.close()
        if getattr(self, "pool", None) is not None:
            await asyncio.to_thread(self.pool.close)
        self.metrics_server = self.transport = self.store = self.pool = None
