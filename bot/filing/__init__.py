"""Filing a closed referral into the patient's record (docs/filing.md).

* ``filing.record``  - the record document: what is filed (pure data; ``load_record``
  reads it from the store);
* ``filing.pdf``     - the record as a one-or-two-page PDF for a clinician (pure);
* ``filing.dicom``   - each image as a DICOM VL Photographic Image (pure);
* ``filing.sinks``   - where it goes: a practice document folder, a practice mailbox
  (SMTP with STARTTLS), a PACS (DICOMweb STOW-RS). Each sink is a small class behind
  one interface (``Sink``); these are the only modules here that do I/O;
* ``filing.config``  - the ``[filing]`` section of the TOML config;
* ``filing.filer``   - runs a ``FileRecord`` / ``PurgeFiledCopies`` action for a
  transport and returns the feedback event.

The lifecycle decides when to file (``handlers/lifecycle.py``: closing, ``!export``,
withdrawal); this package only does it.
"""
