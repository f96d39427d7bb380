"""FHIR export: the bundle validates with fhir.resources (R4B models) and round-trips;
`referral-bot export` writes it and then crypto-shreds the vault copies."""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import stat
from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from bot.cli import main as cli_main
from handlers.model import CloseReason, ImageState, ReferralState
from storage.fhir_export import ExportError, ExportImage, export_bundle, validate, write_private
from storage.keys import generate_key_file, load_key_file
from storage.sqlite_store import SQLiteStore

from .conftest import T0
from .test_contract import consent, image, referral

JPEG = b"\xff\xd8\xff\xe0" + os.urandom(2000) + b"\xff\xd9"
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(500)
OPINION = "Tinea corporis. Topical terbinafine twice daily for 2 weeks; review if not settling."


def _full_referral(**kw):
    r = referral(
        state=ReferralState.OPINION_GIVEN, thread_root_event_id="$root",
        opinion=OPINION, opinion_by="@derm:example.org", opinion_at=T0 + timedelta(hours=3), **kw,
    )
    r = r.with_image(image("img-1", state=ImageState.POSTED, width=640, height=480, removed_metadata=("GPS", "Make"),
                           room_event_id="$ev1", media_uri="mxc://hs/1"))
    r = r.with_image(image("img-2", media_type="image/png", filename="R-7K3QX9-2.png", state=ImageState.POSTED,
                           room_event_id="$ev2", media_uri="mxc://hs/2"))
    return r


def _resources(bundle: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in bundle["entry"]:
        out.setdefault(e["resource"]["resourceType"], []).append(e["resource"])
    return out


def test_bundle_validates_and_round_trips():
    r = _full_referral()
    result = export_bundle(consent(), r, [ExportImage(r.images[0], JPEG), ExportImage(r.images[1], PNG)], at=T0 + timedelta(days=1))
    text = result.json()
    model = Bundle.model_validate_json(text)  # R4B: the R4-family models of fhir.resources 8
    assert model.type == "collection"
    again = json.loads(model.model_dump_json(exclude_none=True))
    assert again == json.loads(text)  # nothing lost or invented by the round trip
    res = _resources(result.bundle)
    assert sorted(res) == ["Consent", "DiagnosticReport", "Media", "ServiceRequest"]
    media = res["Media"]
    assert [base64.b64decode(m["content"]["data"]) for m in media] == [JPEG, PNG]
    assert [m["content"]["contentType"] for m in media] == ["image/jpeg", "image/png"]
    assert media[0]["width"] == 640 and media[0]["height"] == 480
    report = res["DiagnosticReport"][0]
    assert report["conclusion"] == OPINION
    assert [l["link"]["reference"] for l in report["media"]] == [e["fullUrl"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == "Media"]
    # every internal reference resolves inside the bundle
    urls = {e["fullUrl"] for e in result.bundle["entry"]}
    refs = [m.group(1) for m in __import__("re").finditer(r'"reference": "([^"]+)"', text)]
    assert refs and all(ref in urls for ref in refs)
    assert res["ServiceRequest"][0]["note"][0]["text"] == r.question
    c = res["Consent"][0]
    assert c["status"] == "active" and c["patient"]["identifier"]["value"] == consent().patient_ref
    assert {p["code"] for p in c["provision"]["purpose"]} >= {"care", "teaching", "TREAT"}
    assert result.images_included == ["img-1", "img-2"] and result.images_missing == []


def test_export_is_deterministic_for_the_same_input():
    r = _full_referral()
    imgs = [ExportImage(r.images[0], JPEG)]
    a = export_bundle(consent(), r, imgs, at=T0).bundle
    b = export_bundle(consent(), r, imgs, at=T0).bundle
    assert a == b


def test_withdrawn_consent_no_opinion_and_a_destroyed_image():
    c = consent(withdrawn_at=T0 + timedelta(hours=1), withdrawn_by="@gp:example.org")
    r = referral(state=ReferralState.CLOSED, close_reason=CloseReason.WITHDRAWN).with_image(image("img-1"))
    result = export_bundle(c, r, [ExportImage(r.images[0], None)], at=T0 + timedelta(days=1))
    res = _resources(result.bundle)
    assert "DiagnosticReport" not in res
    assert res["Consent"][0]["status"] == "inactive"
    assert res["ServiceRequest"][0]["status"] == "revoked"
    assert "data" not in res["Media"][0]["content"]
    assert "destroyed" in res["Media"][0]["note"][0]["text"]
    assert result.images_missing == ["img-1"]
    validate(result.bundle)


def test_invalid_bundle_is_a_short_error():
    with pytest.raises(ExportError, match="did not validate at type: .*required"):
        validate({"resourceType": "Bundle"})
    with pytest.raises(ExportError, match="did not validate at entry.0.resource.status"):
        validate({"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": {"resourceType": "Media", "content": {"contentType": "image/png"}}}]})
    with pytest.raises(ExportError, match="not the consent of referral"):
        export_bundle(consent("C-OTHER"), referral(), [], at=T0)


# ---------------------------------------------------------------- the CLI
@pytest.fixture
def deployment(tmp_path):
    """A database with one referral (2 posted images + 1 waiting) and its key file."""
    key_file = generate_key_file(tmp_path / "bot.key")
    db_path = tmp_path / "bot.sqlite3"
    r = _full_referral().with_image(image("img-3", state=ImageState.WAITING))

    async def prepare():
        async with await SQLiteStore.open(db_path, load_key_file(key_file)) as store:
            async with store.transaction() as tx:
                await tx.save_consent(consent())
                await tx.save_referral(r)
                await tx.vault_put("img-1", JPEG, "image/jpeg")
                await tx.vault_put("img-2", PNG, "image/png")
                await tx.vault_put("img-3", b"waiting image", "image/jpeg")

    asyncio.run(prepare())
    return db_path, key_file


def _state(db_path, key_file):
    async def read():
        async with await SQLiteStore.open(db_path, load_key_file(key_file)) as store:
            async with store.read() as tx:
                ref = await tx.get_referral("R-7K3QX9")
                vault = {i: await tx.vault_get(i) for i in ("img-1", "img-2", "img-3")}
            return ref, vault, await store.audit_entries(), await store.verify_audit()

    return asyncio.run(read())


def test_cli_export_writes_a_valid_bundle_and_destroys_nothing(deployment, tmp_path, capsys):
    """Issue 13: exporting never destroys anything (it used to shred the vault copies,
    so an export before the opinion lost the images)."""
    db_path, key_file = deployment
    out = tmp_path / "R-7K3QX9.fhir.json"
    assert cli_main(["export", "r-7k3qx9", "--db", str(db_path), "--key-file", str(key_file), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "nothing was destroyed" in said
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    bundle = Bundle.model_validate_json(out.read_text())
    media = [e.resource for e in bundle.entry if e.resource.__resource_type__ == "Media"]
    assert [m.content.data for m in media[:2]] == [JPEG, PNG]  # the model decodes base64

    ref, vault, entries, chain = _state(db_path, key_file)
    assert vault == {"img-1": JPEG, "img-2": PNG, "img-3": b"waiting image"}
    assert ref.exported_at is not None
    assert [i.shredded for i in ref.images] == [False, False, False]
    assert entries[-1].action == "referral.exported" and entries[-1].details == {}
    assert chain.intact

    # exporting again gives the same images
    out2 = tmp_path / "again.json"
    assert cli_main(["export", "R-7K3QX9", "--db", str(db_path), "--key-file", str(key_file), "-o", str(out2)]) == 0
    again = Bundle.model_validate_json(out2.read_text())
    assert [e.resource.content.data for e in again.entry if e.resource.__resource_type__ == "Media"][:2] == [JPEG, PNG]


def test_write_private_never_follows_a_planted_symlink(tmp_path):
    """Issue 9, finding 9: the temporary file used to be ``.<name>.tmp-<pid>``, so a
    symlink planted there made the export write through it. Now the temporary name is
    random and opened O_EXCL|O_NOFOLLOW; a symlink at the final name is replaced, not
    followed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "R-7K3QX9.fhir.json"
    for pid in range(os.getpid() - 5, os.getpid() + 5):  # every name the old code could pick
        os.symlink(victim, tmp_path / f".{out.name}.tmp-{pid}")
    write_private(out, "record")
    assert victim.read_text() == "precious" and out.read_text() == "record"
    # a symlink AT the final name is replaced by the file, the target left alone
    out.unlink()
    os.symlink(victim, out)
    write_private(out, "record 2")
    assert not out.is_symlink() and out.read_text() == "record 2" and victim.read_text() == "precious"
    # and with overwrite=False a planted symlink is an existing file: refused
    os.unlink(out)
    os.symlink(victim, out)
    with pytest.raises(FileExistsError):
        write_private(out, "x", overwrite=False)
    assert victim.read_text() == "precious"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # nothing left behind


def test_write_private_creates_its_temporary_file_exclusively(tmp_path, monkeypatch):
    """Even if the random name were guessed, O_EXCL refuses an existing file there."""
    import secrets as _secrets

    monkeypatch.setattr(_secrets, "token_hex", lambda n: "a" * (2 * n))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tmp_path / f".{'a' * 32}.tmp")
    with pytest.raises(FileExistsError):
        write_private(tmp_path / "out.json", "record")
    assert victim.read_text() == "precious" and not (tmp_path / "out.json").exists()


def test_cli_export_to_stdout_keeps_messages_on_stderr(deployment, capsys):
    db_path, key_file = deployment
    assert cli_main(["export", "R-7K3QX9", "--db", str(db_path), "--key-file", str(key_file)]) == 0
    captured = capsys.readouterr()
    Bundle.model_validate_json(captured.out)
    assert "nothing was destroyed" in captured.err


def test_cli_export_bad_input(deployment, tmp_path, capsys):
    db_path, key_file = deployment
    base = ["--db", str(db_path), "--key-file", str(key_file)]
    cases = [
        (["export", "R-NOPE"] + base, "no referral R-NOPE"),
        (["export", "hello"] + base, "is not a referral id"),
        (["export", "R-7K3QX9", "--db", str(tmp_path / "absent.sqlite3"), "--key-file", str(key_file)], "no database at"),
    ]
    existing = tmp_path / "exists.json"
    existing.write_text("{}")
    cases.append((["export", "R-7K3QX9", *base, "-o", str(existing)], "already exists"))
    other_key = generate_key_file(tmp_path / "other.key")
    cases.append((["export", "R-7K3QX9", "--db", str(db_path), "--key-file", str(other_key)], "not the key this database"))
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)
    os.chmod(key_file, 0o644)
    assert cli_main(["export", "R-7K3QX9", *base]) == 2
    assert "chmod 600" in capsys.readouterr().err
    os.chmod(key_file, 0o600)
    _, vault, _, _ = _state(db_path, key_file)
    assert vault["img-1"] == JPEG  # nothing was shredded by the failed attempts


def test_addenda_follow_the_opinion_in_the_report():
    from handlers.model import Addendum

    r = dataclasses.replace(_full_referral(), addenda=(
        Addendum(by="@derm2:example.org", at=T0 + timedelta(hours=5), text="Dermoscopy would confirm; not urgent."),))
    result = export_bundle(consent(), r, [ExportImage(r.images[0], JPEG)], at=T0 + timedelta(days=1))
    Bundle.model_validate_json(result.json())
    report = _resources(result.bundle)["DiagnosticReport"][0]
    assert report["conclusion"].startswith(OPINION + "\n\nAddendum (@derm2:example.org, ")
    assert report["conclusion"].endswith("Dermoscopy would confirm; not urgent.")
def test_a_deceased_patients_statement_is_filed_as_known_wishes():
    """Issue 12: for a patient who has died the statement is their known wishes / the views
    of those close to them; the record must not call it a best-interests statement."""
    from handlers.model import ConsentBasis

    r = _full_referral()
    c = dataclasses.replace(consent(), basis=ConsentBasis.DECEASED_WISHES,
                            best_interests_statement="Asked that his photos be used to teach; wife agrees.")
    text = export_bundle(c, r, [ExportImage(r.images[0], JPEG)], at=T0 + timedelta(days=1)).json()
    assert "known-wishes-statement" in text and "best-interests" not in text
