"""Export a referral as a FHIR R4 Bundle for the patient's record.

The bundle (``type: collection``) holds, with ``urn:uuid`` full URLs derived
deterministically from the referral id (re-exporting gives the same ids):

* **ServiceRequest** - the referral: specialty, referrer, when, the clinical
  question (``note``), status from the lifecycle;
* **Consent** - the consent record: status (``inactive`` once withdrawn or
  expired), scope ``patient-privacy``, category LOINC 59284-0, who consented,
  purposes, identifiable images covered or not, best-interests statement,
  retention, recorded in notes;
* **Media** (one per image) - the cleaned image as an attachment
  (``contentType`` + base64 ``data`` decrypted from the vault). An image whose
  vault copy is already destroyed is still listed, without data, with a note;
* **DiagnosticReport** - the specialist's opinion (and any addenda) as ``conclusion`` (performer,
  issued time, ``media`` links to the images, ``basedOn`` the ServiceRequest);
  absent if no opinion was given.

The patient is referenced only by the pseudonymous keyed hash the bot holds
(``subject.identifier``): the practice matches it to the patient it knows.

Validation: ``fhir.resources`` 8.x models R5 by default; the R4-family models
are in ``fhir.resources.R4B`` (FHIR 4.3, which for these five resources has
the same shape as R4 4.0.1, including ``Media``). The bundle is validated with
``fhir.resources.R4B.bundle.Bundle`` before it is returned: nothing
unvalidated leaves this module.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from handlers.model import ConsentRecord, ImageItem, ImageState, Purpose, Referral

SYSTEM_PATIENT_REF = "urn:referral-bot:patient-ref"
SYSTEM_REFERRAL = "urn:referral-bot:referral"
SYSTEM_CONSENT = "urn:referral-bot:consent"
SYSTEM_IMAGE = "urn:referral-bot:image"
SYSTEM_USER = "urn:referral-bot:user"
SYSTEM_PURPOSE = "urn:referral-bot:purpose"
EXT_BASE = "urn:referral-bot:fhir:extension:"
_NS = uuid.UUID("6f1c0f8e-5b0a-4c1e-9d8e-2a8f7b3c4d5e")

_CONSENTER = {
    "patient": "the patient",
    "parent": "parent or guardian (child not Gillick competent)",
    "attorney": "LPA health and welfare attorney",
    "deputy": "court-appointed deputy",
    "best-interests": "best-interests decision (nobody holds authority)",
    "deceased-wishes": "known wishes of the deceased patient",
    "executor": "executor of the deceased patient",
    "family": "family of the deceased patient",
}
_V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
_PURPOSE_CODES = {Purpose.CARE: ("TREAT", "treatment"), Purpose.RESEARCH: ("HRESCH", "healthcare research")}


class ExportError(Exception):
    """The bundle could not be built or did not validate (short message)."""


@dataclass(frozen=True)
class ExportImage:
    item: ImageItem
    data: bytes | None  # None: the vault copy is already destroyed


@dataclass
class ExportResult:
    referral_id: str
    bundle: dict[str, Any]
    images_included: list[str] = field(default_factory=list)
    images_missing: list[str] = field(default_factory=list)

    def json(self) -> str:
        return json.dumps(self.bundle, indent=2, ensure_ascii=False) + "\n"


def _iso(at: datetime | None) -> str | None:
    """FHIR dateTime/instant in UTC with a ``Z`` (the form fhir.resources writes back)."""
    return None if at is None else at.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _uid(*parts: str) -> str:
    return "urn:uuid:" + str(uuid.uuid5(_NS, "/".join(parts)))


def _user(user_id: str | None) -> dict[str, Any] | None:
    if not user_id:
        return None
    return {"identifier": {"system": SYSTEM_USER, "value": user_id}, "display": user_id}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None and v != [] and v != {}}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _service_request_status(ref: Referral) -> str:
    if ref.is_open:
        return "active"
    if ref.close_reason is not None and ref.close_reason.value in ("cancelled", "withdrawn"):
        return "revoked"
    return "completed"


def _consent_resource(consent: ConsentRecord, subject: dict[str, Any], at: datetime) -> dict[str, Any]:
    inactive = consent.withdrawn or (consent.expires_at is not None and consent.expires_at <= at)
    purposes = []
    for p in sorted(consent.purposes, key=lambda p: p.value):
        purposes.append({"system": SYSTEM_PURPOSE, "code": p.value, "display": p.value})
        if p in _PURPOSE_CODES:
            code, display = _PURPOSE_CODES[p]
            purposes.append({"system": _V3_ACT_REASON, "code": code, "display": display})
    extensions = [
        {"url": EXT_BASE + "identifiable-images-covered", "valueBoolean": consent.identifiable},
        {"url": EXT_BASE + "consent-basis", "valueCode": consent.basis.value},
        {"url": EXT_BASE + "retention", "valueDuration": {
            "value": int(consent.retention.total_seconds() // 86400), "unit": "d",
            "system": "http://unitsofmeasure.org", "code": "d"}},
    ]
    if consent.gillick_competent is not None:
        extensions.append({"url": EXT_BASE + "gillick-competent", "valueBoolean": consent.gillick_competent})
    if consent.age_out_at is not None:
        extensions.append({"url": EXT_BASE + "parental-consent-ends", "valueDateTime": _iso(consent.age_out_at)})
    if consent.best_interests_statement:
        # a deceased patient's record holds their known wishes / the views of those close to them,
        # not a best-interests statement (issue 12)
        kind = "known-wishes-statement" if consent.basis.deceased else "best-interests-statement"
        extensions.append({"url": EXT_BASE + kind, "valueString": consent.best_interests_statement})
    if consent.withdrawn_at is not None:
        extensions.append({"url": EXT_BASE + "withdrawn-at", "valueDateTime": _iso(consent.withdrawn_at)})
    return {
        "resourceType": "Consent",
        "id": consent.consent_id,
        "extension": extensions,
        "identifier": [{"system": SYSTEM_CONSENT, "value": consent.consent_id}],
        "status": "inactive" if inactive else "active",
        "scope": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
            "code": "patient-privacy", "display": "Privacy Consent"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}],
                      "text": "Consent to take and share clinical photographs"}],
        "patient": subject,
        "dateTime": _iso(consent.recorded_at),
        "performer": [{"display": _CONSENTER.get(consent.basis.value, consent.basis.value)}],
        "organization": [{"display": consent.practice}],
        "policyRule": {"text": "Explicit consent for each purpose before a clinical image is taken or shared (GMC)."},
        "verification": [{"verified": consent.recorded_in_notes, "verificationDate": _iso(consent.recorded_at)}],
        "provision": {
            "type": "permit",
            "period": {"start": _iso(consent.recorded_at), "end": _iso(consent.withdrawn_at or consent.expires_at)},
            "actor": [{
                "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                     "code": "AUT", "display": "author (originator)"}]},
                "reference": _user(consent.recorded_by),
            }],
            "purpose": purposes,
        },
    }


SYSTEM_NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"


def build_bundle(
    consent: ConsentRecord,
    referral: Referral,
    images: Sequence[ExportImage],
    *,
    at: datetime,
    nhs_number: str | None = None,
    document: bool = False,
    version: int = 1,
) -> dict[str, Any]:
    """The bundle as plain JSON (not yet validated: see :func:`export_bundle`).
    ``nhs_number``: when filing into the record, the patient is identified by it
    (system https://fhir.nhs.uk/Id/nhs-number) so the receiving system can match them;
    otherwise only by the bot's pseudonymous keyed hash."""
    if consent.consent_id != referral.consent_id:
        raise ExportError(f"consent {consent.consent_id} is not the consent of referral {referral.referral_id}")
    rid = referral.referral_id
    if nhs_number:
        subject = {"identifier": {"system": SYSTEM_NHS_NUMBER, "value": nhs_number}, "display": f"NHS number {nhs_number}"}
    else:
        subject = {"identifier": {"system": SYSTEM_PATIENT_REF, "value": consent.patient_ref},
                   "display": "Patient (pseudonymous reference held by the referral bot)"}
    url_sr, url_consent, url_report = _uid(rid, "ServiceRequest"), _uid(rid, "Consent"), _uid(rid, "DiagnosticReport")
    media_urls = [_uid(rid, "Media", im.item.image_id) for im in images]

    service_request = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "identifier": [{"system": SYSTEM_REFERRAL, "value": rid}],
        "status": _service_request_status(referral),
        "intent": "order",
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "3457005",
                                  "display": "Patient referral"}]}],
        "code": {"text": f"Specialist advice and guidance: {referral.specialty}"},
        "subject": subject,
        "authoredOn": _iso(referral.opened_at),
        "requester": _user(referral.referrer),
        "performerType": {"text": referral.specialty},
        "supportingInfo": [{"reference": url_consent}] + [{"reference": u} for u in media_urls],
        "note": [{"text": referral.question, "time": _iso(referral.opened_at)}],
    }

    media_resources = []
    for im, url in zip(images, media_urls):
        item = im.item
        content: dict[str, Any] = {"contentType": item.media_type, "title": item.filename,
                                   "creation": _iso(item.received_at)}
        notes = []
        if im.data is not None:
            content["data"] = base64.b64encode(im.data).decode("ascii")
            content["size"] = len(im.data)
            content["hash"] = base64.b64encode(hashlib.sha1(im.data).digest()).decode("ascii")
        else:
            notes.append({"text": "The image itself was destroyed (vault copy crypto-shredded) before this export."})
        if item.removed_metadata:
            notes.append({"text": "Metadata removed before sharing: " + ", ".join(item.removed_metadata)})
        if item.faces:
            notes.append({"text": f"Faces detected: {item.faces}" + (" (blurred)" if item.faces_blurred else "")})
        media_resources.append({
            "resourceType": "Media",
            "id": item.image_id if _valid_id(item.image_id) else None,
            "identifier": [{"system": SYSTEM_IMAGE, "value": item.image_id}],
            "basedOn": [{"reference": url_sr}],
            "status": "completed",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/media-type",
                                 "code": "image", "display": "Image"}]},
            "subject": subject,
            "createdDateTime": _iso(item.received_at),
            "operator": _user(referral.referrer),
            "height": item.height or None,
            "width": item.width or None,
            "content": content,
            "note": notes,
        })

    entries = [
        {"fullUrl": url_sr, "resource": service_request},
        {"fullUrl": url_consent, "resource": _consent_resource(consent, subject, at)},
    ]
    entries += [{"fullUrl": u, "resource": m} for u, m in zip(media_urls, media_resources)]
    if referral.opinion is not None:
        entries.append({"fullUrl": url_report, "resource": {
            "resourceType": "DiagnosticReport",
            "identifier": [{"system": SYSTEM_REFERRAL, "value": rid + "/opinion"}],
            "basedOn": [{"reference": url_sr}],
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}],
                     "text": f"Specialist opinion: {referral.specialty}"},
            "subject": subject,
            "effectiveDateTime": _iso(referral.opinion_at),
            "issued": _iso(referral.opinion_at),
            "performer": [_user(referral.opinion_by)] if referral.opinion_by else [],
            "media": [{"link": {"reference": u}} for u in media_urls],
            "conclusion": _conclusion(referral),
        }})
    bundle_type = "collection"
    if document:
        # a FHIR document: a Composition first, its sections pointing at the resources
        # (https://hl7.org/fhir/R4/documents.html), which a GP system can file as one letter
        sections = [
            {"title": "Clinical question", "entry": [{"reference": url_sr}]},
            {"title": "Consent", "entry": [{"reference": url_consent}]},
        ]
        if media_urls:
            sections.append({"title": "Images", "entry": [{"reference": u} for u in media_urls]})
        if referral.opinion is not None:
            sections.append({"title": "Specialist opinion", "entry": [{"reference": url_report}]})
        composition = {
            "resourceType": "Composition",
            "identifier": {"system": SYSTEM_REFERRAL, "value": f"{rid}/v{version}"},
            "status": "final",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}]},
            "subject": subject,
            "date": _iso(at),
            "author": [_user(referral.opinion_by or referral.referrer)],
            "title": f"Specialist advice and guidance: {referral.specialty} ({rid})",
            "section": sections,
        }
        entries.insert(0, {"fullUrl": _uid(rid, "Composition", str(version)), "resource": composition})
        bundle_type = "document"
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": SYSTEM_REFERRAL, "value": rid if not document else f"{rid}/v{version}"},
        "type": bundle_type,
        "timestamp": _iso(at),
        "entry": entries,
    }
    return _drop_none(bundle)


def _conclusion(referral: Any) -> str:
    """The opinion, followed by any addenda (``!addendum``) with who and when."""
    parts = [referral.opinion]
    for add in getattr(referral, "addenda", ()):
        parts.append(f"Addendum ({add.by}, {_iso(add.at)}): {add.text}")
    return "\n\n".join(parts)


def _valid_id(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", value))


def validate(bundle: dict[str, Any]) -> Any:
    """Validate with fhir.resources (R4B models); returns the model or raises ExportError."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        return Bundle.model_validate(bundle)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ExportError(f"the FHIR bundle did not validate at {where or 'top level'}: {first.get('msg')}") from None


def export_bundle(consent: ConsentRecord, referral: Referral, images: Sequence[ExportImage], *, at: datetime,
                  nhs_number: str | None = None, document: bool = False, version: int = 1) -> ExportResult:
    bundle = build_bundle(consent, referral, images, at=at, nhs_number=nhs_number, document=document, version=version)
    validate(bundle)
    return ExportResult(
        referral_id=referral.referral_id,
        bundle=bundle,
        images_included=[im.item.image_id for im in images if im.data is not None],
        images_missing=[im.item.image_id for im in images if im.data is None],
    )


def exportable_images(referral: Referral) -> list[ImageItem]:
    """Images that belong in the record: everything accepted, not those the GP discarded."""
    return [i for i in referral.images if i.state is not ImageState.DISCARDED]


async def export_referral(store: Any, referral_id: str, *, at: datetime) -> ExportResult:
    """Read the referral, its consent and its images (decrypted) from ``store`` and build
    the validated bundle. Nothing is shredded here: the caller does that once the
    bundle is safely written (``referral-bot export``) or reports ``ExportCompleted``
    (the bot's ``!export``), so a crash in between loses nothing."""
    async with store.read() as tx:
        referral = await tx.get_referral(referral_id)
        if referral is None:
            raise ExportError(f"no referral {referral_id}")
        consent = await tx.get_consent(referral.consent_id)
        if consent is None:
            raise ExportError(f"the consent {referral.consent_id} of referral {referral_id} is missing")
        images = []
        for item in exportable_images(referral):
            found = await tx.vault_item(item.image_id)
            images.append(ExportImage(item, None if found is None else found.data))
    return export_bundle(consent, referral, images, at=at)


def write_private(path: Path, text: str | bytes, *, overwrite: bool = True, mode: int = 0o600) -> None:
    """Write ``text`` atomically with ``mode`` (0600 by default).

    The temporary file gets an unguessable name in the same folder and is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW``: a file or symlink someone planted at a predictable
    name is never opened, followed or truncated (issue 9, finding 9). It is fsynced, then
    renamed over ``path`` (``rename`` replaces a symlink at ``path`` itself rather than
    following it), and the folder is fsynced so the rename survives a crash."""
    import secrets

    path = Path(path)
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(f"{path} already exists")
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    tmp = path.with_name(f".{secrets.token_hex(16)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never replaces it
            os.unlink(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def legacy_export_files(directory: str | os.PathLike[str], referral_id: str) -> list[Path]:
    """FHIR files the old ``!export`` left in its folder for this referral
    (``<R-id>-<time>.fhir.json``): deleted on withdrawal and at the end of retention."""
    folder = Path(directory)
    if not folder.is_dir() or not re.fullmatch(r"R-[0-9A-Z]+", referral_id):
        return []
    return sorted(p for p in folder.glob(f"{referral_id}-*.fhir.json") if p.is_file() and not p.is_symlink())
