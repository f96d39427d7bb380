"""Operations: Prometheus metrics, ``/healthz``, and JSON-lines logs that redact secrets.

Metrics (``/metrics``, prometheus-client text format), refreshed from the store at each
scrape so they are right even after a restart:

=========================================  ==============================================
``referral_bot_referrals_open``            referrals still waiting for an opinion
``referral_bot_referrals{state}``          referrals by lifecycle state
``referral_bot_images_live_in_chat``       clean images currently visible in a chat
``referral_bot_expiries_overdue``          referrals whose due time passed more than
                                           ``overdue_after`` ago (the tick is not keeping up)
``referral_bot_next_due_timestamp_seconds``  when the next timer falls due (0 = none)
``referral_bot_outbox_pending``            actions waiting to be executed
``referral_bot_sync_lag_seconds{transport}``  time since the transport last heard from its
                                           server (Matrix sync / Telegram getUpdates)
``referral_bot_refusals_total{source,reason}``  refusals: ``source="workflow"`` counted from
                                           the audit trail (``*.refused`` entries by rule),
                                           ``source="<transport>"`` counted in-process
``referral_bot_chat_delete_failures_total{transport}``  deletions the chat server refused
``referral_bot_outbox_dead_letters``       actions the bot gave up on for good (the
                                           dead-letter list of ``referral-bot status``):
                                           alert when it grows
``referral_bot_referrals_set_aside``       referrals the timers skip because their row
                                           cannot be read (alert when above 0)
``referral_bot_store_errors_total{transport}``  times the store failed under a transport
                                           (disk full, lock timeout); the event or action
                                           was kept and retried, never dropped
``referral_bot_events_rejected_total{transport}``  chat messages ignored because they were
                                           not end-to-end encrypted in an encrypted room,
                                           or their sender key was not the sender's
``referral_bot_events_failed_total{transport}``  chat events whose handling raised (a bug):
                                           logged with its traceback and skipped alone,
                                           the rest of the batch still handled
``referral_bot_scrape_errors_total``       refreshes that could not read the store
``referral_bot_filing_failed``             referrals whose filing into the record is failing (retrying)
``referral_bot_filing_pending``            referrals waiting to be filed (requested, not all sinks done)
=========================================  ==============================================

``/healthz`` answers 200 ``{"status": "ok"}`` when the store answered and every transport
synced within ``max_sync_lag`` seconds, else 503 with the reasons (no patient data).

Logs: :func:`configure_logging` installs one stderr handler writing JSON lines through
:class:`RedactionFilter`, which removes access tokens (Matrix, Telegram, Bearer headers,
``access_token=`` query strings, bot-token URLs), NHS-number-like and ``patient=`` values,
consent free text (``statement=...``, anything after ``!consent``), 64-hex patient-reference
hashes, and byte strings / long base64 runs (image bytes), plus any exact secret registered
with :meth:`RedactionFilter.add_secret` (the configured tokens). The filter runs on the
formatted message AND the exception text, so a library that logs a URL with the bot token
in it (httpx does, at INFO) is caught too.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

__all__ = [
    "Metrics",
    "MetricsServer",
    "RedactionFilter",
    "JsonFormatter",
    "configure_logging",
    "redact",
]

UTC = timezone.utc


# =================================================================== log redaction
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # bot-token URLs (https://api.telegram.org/bot123:ABC/getUpdates) and bare Telegram tokens
    # (the colon may arrive URL-encoded as %3A, e.g. in file download URLs)
    (re.compile(r"/bot\d+(?::|%3[Aa])[A-Za-z0-9_-]+"), "/bot[redacted-token]"),
    (re.compile(r"\b\d{5,12}(?::|%3[Aa])[A-Za-z0-9_-]{30,}\b"), "[redacted-token]"),
    # Matrix access tokens (syt_/syr_/mct_...), Bearer headers, access_token= parameters
    (re.compile(r"\b(?:syt|syr|mct|mat)_[A-Za-z0-9_=-]{8,}"), "[redacted-token]"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[redacted-token]"),
    (re.compile(r"(?i)((?:access_token|admin_token|password|token)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"),
     r"\1[redacted]"),
    # consent commands: the patient reference and the free text follow the command word
    (re.compile(r"(?i)([!/]consent)\b.*", re.S), r"\1 [redacted]"),
    (re.compile(r"(?i)(statement\s*=\s*)(\"[^\"]*\"|'[^']*'|\S+)"), r"\1[redacted]"),
    (re.compile(r"(?i)(patient\s*=\s*)(\"[^\"]*\"|'[^']*'|\S+)"), r"\1[redacted]"),
    # keyed patient-reference hashes and other long hex keys
    (re.compile(r"\b[0-9a-f]{64}\b"), "[redacted-hex]"),
    # NHS numbers (10 digits, optionally 3-3-4 with spaces or dashes)
    (re.compile(r"(?<![\d:])\d{3}[ -]?\d{3}[ -]?\d{4}(?!\d)"), "[redacted-number]"),
    # image bytes: reprs of byte strings and long base64 / hex runs
    (re.compile(r"b(['\"])(?:\\.|(?!\1).){16,}?\1", re.S), "<bytes redacted>"),
    (re.compile(r"[A-Za-z0-9+/]{120,}={0,2}"), "[redacted-blob]"),
]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret-looking part replaced (see the module docstring)."""
    for secret in secrets:
        if secret and len(secret) >= 6:
            text = text.replace(secret, "[redacted]")
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


class RedactionFilter(logging.Filter):
    """Rewrites each record so that nothing secret reaches any handler it is attached to.

    The message is formatted once (``msg % args``) with byte-string arguments replaced by
    their length, then redacted; ``args`` are cleared. Exception text is formatted and
    redacted too and stored in ``exc_text`` (``exc_info`` dropped) so a formatter cannot
    re-render the raw exception.
    """

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self._secrets: set[str] = {s for s in secrets if s}

    def add_secret(self, value: str | None) -> None:
        """Redact this exact string (and its URL-encoded form) wherever it appears."""
        if value:
            from urllib.parse import quote

            self._secrets.add(str(value))
            self._secrets.add(quote(str(value), safe=""))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            if record.args:
                args = record.args
                if isinstance(args, dict):
                    args = {k: _safe_arg(v) for k, v in args.items()}
                else:
                    args = tuple(_safe_arg(a) for a in args)
                message = str(record.msg) % args
            else:
                message = str(_safe_arg(record.msg))
        except Exception:
            message = f"{record.msg!s} (unformattable arguments dropped)"
        record.msg = redact(message, self._secrets)
        record.args = None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact(text, self._secrets)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text, self._secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self._secrets)
        return True


def _safe_arg(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (+ exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False)


#: Libraries that log whole messages/updates/SQL parameters at DEBUG (clinical free text
#: the redaction patterns cannot recognise): held at INFO or above whatever the root level.
CONTENT_LOGGERS = ("telegram", "httpx", "httpcore", "nio", "aiosqlite", "asyncpg", "aiohttp.client",
                   "PIL", "peewee", "synapse")


def configure_logging(level: str | int = "INFO", fmt: str = "json", stream: Any = None,
                      secrets: Iterable[str] = ()) -> RedactionFilter:
    """Replace the root handlers with one redacting handler; returns the filter so the
    caller can register more secrets (``add_secret``) once they are loaded.

    Our own loggers follow ``level``; the libraries in :data:`CONTENT_LOGGERS` never go
    below INFO, because at DEBUG they print message bodies (a GP's clinical question in a
    Telegram update, a decrypted Matrix event), which no pattern can tell from harmless text.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    redactor = RedactionFilter(secrets)
    handler.addFilter(redactor)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    for name in CONTENT_LOGGERS:
        lib = logging.getLogger(name)
        if lib.getEffectiveLevel() < logging.INFO or lib.level < logging.INFO:
            lib.setLevel(logging.INFO)
    return redactor


# =================================================================== metrics
class Metrics:
    """Metric values for one bot process. Call :meth:`refresh` before exposing them
    (the HTTP server does that on every scrape)."""

    def __init__(self, store: Any, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 overdue_after: timedelta = timedelta(minutes=2), max_sync_lag: float = 120.0):
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.store = store
        self.clock = clock
        self.overdue_after = overdue_after
        self.max_sync_lag = max_sync_lag
        self.transports: list[Any] = []
        self.registry = CollectorRegistry()
        r = self.registry
        self.referrals_open = Gauge("referral_bot_referrals_open", "Referrals still waiting for an opinion", registry=r)
        self.referrals = Gauge("referral_bot_referrals", "Referrals by lifecycle state", ["state"], registry=r)
        self.images_live = Gauge("referral_bot_images_live_in_chat", "Clean images currently visible in a chat",
                                 registry=r)
        self.overdue = Gauge("referral_bot_expiries_overdue",
                             "Referrals whose timer fell due more than the allowed delay ago", registry=r)
        self.next_due = Gauge("referral_bot_next_due_timestamp_seconds",
                              "Unix time of the next timer (0 if none)", registry=r)
        self.outbox = Gauge("referral_bot_outbox_pending", "Outbox actions waiting to be executed", registry=r)
        self.filing_failed = Gauge("referral_bot_filing_failed",
                                   "Referrals whose filing into the record failed and is being retried", registry=r)
        self.filing_pending = Gauge("referral_bot_filing_pending",
                                    "Referrals waiting to be filed into the record", registry=r)
        self.sync_lag = Gauge("referral_bot_sync_lag_seconds", "Seconds since the transport last synced",
                              ["transport"], registry=r)
        self.refusals = Gauge("referral_bot_refusals_total",
                              "Refusals by source and reason (workflow ones counted from the audit trail)",
                              ["source", "reason"], registry=r)
        self.delete_failures = Counter("referral_bot_chat_delete_failures_total",
                                       "Message deletions the chat server refused", ["transport"], registry=r)
        self.scrape_errors = Counter("referral_bot_scrape_errors_total",
                                     "Metric refreshes that could not read the store", registry=r)
        self.dead_letters = Gauge("referral_bot_outbox_dead_letters",
                                  "Outbox actions the bot gave up on (see referral-bot status)", registry=r)
        self.set_aside = Gauge("referral_bot_referrals_set_aside",
                               "Referrals the timers skip because their row cannot be read", registry=r)
        self.store_errors = Gauge("referral_bot_store_errors_total",
                                  "Store failures (disk full, lock timeout) under each transport; retried",
                                  ["transport"], registry=r)
        self.events_rejected = Gauge("referral_bot_events_rejected_total",
                                     "Messages ignored: not decrypted in an encrypted room, or a foreign "
                                     "sender key", ["transport"], registry=r)
        self.events_failed = Gauge("referral_bot_events_failed_total",
                                   "Chat events whose handling raised (a bug); skipped alone, logged",
                                   ["transport"], registry=r)
        self._transport_refusals: dict[tuple[str, str], int] = {}
        self.last_refresh_ok = False
        self.last_problems: list[str] = []

    # -- hooks for transports ------------------------------------------------------
    def add_transport(self, transport: Any) -> None:
        """Anything with ``last_sync_at`` (``time.monotonic()`` of the last sync, or None)."""
        self.transports.append(transport)

    def count_refusal(self, source: str, reason: str) -> None:
        key = (source, reason)
        self._transport_refusals[key] = self._transport_refusals.get(key, 0) + 1

    def count_delete_failure(self, transport: str) -> None:
        self.delete_failures.labels(transport=transport).inc()

    # -- refresh ----------------------------------------------------------------------
    async def _referrals(self) -> list[Any]:
        if hasattr(self.store, "read"):
            async with self.store.read() as tx:
                # one damaged row must not blind the metrics (it is counted as set aside)
                return (await tx.readable_referrals())[0]
        if hasattr(self.store, "referrals"):
            return list(self.store.referrals())
        return []

    async def _audit_refusals(self) -> dict[tuple[str, str], int]:
        entries: list[Any] = []
        if hasattr(self.store, "audit_entries"):
            entries = await self.store.audit_entries()
        elif hasattr(self.store, "audit"):
            entries = list(self.store.audit)
        counts: dict[tuple[str, str], int] = {}
        for e in entries:
            if not str(e.action).endswith(".refused"):
                continue
            details = dict(getattr(e, "details", {}) or {})
            reason = f"{str(e.action).split('.', 1)[0]}:{details.get('rule', 'unspecified')}"
            counts[("workflow", reason)] = counts.get(("workflow", reason), 0) + 1
        return counts

    async def refresh(self) -> bool:
        """Recompute every gauge from the store and the transports. False if the store failed."""
        from handlers.model import ReferralState

        now = self.clock()
        problems: list[str] = []
        try:
            referrals = await self._referrals()
            refusals = await self._audit_refusals()
            pending = await self.store.pending_actions(limit=100000)
            dead = await self.store.dead_letter_count() if hasattr(self.store, "dead_letter_count") else 0
            set_aside = (len(await self.store.set_aside_referrals())
                         if hasattr(self.store, "set_aside_referrals") else 0)
        except Exception as exc:  # the store is down: say so, keep serving
            self.scrape_errors.inc()
            self.last_refresh_ok = False
            self.last_problems = [f"store unavailable ({type(exc).__name__})"]
            logging.getLogger("referral_bot.metrics").warning("metrics refresh failed: %s", type(exc).__name__)
            return False
        by_state = {s.value: 0 for s in ReferralState}
        open_count = live = overdue = 0
        next_due: datetime | None = None
        for ref in referrals:
            by_state[ref.state.value] = by_state.get(ref.state.value, 0) + 1
            open_count += 1 if ref.is_open else 0
            live += sum(1 for i in ref.images if i.state.in_chat)
            due = ref.next_due_at()
            if due is not None:
                next_due = due if next_due is None or due < next_due else next_due
                if now - due > self.overdue_after:
                    overdue += 1
        self.referrals_open.set(open_count)
        self.filing_pending.set(sum(1 for r in referrals if r.awaiting_filing))
        # a PACS outage is not the bot being unhealthy (no /healthz problem): alert on the gauge
        self.filing_failed.set(sum(1 for r in referrals if r.awaiting_filing and r.filing_failures > 0))
        for state, n in by_state.items():
            self.referrals.labels(state=state).set(n)
        self.images_live.set(live)
        self.overdue.set(overdue)
        self.next_due.set(next_due.timestamp() if next_due else 0)
        self.outbox.set(len(pending))
        self.dead_letters.set(dead)
        self.set_aside.set(set_aside)
        self.refusals.clear()
        for (source, reason), n in {**refusals, **self._transport_refusals}.items():
            self.refusals.labels(source=source, reason=reason).set(n)
        mono = time.monotonic()
        for t in self.transports:
            name = getattr(t, "name", None) or type(t).__name__.replace("Transport", "").lower()
            last = getattr(t, "last_sync_at", None)
            self.store_errors.labels(transport=name).set(getattr(t, "store_errors", 0))
            self.events_rejected.labels(transport=name).set(getattr(t, "rejected_events", 0))
            self.events_failed.labels(transport=name).set(getattr(t, "failed_events", 0))
            lag = float("inf") if last is None else max(0.0, mono - last)
            self.sync_lag.labels(transport=name).set(lag if lag != float("inf") else -1)
            if lag > self.max_sync_lag:
                problems.append(f"{name} has not synced for {'ever' if last is None else f'{lag:.0f} s'}")
        if overdue:
            problems.append(f"{overdue} timer(s) overdue")
        self.last_refresh_ok = True
        self.last_problems = problems
        return True

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class MetricsServer:
    """``/metrics`` and ``/healthz`` on aiohttp (bind to loopback or a private network)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9464):
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: Any = None

    async def start(self) -> int:
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: Any) -> Any:
        from aiohttp import web
        from prometheus_client import CONTENT_TYPE_LATEST

        await self.metrics.refresh()
        return web.Response(body=self.metrics.exposition(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: Any) -> Any:
        from aiohttp import web

        ok = await self.metrics.refresh()
        problems = list(self.metrics.last_problems)
        healthy = ok and not problems
        body = {"status": "ok" if healthy else "unhealthy", "problems": problems}
        return web.json_response(body, status=200 if healthy else 503)


# =================================================================== config helpers
def metrics_settings(raw: dict[str, Any]) -> tuple[str, int] | None:
    """``(host, port)`` from the ``[metrics]`` section, or None when there is none.

    ``[metrics] host = "127.0.0.1"`` (default), ``port = 9464`` (default), or
    ``listen = "host:port"``; ``enabled = false`` turns it off.
    """
    section = raw.get("metrics")
    if not isinstance(section, dict) or section.get("enabled") is False:
        return None
    host, port = str(section.get("host", "127.0.0.1")), section.get("port", 9464)
    if "listen" in section:
        host, _, port_text = str(section["listen"]).rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError("[metrics] listen must look like host:port.") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError("[metrics] port must be a port number.")
    return host or "127.0.0.1", port


def logging_settings(raw: dict[str, Any]) -> tuple[str, str]:
    """``(level, format)`` from ``[logging]``: level INFO and format "json" by default."""
    section = raw.get("logging") or {}
    level = str(section.get("level", "INFO")).upper()
    fmt = str(section.get("format", "json")).lower()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        level = "INFO"
    if fmt not in ("json", "text"):
        fmt = "json"
    return level, fmt
