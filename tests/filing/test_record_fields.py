"""The structured referral in the filed record (issue 12 part 1, issue 11 part 3): the PDF,
the FHIR bundle and each DICOM instance carry site, duration, urgency, history, the
intimate area and the chaperone; without the fields the record reads as before."""
from __future__ import annotations

import io
import json

import pydicom

from bot.filing.dicom import instance_bytes
from bot.filing.pdf import render_pdf
from bot.filing.sinks import render_documents

from .conftest import QUESTION, make_referral, record_of
from .test_record_pdf import pdf_text

FIELDS = ('site=left labium majus; duration=4 months; urgency=2ww; history="lichen sclerosus since 2019, on '
          'clobetasol"; intimate=yes')
CHAPERONE = 'intimate=yes chaperone="Nurse A Khan, practice nurse"'


async def _filed_with_fields():
    h, cid, rid = await make_referral(images=1, consent_extra=CHAPERONE, refer_fields=FIELDS)
    return h, rid, await record_of(h, rid)


async def test_pdf_lists_the_fields_and_the_chaperone():
    _h, _rid, record = await _filed_with_fields()
    text, _ = pdf_text(render_pdf(record))
    text = " ".join(text.split())  # wrapped lines
    for words in ("Urgency", "2WW (suspected cancer)", "left labium majus", "4 months",
                  "lichen sclerosus since 2019, on clobetasol", "Intimate area",
                  "chaperone: Nurse A Khan, practice nurse", "intimate images covered", QUESTION):
        assert words in text, words


async def test_fhir_carries_priority_body_site_notes_and_the_consent_extensions():
    _h, _rid, record = await _filed_with_fields()
    bundle = json.loads(render_documents(record).fhir_json)  # validated by render_documents
    resources = [e["resource"] for e in bundle["entry"]]
    sr = next(r for r in resources if r["resourceType"] == "ServiceRequest")
    assert sr["priority"] == "urgent" and sr["bodySite"] == [{"text": "left labium majus"}]
    assert {"url": "urn:referral-bot:fhir:extension:urgency", "valueCode": "2ww"} in sr["extension"]
    assert {"url": "urn:referral-bot:fhir:extension:intimate-area", "valueBoolean": True} in sr["extension"]
    notes = [n["text"] for n in sr["note"]]
    assert notes == [QUESTION, "Duration: 4 months", "History: lichen sclerosus since 2019, on clobetasol"]
    consent = next(r for r in resources if r["resourceType"] == "Consent")
    ext = {e["url"].rsplit(":", 1)[1]: e for e in consent["extension"]}
    assert ext["intimate-images-covered"]["valueBoolean"] is True
    assert ext["chaperone"]["valueString"] == "Nurse A Khan, practice nurse"


async def test_dicom_body_site_comes_from_site():
    _h, _rid, record = await _filed_with_fields()
    ds = pydicom.dcmread(io.BytesIO(instance_bytes(record, record.images_with_data[0])))
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "left labium majus"
    assert "chaperone: Nurse A Khan" in ds.ImageComments and "intimate images covered" in ds.ImageComments


async def test_a_record_without_fields_reads_as_before(filed):
    _h, _rid, record = filed
    ds = pydicom.dcmread(io.BytesIO(instance_bytes(record, record.images_with_data[0])))
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Left forearm: pigmented lesion"  # the question's start
    bundle = json.loads(render_documents(record).fhir_json)
    sr = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ServiceRequest")
    assert sr["priority"] == "routine" and "bodySite" not in sr and len(sr["note"]) == 1
    text, _ = pdf_text(render_pdf(record))
    assert "routine" in text and "intimate images NOT covered" in text and "Intimate area" not in text
