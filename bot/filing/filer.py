"""Run a filing action for a transport and answer with the feedback event.

    filer = Filer(store, sinks, clock=utcnow)
    event = await filer.execute(action)     # FileRecord / ExportReferral / PurgeFiledCopies

Never raises for a sink failure: every sink is tried, and the ``RecordFiled`` event
says which took the record and which did not (the lifecycle retries those later with
a growing delay). So a PACS that is down never blocks the outbox or the other sinks.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.filing.record import load_record
from bot.filing.sinks import Documents, Sink, SinkError, render_documents
from handlers import actions as A
from handlers import events as E
from handlers.timefmt import DEFAULT_ZONE

__all__ = ["Filer"]

log = logging.getLogger("referral_bot.filing")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Filer:
    def __init__(self, store: Any, sinks: Sequence[Sink], *, clock: Callable[[], datetime] = _utcnow,
                 titles: dict[str, str] | None = None, legacy_export_dir: Path | None = None,
                 time_zone: str = DEFAULT_ZONE):
        self.store = store
        self.time_zone = time_zone  # times in the filed documents (people read them)
        self.sinks = list(sinks)
        self.clock = clock
        self.titles = titles or {}
        self.legacy_export_dir = legacy_export_dir
        #: counters for /metrics and `status` (this process only)
        self.filed = 0
        self.failed = 0

    def handles(self, action: A.Action) -> bool:
        return isinstance(action, (A.FileRecord, A.ExportReferral, A.PurgeFiledCopies))

    async def execute(self, action: A.Action) -> Any:
        if isinstance(action, A.PurgeFiledCopies):
            return await self._purge(action)
        if isinstance(action, A.ExportReferral):  # queued by an older version: file the current version
            async with self.store.read() as tx:
                ref = await tx.get_referral(action.referral_id)
            version = ref.filing_version if ref is not None else 0
            action = A.FileRecord(key=action.key, referral_id=action.referral_id, version=version,
                                  reason="export", reply_to=action.reply_to)
        assert isinstance(action, A.FileRecord)
        return await self._file(action)

    async def _file(self, action: A.FileRecord) -> E.RecordFiled:
        at = self.clock()
        done = f"done:{action.key}"
        todo = [s for s in self.sinks if s.name not in action.skip]
        if not self.sinks:
            self.failed += 1
            return E.RecordFiled(done, at, action.referral_id, action.version, failed=("none",),
                                 failed_where=("the record",), reason="no filing destination is configured on this bot.",
                                 reply_to=action.reply_to)
        try:
            record = await load_record(self.store, action.referral_id, version=action.version, at=at,
                                       time_zone=self.time_zone)
        except LookupError:
            return E.RecordFiled(done, at, action.referral_id, action.version, failed=tuple(s.name for s in todo),
                                 failed_where=tuple(s.label for s in todo),
                                 reason="the referral could not be read.", reply_to=action.reply_to)
        documents: Documents | None = None
        filed, where, failed, failed_where, reasons = [], [], [], [], []
        for sink in todo:
            try:
                if sink.needs_documents and documents is None:
                    documents = render_documents(record, title=self.titles.get(record.specialty, ""))
                await sink.file(record, documents)
            except SinkError as exc:
                failed.append(sink.name)
                failed_where.append(sink.label)
                reasons.append(str(exc))
                continue
            except Exception:  # a bug in a renderer or sink: report it, never crash the loop
                log.exception("filing to %s failed", sink.name)
                failed.append(sink.name)
                failed_where.append(sink.label)
                reasons.append("the record could not be prepared; your administrator can see why in the log.")
                continue
            filed.append(sink.name)
            where.append(sink.label)
        self.filed += bool(filed) and not failed
        self.failed += bool(failed)
        if failed:
            log.warning("filing %s version %d: %d sink(s) failed", action.referral_id, action.version, len(failed))
        return E.RecordFiled(done, at, action.referral_id, action.version, filed=tuple(filed), where=tuple(where),
                             failed=tuple(failed), failed_where=tuple(failed_where), reason=" ".join(reasons),
                             reply_to=action.reply_to)

    async def _purge(self, action: A.PurgeFiledCopies) -> E.FiledCopiesPurged:
        count = 0
        for sink in self.sinks:
            try:
                count += await sink.purge(action.referral_id, action.before_version)
            except OSError as exc:
                log.error("could not delete filed copies in %s: %s", sink.name, exc.strerror or type(exc).__name__)
        if self.legacy_export_dir is not None:
            from storage.fhir_export import legacy_export_files

            for path in legacy_export_files(self.legacy_export_dir, action.referral_id):
                try:
                    path.unlink()
                    count += 1
                except OSError as exc:
                    log.error("could not delete an old export: %s", exc.strerror or type(exc).__name__)
        return E.FiledCopiesPurged(f"done:{action.key}", self.clock(), action.referral_id, count=count,
                                   reason=action.reason)
