"""Wiring: config -> keys -> store -> workflow -> Matrix transport.

    app = BotApp(load_config("config.toml"))
    await app.start()        # logs in (persistent device), catches up, starts the loops
    ...
    await app.stop()
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any, Callable

from bot.config import Config, ConfigError

log = logging.getLogger("referral_bot.app")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def directory_actors(config: Config) -> dict:
    """The clinician directory as the workflow's Actors; ``role`` decides who may refer
    (``referrer`` or ``both``; a ``specialist`` may not record consent or refer)."""
    from handlers.model import Actor

    return {c.user_id: Actor(user_id=c.user_id, practice=c.practice, display_name=c.name,
                             may_refer=c.may_refer)
            for c in config.clinicians.values()}


async def open_store(config: Config, *, exclusive: bool = False):
    """The workflow's store and the deployment keys, as configured. ``exclusive``: this
    process is the bot (one per database; a second one is refused with one plain line)."""
    from storage.keys import load_keys

    keys = load_keys(config.storage.key_file if config.storage.key_file.exists() else None)
    if config.storage.backend == "sqlite":
        from storage.sqlite_store import SQLiteStore

        config.storage.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        store = await SQLiteStore.open(config.storage.sqlite_path, keys,
                                       anchor_path=config.storage.anchor_file, exclusive=exclusive)
    else:
        try:
            from storage.postgres_store import PostgresStore  # type: ignore
        except ImportError:
            raise ConfigError("[storage] backend \"postgres\" is not available in this build.") from None
        store = await PostgresStore.open(config.storage.dsn, keys,
                                         anchor_path=str(config.storage.anchor_file), exclusive=exclusive)
    return store, keys


def make_workflow(store: Any, config: Config, keys: Any, clock: Callable[[], datetime], sanitize: Any = None):
    from handlers.workflow import Workflow

    return Workflow(store=store, policy=config.policy(), hasher=keys.patient_ref_hasher(), sanitize=sanitize)


def sanitizer_pool(config: Config):
    """The worker processes that clean images (memory cap, time limit): optional [sanitizer]
    section with ``workers``, ``memory_mb`` and ``timeout_seconds`` (docs/sanitizer.md)."""
    from bot.sanitize_pool import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, SanitizerPool

    raw = config.raw.get("sanitizer") or {}
    try:
        return SanitizerPool(int(raw.get("workers", 1)), memory_mb=int(raw.get("memory_mb", DEFAULT_MEMORY_MB)),
                             timeout_s=float(raw.get("timeout_seconds", DEFAULT_TIMEOUT_S)))
    except (TypeError, ValueError):
        raise ConfigError("[sanitizer] workers, memory_mb and timeout_seconds must be numbers.") from None


def make_filer(config: Config, store: Any, keys: Any, clock: Callable[[], datetime]):
    """The filing sinks from ``[filing]`` (docs/filing.md), wrapped for the transports."""
    from bot.filing.config import FilingConfigError, filing_key, parse_sinks
    from bot.filing.filer import Filer

    try:
        sinks = parse_sinks(config.raw, key=filing_key(keys.records_key),
                            base=config.path.parent if config.path else None)
    except FilingConfigError as exc:
        raise ConfigError(str(exc)) from None
    if not sinks:
        log.warning("no [[filing.sink]] is configured: records are not filed, and the vault copies are "
                    "destroyed at the end of their retention (docs/filing.md)")
    titles = {k: (s.title or k.capitalize()) for k, s in config.specialties.items()}
    return Filer(store, sinks, clock=clock, titles=titles, legacy_export_dir=config.storage.export_dir,
                 time_zone=config.policy().time_zone)


def pickle_key_for(config: Config, keys: Any) -> str:
    """The nio store's pickle key: configured, or derived from the deployment key under its
    own label (bot/matrix/pickle_key.py; not from the records key, as before issue 9)."""
    if config.matrix and config.matrix.pickle_key:
        return str(config.matrix.pickle_key)
    from bot.matrix.pickle_key import derived_pickle_key

    return derived_pickle_key(keys)


def prepare_crypto_store(config: Config, keys: Any) -> str:
    """The pickle key, after moving an existing store pickled under the old derivation
    onto it (once). A configured pickle_key is used as is."""
    from bot.matrix.nioclient import load_credentials
    from bot.matrix.pickle_key import PickleKeyProblem, ensure_pickle_key, legacy_pickle_key

    m = config.matrix
    key = pickle_key_for(config, keys)
    if m.pickle_key:
        return key
    creds = load_credentials(m.store_dir) or {}
    device_id = creds.get("device_id") if creds.get("user_id") == m.user_id else None
    try:
        ensure_pickle_key(m.store_dir, m.user_id, device_id or m.device_id, key, [legacy_pickle_key(keys)])
    except PickleKeyProblem as exc:
        raise ConfigError(str(exc)) from None
    return key


class BotApp:
    def __init__(self, config: Config, clock: Callable[[], datetime] = utcnow):
        if config.matrix is None:
            raise ConfigError("The configuration needs a [matrix] section to run the bot.")
        self.config = config
        self.clock = clock
        self.store = None
        self.workflow = None
        self.transport = None
        self.client = None
        self.admin = None
        self.state = None
        self.metrics_server = None
        self.store_dir_lock = None
        self.cross_signing = None   # bot.matrix.crosssign.CrossSigningStatus, once known
        self._cross_sign_retry = None
        self.filer = None
        self.pool = None

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics and /healthz listen on (the real one when 0 was asked), or None."""
        return self.metrics_server.port if self.metrics_server is not None else None

    def secrets(self) -> list[str]:
        """Credentials that must never reach a log line (for the redacting log filter)."""
        m = self.config.matrix
        found = [m.password, m.access_token, m.admin_token, m.pickle_key]
        if self.client is not None:
            found.append(self.client.access_token)
        return [str(s) for s in found if s]

    async def start(self) -> None:
        from bot.matrix import nioclient
        from bot.matrix.admin import SynapseAdmin
        from bot.matrix.state import TransportState
        from bot.matrix.transport import MatrixTransport, TransportSettings

        from storage.instance import InstanceLock

        cfg, m = self.config, self.config.matrix
        # one bot per Matrix crypto store (this lock) and per database (the store's lock),
        # taken before anything is opened, so a refused second bot touches nothing
        m.store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir_lock = InstanceLock.acquire(m.store_dir / "bot.lock", f"the Matrix store {m.store_dir}")
        self.store, keys = await open_store(cfg, exclusive=True)
        self.pool = sanitizer_pool(cfg)
        warming = asyncio.create_task(asyncio.to_thread(self.pool.start))  # loads the models meanwhile
        self.workflow = make_workflow(self.store, cfg, keys, self.clock, sanitize=self.pool)
        self.client = await nioclient.login_persistent(
            m.homeserver, m.user_id, m.store_dir, prepare_crypto_store(cfg, keys),
            password=m.password, access_token=m.access_token, device_id=m.device_id,
            device_name=m.device_name)
        admin_token = m.admin_token or (self.client.access_token if m.admin_is_bot else None)
        self.admin = SynapseAdmin(m.homeserver, admin_token, self.client.access_token)
        self.state = TransportState(m.store_dir / "transport.sqlite3")
        await self._cross_sign(keys)
        settings = TransportSettings(
            specialty_rooms={k: s.room for k, s in cfg.specialties.items()},
            specialty_titles={k: (s.title or k.capitalize()) for k, s in cfg.specialties.items()},
            directory=directory_actors(cfg),
            is_allowed=cfg.is_allowed,
            rosters={k: cfg.roster(k) for k in cfg.specialties},
            decrypt_grace_seconds=m.decrypt_grace_seconds,
            tick_seconds=m.tick_seconds,
            sync_timeout_ms=m.sync_timeout_ms,
        )
        self.filer = make_filer(cfg, self.store, keys, self.clock)
        self.transport = MatrixTransport(self.client, self.store, self.workflow, settings,
                                         self.state, admin=self.admin, clock=self.clock,
                                         filer=self.filer)
        await warming
        await self.transport.start()
        await self._start_metrics()
        log.info("bot is running")

    async def _cross_sign(self, keys: Any) -> None:
        """Cross-sign the bot's device so Element trusts it (bot/matrix/crosssign.py).
        A problem is told to the operator in the log; it never stops the bot. An
        unreachable homeserver is retried in the background."""
        import asyncio

        if not await self._try_cross_sign(keys):
            self._cross_sign_retry = asyncio.create_task(self._cross_sign_later(keys))

    async def _try_cross_sign(self, keys: Any) -> bool:
        """False if it should be tried again later."""
        from bot.matrix import crosssign

        password = self.config.matrix.password
        try:
            self.cross_signing = await crosssign.ensure_cross_signing(
                self.client, self.state, keys.cross_signing_key,
                password=str(password) if password else None)
        except crosssign.TransientCrossSigningError as exc:
            log.warning("cross-signing the bot's device failed (%s); will try again", exc)
            return False
        except crosssign.CrossSigningProblem as exc:
            log.error("cross-signing: %s", exc)
            return True
        if not self.cross_signing.ready:
            log.error("cross-signing: %s", self.cross_signing.message)
        return True

    async def _cross_sign_later(self, keys: Any) -> None:
        import asyncio

        delay = 5.0
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
            if self.client is None or await self._try_cross_sign(keys):
                return

    async def _start_metrics(self) -> None:
        """/metrics and /healthz when the config has a [metrics] section."""
        from bot.metrics import Metrics, MetricsServer, metrics_settings

        try:
            settings = metrics_settings(self.config.raw)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if settings is None:
            return
        metrics = Metrics(self.store, clock=self.clock,
                          max_sync_lag=max(120.0, 3 * self.config.matrix.sync_timeout_ms / 1000))
        metrics.add_transport(self.transport)
        self.metrics_server = MetricsServer(metrics, *settings)
        await self.metrics_server.start()

    async def stop(self) -> None:
        if self.metrics_server is not None:
            await self.metrics_server.stop()
            self.metrics_server = None
        if self._cross_sign_retry is not None:
            self._cross_sign_retry.cancel()
            self._cross_sign_retry = None
        if self.transport is not None:
            await self.transport.stop()
        if self.admin is not None:
            await self.admin.close()
        if self.client is not None:
            await self.client.close()
        if self.state is not None:
            self.state.close()
        if self.store is not None:
            close = getattr(self.store, "close", None)
            if close:
                await close()
        if self.pool is not None:
            await asyncio.to_thread(self.pool.close)
        if self.store_dir_lock is not None:
            self.store_dir_lock.release()
        self.transport = self.client = self.admin = self.state = self.store = self.pool = None
        self.store_dir_lock = None
