"""The record document: everything about one referral that belongs in the patient's
record, in one immutable value that the renderers (PDF, DICOM, FHIR) read.

``build_record`` is pure. ``load_record`` reads the referral, its consent, the clean
images and the patient reference (decrypted from the vault) and the referral's audit
trail from a store; it changes nothing.

What goes in, and why:

* the clean images (metadata already stripped; faces blurred where the consent did not
  cover identifiable images) - unless the vault copy is gone: after a withdrawal the
  record is filed WITHOUT images (docs/filing.md, "withdrawal");
* the clinical question and the structured fields of ``!refer`` (site, duration,
  urgency, history, intimate area: ``RecordDocument.details``), the opinion, who gave
  it and when, and the addenda (``!addendum`` after a filed record files it again);
* the consent: who gave it, for what, identifiable images covered or not, recorded in
  the notes, withdrawn when (GMC recordings guidance para 14: record the key elements
  of the consent discussion in the record); intimate images covered and the chaperone
  (GMC Intimate examinations and chaperones: record who chaperoned);
* a short timeline (opened, posted, discussed, opinion, removed, closed).

The patient reference is used only to label the record for the receiving system
(Patient ID); it never goes into a log, the audit or a chat.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

from handlers.model import CloseReason, ConsentRecord, ImageState, Referral, ReferralDetails
from handlers.patientref import is_nhs_number, normalise_patient_ref, patient_ref_vault_id
from handlers.timefmt import DEFAULT_ZONE, fmt_stamp

__all__ = ["RecordImage", "Addendum", "RecordDocument", "build_record", "load_record", "CONSENTER"]

CONSENTER = {
    "patient": "the patient",
    "parent": "a parent or guardian (child not Gillick competent)",
    "attorney": "an LPA health and welfare attorney",
    "deputy": "a court-appointed deputy",
    "best-interests": "a best-interests decision (nobody holds authority)",
    "deceased-wishes": "the known wishes of the deceased patient",
    "executor": "the executor of the deceased patient",
    "family": "the family of the deceased patient",
}


@dataclass(frozen=True)
class RecordImage:
    image_id: str
    filename: str
    media_type: str
    received_at: datetime
    width: int
    height: int
    data: bytes | None  # None: the vault copy is gone (withdrawn, or retention ended)
    faces: int = 0
    faces_blurred: bool = False
    removed_metadata: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the bytes
        return f"RecordImage({self.image_id!r}, {self.filename!r}, bytes={0 if self.data is None else len(self.data)})"


@dataclass(frozen=True)
class Addendum:
    at: datetime
    by: str
    text: str


@dataclass(frozen=True)
class RecordDocument:
    referral_id: str
    version: int
    generated_at: datetime
    patient_id: str | None  # normalised reference (e.g. the NHS number); None if not kept
    practice: str
    referrer: str
    specialty: str
    state: str
    close_reason: str | None
    opened_at: datetime
    question: str
    opinion: str | None
    opinion_by: str | None
    opinion_at: datetime | None
    addenda: tuple[Addendum, ...]
    consent: ConsentRecord
    images: tuple[RecordImage, ...]
    timeline: tuple[tuple[datetime, str], ...]
    referral: Referral  # for the FHIR bundle
    time_zone: str = DEFAULT_ZONE  # times in the documents people read: local, with the zone (storage is UTC)

    @property
    def details(self) -> ReferralDetails:
        """Site, duration, urgency, history, intimate area (``!refer``'s fields)."""
        return self.referral.details

    @property
    def nhs_number(self) -> str | None:
        """The patient reference when it is a valid NHS number, else None."""
        return self.patient_id if self.patient_id and is_nhs_number(self.patient_id) else None

    @property
    def withdrawn(self) -> bool:
        return self.consent.withdrawn or self.close_reason == CloseReason.WITHDRAWN.value

    @property
    def images_with_data(self) -> tuple[RecordImage, ...]:
        return tuple(i for i in self.images if i.data is not None)

    @property
    def consent_words(self) -> str:
        c = self.consent
        purposes = ", ".join(sorted(p.value for p in c.purposes))
        ident = "identifiable images covered" if c.identifiable else "identifiable images NOT covered (each photo checked for faces and text before posting)"
        notes = "recorded in the notes" if c.recorded_in_notes else "NOT confirmed as recorded in the notes"
        intimate = "intimate images NOT covered"
        if c.intimate is True:
            intimate = "intimate images covered" + (f" (chaperone: {c.chaperone})" if c.chaperone
                                                    else " (no chaperone recorded)")
        text = (f"Consent {c.consent_id} given by {CONSENTER.get(c.basis.value, c.basis.value)} for {purposes}; "
                f"{ident}; {intimate}; {notes}; recorded by {c.recorded_by} on {_when(c.recorded_at, self.time_zone)}.")
        if c.withdrawn_at is not None:
            text += f" WITHDRAWN on {_when(c.withdrawn_at, self.time_zone)}."
        return text

    def __repr__(self) -> str:  # never the patient reference or clinical text
        return f"RecordDocument({self.referral_id!r}, version={self.version}, images={len(self.images)})"


def _when(at: datetime, zone: str = DEFAULT_ZONE) -> str:
    return fmt_stamp(at, zone)


_TIMELINE = {
    "referral.opened": "Referral opened by {actor}",
    "thread.posted": "Question posted to the specialists",
    "image.posted": "Image posted to the specialists' thread",
    "thread.discussed": "Discussed by {actor}",
    "thread.relayed_to_gp": "Message from {actor} passed to the referring GP",
    "thread.relayed_to_thread": "The referring GP answered in the thread",
    "photos.requested": "Another photo asked for by {actor}",
    "opinion.given": "Opinion given by {actor}",
    "opinion.addendum": "Addendum by {actor}",
    "image.removed": "Images removed from the chat",
    "referral.cancelled": "Referral cancelled by {actor}",
    "referral.cancer_pathway_reminder": "GP reminded: suspected cancer goes through the 2-week-wait pathway (NICE NG12)",
    "referral.originals_reminder": "GP asked to delete the original photos from the phone and its backups",
    "referral.escalated": "Escalated: no opinion yet, the specialty asked to answer and the GP told",
    "referral.reminder": "GP warned that the referral would expire without an opinion",
    "referral.expired": "Referral expired without an opinion",
    "referral.withdrawn": "Consent withdrawn ({actor}); images destroyed",
    "referral.closed": "Referral closed",
    "record.filed": "Filed into the record",
}


def timeline_of(entries: Iterable[Any]) -> tuple[tuple[datetime, str], ...]:
    """Plain lines from the referral's audit entries; repeated lines collapse."""
    out: list[tuple[datetime, str]] = []
    for e in entries:
        template = _TIMELINE.get(e.action)
        if template is None:
            continue
        line = template.format(actor=e.actor)
        if out and out[-1][1] == line:
            continue
        out.append((e.at, line))
    return tuple(out)


def build_record(
    *,
    referral: Referral,
    consent: ConsentRecord,
    images: Iterable[RecordImage],
    patient_id: str | None,
    audit_entries: Iterable[Any],
    version: int,
    at: datetime,
    time_zone: str = DEFAULT_ZONE,
) -> RecordDocument:
    addenda = tuple(
        Addendum(at=a.at, by=a.by, text=a.text) if not isinstance(a, Addendum) else a
        for a in getattr(referral, "addenda", ()) or ()
    )
    return RecordDocument(
        referral_id=referral.referral_id,
        version=version,
        generated_at=at,
        patient_id=normalise_patient_ref(patient_id) if patient_id else None,
        practice=referral.practice,
        referrer=referral.referrer,
        specialty=referral.specialty,
        state=referral.state.value,
        close_reason=None if referral.close_reason is None else referral.close_reason.value,
        opened_at=referral.opened_at,
        question=referral.question,
        opinion=referral.opinion,
        opinion_by=referral.opinion_by,
        opinion_at=referral.opinion_at,
        addenda=addenda,
        consent=consent,
        images=tuple(images),
        timeline=timeline_of(audit_entries),
        referral=referral,
        time_zone=time_zone,
    )


async def load_record(store: Any, referral_id: str, *, version: int, at: datetime,
                      time_zone: str = DEFAULT_ZONE) -> RecordDocument:
    """Read everything the record needs from ``store`` (``read()`` + ``audit_entries()``)."""
    async with store.read() as tx:
        referral = await tx.get_referral(referral_id)
        if referral is None:
            raise LookupError(f"no referral {referral_id}")
        consent = await tx.get_consent(referral.consent_id)
        if consent is None:
            raise LookupError(f"the consent of {referral_id} is missing")
        raw_ref = await tx.vault_get(patient_ref_vault_id(consent.consent_id))
        images = []
        for item in referral.images:
            if item.state is ImageState.DISCARDED:
                continue  # never shown to anyone: not part of the record
            data = None if consent.withdrawn else await tx.vault_get(item.image_id)
            images.append(RecordImage(
                image_id=item.image_id, filename=item.filename, media_type=item.media_type,
                received_at=item.received_at, width=item.width, height=item.height, data=data,
                faces=item.faces, faces_blurred=item.faces_blurred, removed_metadata=tuple(item.removed_metadata)))
    entries = await store.audit_entries(referral_id)
    return build_record(
        referral=referral, consent=consent, images=images,
        patient_id=None if raw_ref is None else raw_ref.decode("utf-8"),
        audit_entries=entries, version=version, at=at, time_zone=time_zone)
