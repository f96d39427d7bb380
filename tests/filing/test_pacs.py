"""Filing to a real PACS: Orthanc with its DICOMweb plugin, on loopback (marked
``orthanc``; run alone with ``pytest -m orthanc``). STOW-RS in, QIDO-RS and WADO-RS out,
then the pixels and the tags are checked."""
from __future__ import annotations

import io
import json
import urllib.request

import pytest

from bot.filing.dicom import NHS_NUMBER_OID, VL_PHOTOGRAPHIC_IMAGE, uid_for
from bot.filing.sinks import DicomWebSink, SinkError

from .conftest import NHS, make_referral, record_of

pytestmark = pytest.mark.orthanc


def _get(url: str, accept: str) -> tuple[bytes, str]:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=20) as resp:
        return resp.read(), resp.headers.get("Content-Type", "")


def _multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = next(p.split("=", 1)[1].strip('"') for p in content_type.split(";") if p.strip().startswith("boundary="))
    parts = []
    for chunk in body.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload[:-2] if payload.endswith(b"\r\n") else payload)
    return parts


async def test_images_filed_to_pacs_read_back_with_pixels_and_tags(orthanc):
    import pydicom

    h, cid, rid = await make_referral()
    record = await record_of(h, rid)
    sink = DicomWebSink(name="pacs", label="the hospital PACS", url=orthanc.dicomweb_url)
    await sink.file(record, None)
    await sink.file(record, None)  # a retry: the same instances, not copies

    # QIDO-RS: the patient's study, found by NHS number
    body, _ = _get(f"{orthanc.dicomweb_url}/studies?PatientID={NHS}", "application/dicom+json")
    studies = json.loads(body)
    assert len(studies) == 1
    study_uid = studies[0]["0020000D"]["Value"][0]
    assert study_uid == uid_for(rid, "study") and studies[0]["00080050"]["Value"] == [rid]
    body, _ = _get(f"{orthanc.dicomweb_url}/studies/{study_uid}/instances", "application/dicom+json")
    instances = json.loads(body)
    assert len(instances) == 2
    assert {i["00080016"]["Value"][0] for i in instances} == {VL_PHOTOGRAPHIC_IMAGE}

    # WADO-RS: every instance back, its pixels the clean image's, its tags right
    vault = {i.image_id: await h.store.vault_get(i.image_id) for i in h.store.referral(rid).images}
    body, ctype = _get(f"{orthanc.dicomweb_url}/studies/{study_uid}",
                       'multipart/related; type="application/dicom"; transfer-syntax=*')  # as stored
    datasets = [pydicom.dcmread(io.BytesIO(p)) for p in _multipart_parts(body, ctype)]
    assert len(datasets) == 2
    from PIL import Image
    import numpy as np

    for ds in datasets:
        image_id = next(i for i in vault if uid_for(rid, i) == ds.SOPInstanceUID)
        # the frame is the vault's JPEG byte for byte, and decodes to the same pixels
        frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
        assert frame.rstrip(b"\x00") == vault[image_id].rstrip(b"\x00")
        want = np.asarray(Image.open(io.BytesIO(vault[image_id])).convert("RGB"))
        got = np.asarray(Image.open(io.BytesIO(frame)).convert("RGB"))
        assert got.shape == (ds.Rows, ds.Columns, 3) and (got == want).all()
        # patient, study, body site, consent; nothing of the original file
        assert ds.PatientID == NHS and ds.IssuerOfPatientID == "NHS"
        assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == NHS_NUMBER_OID
        assert ds.AccessionNumber == rid and ds.Modality == "XC"
        assert ds.AnatomicRegionSequence[0].CodeMeaning == "Left forearm: pigmented lesion"
        assert ds.ConsentForClinicalTrialUseSequence[0].ConsentForDistributionFlag == "NO"
        assert cid in ds.ImageComments and "for care" in ds.ImageComments
        raw = bytes(body)
        for leaked in (b"PhoneMaker", b"Model X", b"SERIAL123456", b"2026:03:01 08:00:00"):
            assert leaked not in raw


async def test_pacs_sink_refuses_a_reference_that_is_not_an_nhs_number(orthanc):
    from tests.handlers.helpers import DERM, GP, Harness, consent_id_from, jpeg_with_metadata, policy, referral_id_from
    from handlers.events import SpecialtyThread

    from handlers.patientref import PatientRefScheme

    # a deployment that accepts its hospital numbers besides NHS numbers (issue 12)
    h = Harness(policy=policy(filing_enabled=True, patient_ref_schemes=(PatientRefScheme("hospital no.", "H[0-9]{7}"),)))
    cid = consent_id_from(await h.say(GP, "!consent patient=H1234567 by=patient adult=yes purposes=care identifiable=no "
                                          "notes=yes specialties=dermatology"))
    rid = referral_id_from(await h.say(GP, f"!refer derm {cid} rash"))
    await h.drain()
    await h.send_image(GP, jpeg_with_metadata())
    await h.drain()
    await h.say(DERM, "!opinion eczema", place=SpecialtyThread("dermatology", rid))
    record = await record_of(h, rid)
    sink = DicomWebSink(name="pacs", label="the hospital PACS", url=orthanc.dicomweb_url)
    with pytest.raises(SinkError, match="not an NHS number"):
        await sink.file(record, None)


async def test_pacs_that_is_down_is_a_plain_failure():
    h, _cid, rid = await make_referral(images=1)
    record = await record_of(h, rid)
    sink = DicomWebSink(name="pacs", label="the hospital PACS", url="http://127.0.0.1:9/dicom-web", timeout=5)
    with pytest.raises(SinkError, match="could not be reached"):
        await sink.file(record, None)
