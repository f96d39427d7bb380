"""Each image of a record as a DICOM VL Photographic Image object, for a PACS.

Built with pydicom from the clean image and the record only: nothing of the original
file's metadata exists here any more (the sanitizer dropped it before the vault), and no
attribute is copied from an image file. What is set:

* Patient: Patient ID = the NHS number, Issuer of Patient ID "NHS" with the qualifiers
  (universal entity id = the NHS number's OID 2.16.840.1.113883.2.1.4.1, type ISO).
  Patient's Name is left empty on purpose: the bot never holds it; the PACS matches on
  the ID. A record without a valid NHS number is not sent to PACS (the sink says so).
* Study = the referral: Study Instance UID derived from the referral id, Accession
  Number = the referral id, Study Description "Specialist advice: <specialty>",
  Referring Physician = the GP.
* One series per referral ("Clinical photographs for specialist advice"), modality XC (external-camera photography). SOP Instance UID derived from the image
  id, so a re-filed image is the same instance (idempotent), not a copy.
* Body site: Anatomic Region Sequence with the words the GP gave in ``site=`` (not
  coded, so the text is the Code Meaning under a local coding scheme); a referral without
  ``site=`` falls back to the start of its question.
* Consent: Consent for Clinical Trial Use Sequence (0012,0083) with Consent for
  Distribution Flag (0012,0085) = NO (the consent covers care, not teaching or
  publication) or YES with a Distribution Type when the GP recorded those purposes;
  the consent in words (who, purposes, identifiable or not) in Image Comments.
* Pixels: a JPEG goes in as it is, encapsulated (JPEG Baseline transfer syntax): the
  exact bytes the specialist saw. Other formats are stored uncompressed RGB.

UIDs are under the 2.25 (UUID-derived) root, so no organisation root is needed.
"""
from __future__ import annotations

import hashlib
import io
import uuid
from datetime import datetime

from bot.filing.record import RecordDocument, RecordImage
from handlers.model import Purpose

__all__ = ["VL_PHOTOGRAPHIC_IMAGE", "NHS_NUMBER_OID", "uid_for", "build_instances", "instance_bytes"]

VL_PHOTOGRAPHIC_IMAGE = "1.2.840.10008.5.1.4.1.1.77.1.4"
NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"


def uid_for(*parts: str) -> str:
    """A stable DICOM UID (2.25.<decimal UUID>) from names: same input, same UID."""
    digest = hashlib.sha256("referral-bot dicom v1/".encode() + "/".join(parts).encode()).digest()
    return "2.25." + str(uuid.UUID(bytes=digest[:16]).int)


def _date(at: datetime) -> str:
    return at.strftime("%Y%m%d")


def _time(at: datetime) -> str:
    return at.strftime("%H%M%S")


def _site_words(question: str) -> str:
    """The body site of a referral without ``site=``: the start of the question, up to
    the first stop."""
    first = question.replace("\n", " ").split(".")[0].split(",")[0].strip()
    return first[:64] or "not stated"


def instance_bytes(record: RecordDocument, img: RecordImage, *, series_number: int = 1) -> bytes:
    """One image as a DICOM Part 10 file (bytes)."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import UID

    if img.data is None:
        raise ValueError(f"{img.image_id} has no image data to file")
    if not record.nhs_number:
        raise ValueError("the record has no valid NHS number")
    at = record.generated_at
    sop_uid = uid_for(record.referral_id, img.image_id)
    study_uid = uid_for(record.referral_id, "study")
    series_uid = uid_for(record.referral_id, "series")  # stable: a re-filed instance stays in its series

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(VL_PHOTOGRAPHIC_IMAGE)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.ImplementationClassUID = UID(uid_for("referral-bot implementation"))
    meta.ImplementationVersionName = "REFERRALBOT1"

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: clinical words in any language
    ds.SOPClassUID = VL_PHOTOGRAPHIC_IMAGE
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["DERIVED", "PRIMARY"]  # derived: the metadata was stripped, faces maybe blurred
    ds.StudyDate = _date(record.opened_at)
    ds.StudyTime = _time(record.opened_at)
    ds.ContentDate = _date(img.received_at)
    ds.ContentTime = _time(img.received_at)
    ds.SeriesDate = _date(at)
    ds.SeriesTime = _time(at)
    ds.AccessionNumber = record.referral_id[:16]
    ds.Modality = "XC"
    ds.Manufacturer = "referral-bot"
    ds.ReferringPhysicianName = record.referrer[:64]
    ds.StudyDescription = f"Specialist advice: {record.specialty}"[:64]
    ds.SeriesDescription = "Clinical photographs for specialist advice"
    ds.InstitutionName = record.practice[:64]
    # patient: the NHS number only (the bot never holds a name or a birth date)
    ds.PatientName = ""
    ds.PatientID = record.nhs_number
    ds.IssuerOfPatientID = "NHS"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = NHS_NUMBER_OID
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = record.referral_id[:16]
    ds.SeriesNumber = series_number
    ds.InstanceNumber = next((n for n, i in enumerate(record.images, 1) if i.image_id == img.image_id), 1)
    ds.Laterality = ""
    ds.PatientOrientation = ""
    site = Dataset()
    site.CodeValue = "SITE-AS-GIVEN"
    site.CodingSchemeDesignator = "99RBOT"
    site.CodeMeaning = (record.details.site or "")[:64] or _site_words(record.question)
    ds.AnatomicRegionSequence = Sequence([site])
    ds.ImageComments = (f"Referral {record.referral_id}; {record.consent_words} Metadata removed before sharing"
                        + (f"; {img.faces} face(s) blurred" if img.faces_blurred else "") + ".")[:10240]
    # consent: DICOM's consent attributes (Consent for Clinical Trial Use Sequence,
    # 0012,0083) say whether the image may be distributed beyond the patient's care:
    # NO unless the GP recorded teaching/research/publication; WITHDRAWN never reaches
    # here (a withdrawn record has no images). The care consent itself is in the comments.
    others = record.consent.purposes - {Purpose.CARE}
    consent = Dataset()
    consent.ConsentForDistributionFlag = "YES" if others else "NO"
    if others:
        consent.DistributionType = "PUBLIC_RELEASE" if Purpose.PUBLICATION in others else "RESTRICTED_REUSE"
    ds.ConsentForClinicalTrialUseSequence = Sequence([consent])
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "YES" if (record.consent.identifiable and img.faces and not img.faces_blurred) else "NO"
    ds.LossyImageCompression = "01" if img.media_type == "image/jpeg" else "00"

    with Image.open(io.BytesIO(img.data)) as im:
        im.load()
        width, height = im.size
        rgb = im.convert("RGB") if img.media_type != "image/jpeg" else None
        jpeg_mode = im.mode
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    if img.media_type == "image/jpeg":
        ds.SamplesPerPixel = 1 if jpeg_mode == "L" else 3
        ds.PhotometricInterpretation = "MONOCHROME2" if jpeg_mode == "L" else "YBR_FULL_422"
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        ds.LossyImageCompressionMethod = "ISO_10918_1"
        meta.TransferSyntaxUID = UID(JPEG_BASELINE)
        ds.PixelData = encapsulate([img.data])
        ds["PixelData"].VR = "OB"
    else:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        ds.PixelData = rgb.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build_instances(record: RecordDocument) -> list[tuple[str, bytes]]:
    """``(sop_instance_uid, part-10 bytes)`` for every image the record holds."""
    return [(uid_for(record.referral_id, img.image_id), instance_bytes(record, img))
            for img in record.images_with_data]
