"""Where a record goes. Every sink is a small class behind one interface (``Sink``):

* ``FolderSink``   - PDF + FHIR document bundle written atomically into a folder of the
  kind a practice's document workflow watches (mode 0640, unguessable names, a manifest);
* ``SmtpSink``     - the same two files mailed to the practice mailbox, STARTTLS required;
* ``DicomWebSink`` - each image as a DICOM VL Photographic Image, STOW-RS to a PACS.

``file(record, documents)`` raises ``SinkError`` with one plain sentence for the GP and
the operator (never a server path, never patient data). ``purge(referral_id,
before_version)`` deletes what the sink left on this machine that nobody took in yet
(only the folder sink can); it returns how many files went.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from bot.filing.record import RecordDocument

__all__ = ["SinkError", "Documents", "Sink", "FolderSink", "SmtpSink", "DicomWebSink", "MANIFEST"]

log = logging.getLogger("referral_bot.filing")

MANIFEST = "manifest.json"


class SinkError(Exception):
    """Filing to this sink failed; ``str()`` is one plain sentence (no path, no patient data)."""


@dataclass
class Documents:
    """The rendered record, built once per filing and shared by the sinks."""

    pdf: bytes
    fhir_json: bytes

    def __repr__(self) -> str:
        return f"Documents(pdf={len(self.pdf)} bytes, fhir={len(self.fhir_json)} bytes)"


@runtime_checkable
class Sink(Protocol):
    name: str  # the config key, e.g. "practice-inbox" (goes into the audit)
    label: str  # what the GP reads: "the practice document inbox"
    needs_documents: bool  # PDF + FHIR wanted (False: the sink renders its own, e.g. DICOM)

    async def file(self, record: RecordDocument, documents: Documents | None) -> None: ...

    async def purge(self, referral_id: str, before_version: int) -> int: ...


# ------------------------------------------------------------------------------- folder
@dataclass
class FolderSink:
    """Write ``<name>.pdf`` and ``<name>.fhir.json`` into ``path`` plus ``manifest.json``.

    Names are an HMAC of (referral, version, kind) under the deployment's filing key:
    unguessable without it (nobody can predict where the next record lands, or find one
    by its referral id) and stable, so a re-run after a crash rewrites the same files
    instead of adding copies. Files are created through ``write_private`` (random
    temporary name, O_EXCL|O_NOFOLLOW, fsync, rename) with mode 0640, so the practice's
    import service can read them through the group. The manifest lists what is in the
    folder (file names, referral id, version, NHS number for matching, SHA-256) and is
    rewritten atomically after each change; entries whose files the practice has taken
    away are dropped."""

    name: str
    label: str
    path: Path
    key: bytes = field(repr=False)
    file_mode: int = 0o640
    needs_documents: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def file_name(self, referral_id: str, version: int, kind: str) -> str:
        mac = hmac.new(self.key, f"{referral_id}/{version}/{kind}".encode(), hashlib.sha256).hexdigest()[:40]
        return f"{mac}.{kind}"

    async def file(self, record: RecordDocument, documents: Documents | None) -> None:
        assert documents is not None
        await asyncio.to_thread(self._file, record, documents)

    def _file(self, record: RecordDocument, documents: Documents) -> None:
        from storage.fhir_export import write_private

        if not self.path.is_dir():
            raise SinkError(f"{self.label} is not available (its folder is missing); ask your administrator.")
        names = {kind: self.file_name(record.referral_id, record.version, kind) for kind in ("pdf", "fhir.json")}
        try:
            with self._lock:
                write_private(self.path / names["pdf"], documents.pdf, mode=self.file_mode)
                write_private(self.path / names["fhir.json"], documents.fhir_json, mode=self.file_mode)
                entries = [e for e in self._read_manifest()
                           if not (e.get("referral_id") == record.referral_id and e.get("version") == record.version)]
                entries.append({
                    "referral_id": record.referral_id,
                    "version": record.version,
                    "nhs_number": record.nhs_number,
                    "filed_at": record.generated_at.isoformat(),
                    "files": {
                        "pdf": {"name": names["pdf"], "sha256": hashlib.sha256(documents.pdf).hexdigest()},
                        "fhir": {"name": names["fhir.json"], "sha256": hashlib.sha256(documents.fhir_json).hexdigest()},
                    },
                })
                self._write_manifest(entries)
        except PermissionError:
            log.error("filing folder %s is not writable", self.path)
            raise SinkError(f"{self.label} refused the files (no permission); ask your administrator.") from None
        except OSError as exc:
            log.error("filing folder %s: %s", self.path, exc.strerror or type(exc).__name__)
            raise SinkError(f"{self.label} could not take the files ({exc.strerror or 'disk error'}).") from None

    def _read_manifest(self) -> list[dict]:
        """Manifest entries whose files are still here (the rest were taken in)."""
        try:
            fd = os.open(self.path / MANIFEST, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            return []
        except OSError:  # a symlink planted as the manifest: start a fresh one
            return []
        with os.fdopen(fd, "rb") as fh:
            try:
                data = json.loads(fh.read() or b"{}")
            except ValueError:
                return []
        entries = data.get("records", []) if isinstance(data, dict) else []
        live = []
        for e in entries:
            files = e.get("files", {}) if isinstance(e, dict) else {}
            if any((self.path / f.get("name", "")).is_file() for f in files.values() if isinstance(f, dict) and f.get("name")):
                live.append(e)
        return live

    def _write_manifest(self, entries: list[dict]) -> None:
        from storage.fhir_export import write_private

        body = {"format": "referral-bot filing manifest v1", "records": entries}
        write_private(self.path / MANIFEST, json.dumps(body, indent=2, sort_keys=True) + "\n", mode=self.file_mode)

    async def purge(self, referral_id: str, before_version: int) -> int:
        return await asyncio.to_thread(self._purge, referral_id, before_version)

    def _purge(self, referral_id: str, before_version: int) -> int:
        if not self.path.is_dir():
            return 0
        gone = 0
        with self._lock:
            entries = self._read_manifest()
            keep = []
            for e in entries:
                if e.get("referral_id") == referral_id and int(e.get("version", 0)) < before_version:
                    for f in e.get("files", {}).values():
                        target = self.path / Path(str(f.get("name", ""))).name
                        if target.name and target.is_file() and not target.is_symlink():
                            target.unlink()
                            gone += 1
                else:
                    keep.append(e)
            # versions the manifest lost track of (a crash between files and manifest)
            for version in range(1, before_version):
                for kind in ("pdf", "fhir.json"):
                    target = self.path / self.file_name(referral_id, version, kind)
                    if target.is_file() and not target.is_symlink():
                        target.unlink()
                        gone += 1
            if gone or len(keep) != len(entries):
                self._write_manifest(keep)
        return gone


# ------------------------------------------------------------------------------- SMTP
@dataclass
class SmtpSink:
    """Mail the PDF and the FHIR bundle to the practice mailbox. STARTTLS is required
    (the server must offer it and its certificate must verify against ``cafile`` or the
    system store) before any login or data; without it nothing is sent. The subject and
    body name the referral only; the patient is identified inside the attachments.
    The Message-ID is derived from (referral, version), so a resend after a crash is
    recognisable as the same message."""

    name: str
    label: str
    host: str
    port: int
    sender: str
    recipient: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None
    timeout: float = 30.0
    needs_documents: bool = True

    def message(self, record: RecordDocument, documents: Documents):
        from email.message import EmailMessage
        from email.utils import formatdate

        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = self.recipient
        msg["Subject"] = f"Specialist advice {record.referral_id} ({record.specialty}), record version {record.version}"
        msg["Date"] = formatdate(record.generated_at.timestamp(), usegmt=True)
        digest = hashlib.sha256(f"{record.referral_id}/{record.version}".encode()).hexdigest()[:16]
        msg["Message-ID"] = f"<{record.referral_id}.v{record.version}.{digest}@referral-bot>"
        msg.set_content(
            f"The record of specialist advice {record.referral_id} ({record.specialty}) is attached, for the "
            f"patient's notes: a PDF to read and a FHIR R4 document bundle to import.\n"
            f"It was sent by the practice's referral bot; please do not reply to this message.\n")
        base = f"{record.referral_id}-v{record.version}"
        msg.add_attachment(documents.pdf, maintype="application", subtype="pdf", filename=f"{base}.pdf")
        msg.add_attachment(documents.fhir_json, maintype="application", subtype="fhir+json",
                           filename=f"{base}.fhir.json")
        return msg

    async def file(self, record: RecordDocument, documents: Documents | None) -> None:
        assert documents is not None
        await asyncio.to_thread(self._send, self.message(record, documents))

    def _send(self, msg) -> None:
        import smtplib

        context = ssl.create_default_context(cafile=self.cafile)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if not smtp.has_extn("starttls"):
                    raise SinkError(f"{self.label} does not offer an encrypted connection (STARTTLS), so nothing "
                                    f"was sent; ask your administrator.")
                smtp.starttls(context=context)
                smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg)
        except SinkError:
            raise
        except ssl.SSLError as exc:
            log.error("SMTP TLS to %s:%s failed: %s", self.host, self.port, type(exc).__name__)
            raise SinkError(f"{self.label} could not be reached securely (its certificate did not verify).") from None
        except smtplib.SMTPAuthenticationError:
            raise SinkError(f"{self.label} refused the bot's login; ask your administrator.") from None
        except (smtplib.SMTPException, OSError) as exc:
            log.error("SMTP to %s:%s failed: %s", self.host, self.port, type(exc).__name__)
            raise SinkError(f"{self.label} did not accept the message; I will try again.") from None

    async def purge(self, referral_id: str, before_version: int) -> int:
        return 0  # a sent message cannot be recalled: the practice's records policy applies


# ------------------------------------------------------------------------------- DICOMweb
@dataclass
class DicomWebSink:
    """STOW-RS every image of the record to ``url`` (the DICOMweb root, e.g.
    ``https://pacs.example.nhs.uk/dicom-web``), one request per record, as
    ``multipart/related; type="application/dicom"``. A record with no image (withdrawn,
    or only text) has nothing for PACS and succeeds at once. Images already in the PACS
    are sent again with the same SOP Instance UIDs, which a PACS treats as the same
    instance. DICOMweb has no delete, so ``purge`` deletes nothing: after a withdrawal
    the PACS administrator removes the study (docs/filing.md)."""

    name: str
    label: str
    url: str
    token: str | None = field(default=None, repr=False)
    cafile: str | None = None
    timeout: float = 60.0
    needs_documents: bool = False

    async def file(self, record: RecordDocument, documents: Documents | None) -> None:
        from bot.filing.dicom import build_instances

        if not record.images_with_data:
            return
        if not record.nhs_number:
            raise SinkError(f"the patient reference of this referral is not an NHS number, so it cannot be filed to "
                            f"{self.label}.")
        parts = await asyncio.to_thread(build_instances, record)
        await self._stow([data for _uid, data in parts])

    async def _stow(self, instances: list[bytes]) -> None:
        import secrets

        import aiohttp

        boundary = "rbot-" + secrets.token_hex(12)
        body = bytearray()
        for data in instances:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body += data
            body += b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        ssl_ctx = ssl.create_default_context(cafile=self.cafile) if self.url.startswith("https") else None
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(self.url.rstrip("/") + "/studies", data=bytes(body), headers=headers,
                                        ssl=ssl_ctx) as resp:
                    text = await resp.text()
                    if resp.status in (200, 202) and not _stow_failures(text):
                        return
                    log.error("STOW-RS answered %s", resp.status)
                    if resp.status in (401, 403):
                        raise SinkError(f"{self.label} refused the bot's credentials; ask your administrator.")
                    raise SinkError(f"{self.label} did not accept the images (it answered {resp.status}).")
        except SinkError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.error("STOW-RS to the PACS failed: %s", type(exc).__name__)
            raise SinkError(f"{self.label} could not be reached; I will try again.") from None

    async def purge(self, referral_id: str, before_version: int) -> int:
        return 0


def _stow_failures(text: str) -> bool:
    """True when a STOW-RS response lists failed instances (FailedSOPSequence 0008,1198)."""
    try:
        data = json.loads(text) if text.strip() else {}
    except ValueError:
        return False
    if isinstance(data, list):
        data = data[0] if data else {}
    failed = data.get("00081198") if isinstance(data, dict) else None
    return bool(failed and failed.get("Value"))


def render_documents(record: RecordDocument, *, title: str = "") -> Documents:
    """The PDF and the FHIR R4 document bundle of a record (pure)."""
    from bot.filing.pdf import render_pdf
    from storage.fhir_export import ExportImage, export_bundle

    images = []
    by_id = {i.image_id: i for i in record.images}
    for item in record.referral.images:
        if item.image_id in by_id:
            images.append(ExportImage(item, by_id[item.image_id].data))
    bundle = export_bundle(record.consent, record.referral, images, at=record.generated_at,
                           nhs_number=record.nhs_number, document=True, version=record.version)
    return Documents(pdf=render_pdf(record, title=title), fhir_json=bundle.json().encode("utf-8"))
