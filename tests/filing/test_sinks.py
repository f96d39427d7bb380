"""The sinks against the real thing: a folder on disk, an SMTP server with STARTTLS
(aiosmtpd), and the Filer feeding the workflow."""
from __future__ import annotations

import asyncio
import datetime as dt
import email
import io
import json
import os
import ssl
import stat
from email import policy as email_policy
from pathlib import Path

import pytest
from pypdf import PdfReader

from bot.filing.filer import Filer
from bot.filing.sinks import MANIFEST, FolderSink, SinkError, SmtpSink, render_documents
from handlers import actions as A

from .conftest import NHS, OPINION, make_referral, record_of

KEY = b"k" * 32


def folder_sink(path: Path) -> FolderSink:
    path.mkdir(exist_ok=True)
    return FolderSink(name="inbox", label="the practice document inbox", path=path, key=KEY)


async def test_folder_sink_writes_pdf_fhir_and_manifest(filed, tmp_path):
    h, rid, record = filed
    sink = folder_sink(tmp_path / "inbox")
    await sink.file(record, render_documents(record))
    files = sorted(p.name for p in sink.path.iterdir())
    assert MANIFEST in files and len(files) == 3
    for p in sink.path.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p
        assert rid not in p.name and NHS not in p.name  # unguessable, and names nothing
    manifest = json.loads((sink.path / MANIFEST).read_text())["records"]
    assert [(m["referral_id"], m["version"], m["nhs_number"]) for m in manifest] == [(rid, 1, NHS)]
    pdf = (sink.path / manifest[0]["files"]["pdf"]["name"]).read_bytes()
    assert OPINION in "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    # a re-run (crash after writing, before the feedback) rewrites the same files, adds none
    await sink.file(record, render_documents(record))
    assert sorted(p.name for p in sink.path.iterdir()) == files
    # the practice takes the files in: the manifest forgets them on the next change
    for name in files:
        if name != MANIFEST:
            (sink.path / name).unlink()
    assert sink._read_manifest() == []


async def test_folder_sink_refuses_plainly_when_the_folder_is_missing(filed, tmp_path):
    _h, _rid, record = filed
    sink = FolderSink(name="inbox", label="the practice document inbox", path=tmp_path / "gone", key=KEY)
    with pytest.raises(SinkError) as err:
        await sink.file(record, render_documents(record))
    assert "the practice document inbox" in str(err.value) and str(tmp_path) not in str(err.value)


async def test_folder_sink_never_follows_planted_symlinks(filed, tmp_path):
    _h, rid, record = filed
    sink = folder_sink(tmp_path / "inbox")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    # at the predictable names: the manifest and both final file names
    for name in (MANIFEST, sink.file_name(rid, 1, "pdf"), sink.file_name(rid, 1, "fhir.json")):
        os.symlink(victim, sink.path / name)
    await sink.file(record, render_documents(record))
    assert victim.read_text() == "precious"
    assert not any(p.is_symlink() for p in sink.path.iterdir())


async def test_filer_with_a_folder_feeds_the_workflow_and_withdrawal_purges(tmp_path):
    h, cid, rid = await make_referral()
    sink = folder_sink(tmp_path / "inbox")
    legacy = tmp_path / "exports"
    legacy.mkdir()
    (legacy / f"{rid}-20260301T090000Z.fhir.json").write_text("{}")  # left by the old !export
    filer = Filer(h.store, [sink], clock=lambda: h.now, legacy_export_dir=legacy)
    h._execute = lambda action, _old=h._execute: _old(action)  # scripted actions stay scripted
    acts = await h.say(h_gp(), f"!export {rid}")
    action = next(a for a in acts if isinstance(a, A.FileRecord))
    event = await filer.execute(action)
    assert event.filed == ("inbox",) and event.where == ("the practice document inbox",)
    done = await h.workflow.handle(event)
    assert [a.text for a in done if isinstance(a, A.Reply)] == [f"{rid} filed to the practice document inbox."]
    assert len(list(sink.path.glob("*.pdf"))) == 1
    # withdrawal: the left copies and the old export go; the notice is filed without images
    acts = await h.say(h_gp(), f"!withdraw {cid}")
    purge = next(a for a in acts if isinstance(a, A.PurgeFiledCopies))
    refile = next(a for a in acts if isinstance(a, A.FileRecord))
    purged = await filer.execute(purge)
    assert purged.count == 3 and not list(legacy.iterdir())
    assert not list(sink.path.glob("*.pdf"))
    await h.workflow.handle(purged)
    await h.workflow.handle(await filer.execute(refile))
    [pdf] = list(sink.path.glob("*.pdf"))
    reader = PdfReader(pdf)
    assert "consent was withdrawn" in reader.pages[0].extract_text()
    assert sum(len(p.images) for p in reader.pages) == 0
    assert h.store.referral(rid).filed_version == h.store.referral(rid).filing_version


async def test_filer_reports_each_failing_sink_and_keeps_going(filed, tmp_path):
    h, rid, _record = filed
    good = folder_sink(tmp_path / "inbox")
    bad = FolderSink(name="archive", label="the practice archive", path=tmp_path / "missing", key=KEY)
    event = await Filer(h.store, [bad, good], clock=lambda: h.now).execute(
        A.FileRecord(key="k/0", referral_id=rid, version=h.store.referral(rid).filing_version))
    assert event.filed == ("inbox",) and event.failed == ("archive",)
    assert "the practice archive is not available" in event.reason
    acts = await h.workflow.handle(event)
    note = next(a for a in acts if isinstance(a, A.Notify))
    assert "could not file" in note.text and "It did reach the practice document inbox" in note.text
    assert h.store.referral(rid).filed_to == ("inbox",)


def h_gp():
    from tests.handlers.helpers import GP

    return GP


# ------------------------------------------------------------------------------- SMTP
def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Mailbox:
    def __init__(self):
        self.messages: list[tuple[bytes, bool]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.content, session.ssl is not None))
        return "250 OK"


def _smtp_server(tmp_path: Path, *, tls: bool):
    from aiosmtpd.controller import Controller

    box = _Mailbox()
    kwargs = {}
    if tls:
        cert, key = _self_signed(tmp_path)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        kwargs = dict(tls_context=ctx, require_starttls=True)
    import socket

    with socket.socket() as probe:  # a free loopback port (the controller needs a real one)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ctl = Controller(box, hostname="127.0.0.1", port=port, **kwargs)
    ctl.start()
    return ctl, box, (tmp_path / "cert.pem" if tls else None)


async def test_smtp_sink_sends_over_starttls_to_a_real_server(filed, tmp_path):
    _h, rid, record = filed
    ctl, box, cafile = await asyncio.to_thread(_smtp_server, tmp_path, tls=True)
    try:
        sink = SmtpSink(name="mail", label="the practice mailbox", host="127.0.0.1", port=ctl.port,
                        sender="bot@example.org", recipient="docs@practice.example.org", cafile=str(cafile))
        await sink.file(record, render_documents(record))
    finally:
        await asyncio.to_thread(ctl.stop)
    [(raw, over_tls)] = box.messages
    assert over_tls
    msg = email.message_from_bytes(raw, policy=email_policy.default)
    assert rid in msg["Subject"] and NHS not in msg["Subject"] and NHS not in msg.get_body().get_content()
    parts = {p.get_filename(): p.get_content() for p in msg.iter_attachments()}
    assert set(parts) == {f"{rid}-v1.pdf", f"{rid}-v1.fhir.json"}
    text = "".join(pg.extract_text() for pg in PdfReader(io.BytesIO(parts[f"{rid}-v1.pdf"])).pages)
    assert OPINION in text and "943 476 5919" in text
    fhir = parts[f"{rid}-v1.fhir.json"]
    assert json.loads(fhir if isinstance(fhir, str) else fhir.decode())["type"] == "document"


async def test_smtp_sink_sends_nothing_without_starttls(filed, tmp_path):
    _h, _rid, record = filed
    ctl, box, _ = await asyncio.to_thread(_smtp_server, tmp_path, tls=False)
    try:
        sink = SmtpSink(name="mail", label="the practice mailbox", host="127.0.0.1", port=ctl.port,
                        sender="bot@example.org", recipient="docs@practice.example.org")
        with pytest.raises(SinkError, match="does not offer an encrypted connection"):
            await sink.file(record, render_documents(record))
    finally:
        await asyncio.to_thread(ctl.stop)
    assert box.messages == []


async def test_smtp_sink_refuses_a_certificate_it_cannot_verify(filed, tmp_path):
    _h, _rid, record = filed
    ctl, box, _cafile = await asyncio.to_thread(_smtp_server, tmp_path, tls=True)
    try:
        sink = SmtpSink(name="mail", label="the practice mailbox", host="127.0.0.1", port=ctl.port,
                        sender="bot@example.org", recipient="docs@practice.example.org")  # system CAs only
        with pytest.raises(SinkError, match="certificate did not verify"):
            await sink.file(record, render_documents(record))
    finally:
        await asyncio.to_thread(ctl.stop)
    assert box.messages == []
