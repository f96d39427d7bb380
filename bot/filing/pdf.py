"""The record as a PDF a clinician reads in a minute: one page, two with several images.

Top to bottom: who and what (patient ID, practice, GP, specialty, dates), the referral's
fields (urgency, site, duration, history, intimate area), the question,
the opinion (and addenda), the images with their file names, the consent, the timeline.
Built with fpdf2 (pure Python, no I/O except reading a system font): JPEG images are
embedded as they are (no re-encoding), so the filed pixels are the ones the specialist saw.
"""
from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

from bot.filing.record import RecordDocument
from handlers.timefmt import DEFAULT_ZONE, fmt_stamp

__all__ = ["render_pdf"]

_FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
_MARGIN = 15
_IMAGE_BOX_H = 70  # mm: two rows of two images fit on the first page with the text


def _when(at: datetime | None, zone: str = DEFAULT_ZONE) -> str:
    """Local time with the zone's abbreviation (``2 Mar 2026 09:00 GMT``); stored UTC."""
    return "-" if at is None else fmt_stamp(at, zone)


def _nhs(number: str) -> str:
    return f"{number[:3]} {number[3:6]} {number[6:]}" if len(number) == 10 else number


class _Doc:
    def __init__(self) -> None:
        from fpdf import FPDF

        pdf = FPDF(format="A4")
        pdf.set_margins(_MARGIN, _MARGIN, _MARGIN)
        pdf.set_auto_page_break(True, margin=_MARGIN)
        regular, bold = _FONT_DIR / "DejaVuSans.ttf", _FONT_DIR / "DejaVuSans-Bold.ttf"
        if regular.exists() and bold.exists():  # Debian fonts-dejavu-core: any clinical text prints
            pdf.add_font("body", "", str(regular))
            pdf.add_font("body", "B", str(bold))
            self.family, self.unicode = "body", True
        else:
            self.family, self.unicode = "helvetica", False
        self.pdf = pdf

    def text(self, value: str) -> str:
        return value if self.unicode else value.encode("latin-1", "replace").decode("latin-1")

    def font(self, size: float, bold: bool = False) -> None:
        self.pdf.set_font(self.family, "B" if bold else "", size)

    def heading(self, words: str) -> None:
        self.pdf.ln(2)
        self.font(11, bold=True)
        self.pdf.set_fill_color(230, 236, 242)
        self.pdf.cell(0, 6.5, self.text(words), new_x="LMARGIN", new_y="NEXT", fill=True)
        self.font(10)

    def para(self, words: str, size: float = 10, bold: bool = False) -> None:
        self.font(size, bold)
        self.pdf.multi_cell(0, 5, self.text(words), new_x="LMARGIN", new_y="NEXT", align="L")

    def pairs(self, rows: list[tuple[str, str]]) -> None:
        for label, value in rows:
            self.font(9, bold=True)
            self.pdf.cell(38, 5, self.text(label))
            self.font(10)
            self.pdf.multi_cell(0, 5, self.text(value), new_x="LMARGIN", new_y="NEXT", align="L")


def render_pdf(record: RecordDocument, *, title: str = "") -> bytes:
    """The record document as PDF bytes."""
    from PIL import Image

    d = _Doc()
    pdf = d.pdf
    specialty = title or record.specialty.capitalize()
    pdf.set_title(f"Specialist advice {record.referral_id}")
    pdf.set_author("referral-bot")
    pdf.set_creation_date(record.generated_at)
    pdf.add_page()

    d.font(15, bold=True)
    pdf.cell(0, 8, d.text(f"Specialist advice and guidance: {specialty}"), new_x="LMARGIN", new_y="NEXT", align="L")
    d.font(9)
    pdf.cell(0, 5, d.text(f"Referral {record.referral_id} - record version {record.version} - "
                          f"filed {_when(record.generated_at, record.time_zone)}"), new_x="LMARGIN", new_y="NEXT", align="L")
    pdf.ln(1)
    patient = (f"NHS number {_nhs(record.nhs_number)}" if record.nhs_number
               else (f"Patient reference {record.patient_id}" if record.patient_id
                     else "Patient reference not held (match by referral id)"))
    outcome = {
        None: "open", "opinion": "opinion given", "cancelled": "cancelled by the GP",
        "expired": "expired without an opinion", "withdrawn": "consent withdrawn",
    }.get(record.close_reason, record.close_reason or "open")
    if record.close_reason is None and record.opinion:
        outcome = "opinion given"
    d.pairs([
        ("Patient", patient),
        ("Practice", record.practice),
        ("Referring GP", record.referrer),
        ("Opened", _when(record.opened_at, record.time_zone)),
        ("Outcome", outcome),
    ])

    details = record.details
    d.heading("Referral")
    rows = [("Urgency", details.urgency.label)]
    rows += [(label, value) for label, value in (("Site", details.site), ("Duration", details.duration),
                                                 ("History", details.history)) if value]
    if details.intimate:
        rows.append(("Intimate area", "yes: the consent covers intimate images"
                     + (f"; chaperone: {record.consent.chaperone}" if record.consent.chaperone else "")))
    d.pairs(rows)

    d.heading("Clinical question")
    d.para(record.question)

    d.heading("Specialist opinion")
    if record.opinion:
        d.para(record.opinion, size=11, bold=True)
        d.para(f"Given by {record.opinion_by or '-'} on {_when(record.opinion_at, record.time_zone)}.", size=9)
    else:
        d.para("No opinion was given.")
    d.heading("Addenda")
    if record.addenda:
        for a in record.addenda:
            d.para(f"{_when(a.at, record.time_zone)}, {a.by}: {a.text}")
    else:
        d.para("None.", size=9)

    d.heading(f"Images ({len(record.images)})")
    with_data = record.images_with_data
    if record.withdrawn:
        d.para("The images are not part of this record: the consent was withdrawn and every copy was destroyed "
               f"on {_when(record.consent.withdrawn_at, record.time_zone)}.")
    elif not record.images:
        d.para("No image was shared.")
    elif not with_data:
        d.para("The images were destroyed at the end of their retention before this version was filed.")
    width = (pdf.w - 2 * _MARGIN - 6) / 2
    keep: list[io.BytesIO] = []
    for row in range(0, len(with_data), 2):
        pair = with_data[row:row + 2]
        sizes = []
        for img in pair:
            with Image.open(io.BytesIO(img.data)) as probe:
                w_px, h_px = probe.size
            scale = min(width / w_px, (_IMAGE_BOX_H - 6) / h_px)
            sizes.append((w_px * scale, h_px * scale))
        row_h = max(h for _, h in sizes) + 6
        if pdf.get_y() + row_h > pdf.h - _MARGIN:
            pdf.add_page()
        top = pdf.get_y() + 1
        for col, (img, (w_mm, h_mm)) in enumerate(zip(pair, sizes)):
            x = _MARGIN + col * (width + 6)
            stream = io.BytesIO(img.data)
            keep.append(stream)  # fpdf2 caches images by object id: keep each one alive
            pdf.image(stream, x=x, y=top, w=w_mm, h=h_mm)
            d.font(8)
            pdf.set_xy(x, top + h_mm + 0.5)
            note = img.filename + (f" - {img.faces} face(s) blurred" if img.faces_blurred else "")
            pdf.cell(width, 4, d.text(note))
        pdf.set_xy(_MARGIN, top + row_h)
    if with_data:
        d.para("Metadata (location, device, capture time) was removed from every image before it was shared.", size=8)

    d.heading("Consent")
    d.para(record.consent_words)

    d.heading("Timeline")
    d.font(9)
    for at, line in record.timeline:
        pdf.cell(48, 4.6, d.text(_when(at, record.time_zone)))
        pdf.multi_cell(0, 4.6, d.text(line), new_x="LMARGIN", new_y="NEXT", align="L")
    out = pdf.output()
    return bytes(out)
