"""The record document and its PDF: read back with a PDF library (text and images)."""
from __future__ import annotations

import io
import json

from pypdf import PdfReader

from bot.filing.pdf import render_pdf
from bot.filing.sinks import render_documents

from .conftest import NHS, OPINION, QUESTION, make_referral, record_of


def pdf_text(data: bytes) -> tuple[str, PdfReader]:
    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages), reader


async def test_pdf_has_everything_a_clinician_needs_on_one_page(filed):
    h, rid, record = filed
    text, reader = pdf_text(render_pdf(record, title="Dermatology advice"))
    assert len(reader.pages) == 1
    for words in (rid, "943 476 5919", "Riverside Surgery", "@gp:example.org", QUESTION, OPINION,
                  "@derm:example.org", "given by the patient for care", "NOT covered", "recorded in the notes",
                  "Timeline", "Referral opened by @gp:example.org", "Opinion given by @derm:example.org",
                  "Metadata (location, device, capture time) was removed"):
        assert words in text, words
    # the images in the PDF are the vault's clean JPEGs byte for byte (embedded, not re-encoded)
    embedded = [xobj.get_object()._data for page in reader.pages
                for xobj in page["/Resources"]["/XObject"].values()]
    vault = [await h.store.vault_get(i.image_id) for i in h.store.referral(rid).images]
    assert len(embedded) == 2 and sorted(embedded) == sorted(vault) and vault[0] != vault[1]
    assert all(len(im.data) > 0 for page in reader.pages for im in page.images)  # and they decode
    # nothing of the original files' metadata made it in
    assert all(b"PhoneMaker" not in im and b"SERIAL123456" not in im for im in embedded)


async def test_many_images_take_two_pages_at_most():
    h, _cid, rid = await make_referral(images=6)
    text, reader = pdf_text(render_pdf(await record_of(h, rid)))
    assert len(reader.pages) == 2 and sum(len(p.images) for p in reader.pages) == 6
    assert "Timeline" in text


async def test_withdrawn_record_has_no_images_and_says_why():
    h, cid, rid = await make_referral(withdraw=True)
    record = await record_of(h, rid)
    docs = render_documents(record)
    text, reader = pdf_text(docs.pdf)
    assert sum(len(p.images) for p in reader.pages) == 0
    assert "consent was withdrawn" in text and OPINION in text and "WITHDRAWN" in text
    # the patient reference was shredded with the images: the record names no patient
    assert record.patient_id is None and NHS not in text
    bundle = json.loads(docs.fhir_json)
    assert all("data" not in e["resource"].get("content", {}) for e in bundle["entry"])


async def test_fhir_document_bundle_identifies_the_patient_by_nhs_number(filed):
    _h, rid, record = filed
    from fhir.resources.R4B.bundle import Bundle

    docs = render_documents(record)
    bundle = Bundle.model_validate_json(docs.fhir_json)
    assert bundle.type == "document" and bundle.entry[0].resource.__resource_type__ == "Composition"
    composition = bundle.entry[0].resource
    assert composition.subject.identifier.system == "https://fhir.nhs.uk/Id/nhs-number"
    assert composition.subject.identifier.value == NHS
    titles = [s.title for s in composition.section]
    assert titles == ["Clinical question", "Consent", "Images", "Specialist opinion"]


async def test_the_record_leaves_a_place_for_addenda(filed):
    _h, _rid, record = filed
    import dataclasses
    from datetime import timedelta

    from bot.filing.record import Addendum

    later = dataclasses.replace(record, addenda=(Addendum(record.generated_at + timedelta(hours=1), "@derm:example.org",
                                                          "Histology confirms the diagnosis."),))
    text, _ = pdf_text(render_pdf(later))
    assert "Histology confirms the diagnosis." in text and "Addenda" in text


async def test_times_in_the_record_are_local_with_the_zone(filed):
    import dataclasses
    from datetime import datetime, timezone

    _h, _rid, record = filed
    text, _ = pdf_text(render_pdf(record))
    assert "2 Mar 2026 09:00 GMT" in text and "UTC" not in text  # opened in winter: GMT
    summer = dataclasses.replace(record, opened_at=datetime(2026, 7, 1, 8, 0, tzinfo=timezone.utc))
    assert "1 Jul 2026 09:00 BST" in pdf_text(render_pdf(summer))[0]
    new_york = dataclasses.replace(summer, time_zone="America/New_York")
    assert "1 Jul 2026 04:00 EDT" in pdf_text(render_pdf(new_york))[0]
