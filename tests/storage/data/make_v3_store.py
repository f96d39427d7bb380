"""Make ``v3-store.sqlite3``: a database written by the program as it was at schema
version 3 (commit 800a3f9, before issue 9), for tests/storage/test_upgrade.py.

It must run against THAT program, not this one::

    git archive 800a3f9 storage handlers tests/__init__.py tests/handlers \\
        | tar -x -C /tmp/v3 && cp tests/storage/data/make_v3_store.py /tmp/v3/
    cd /tmp/v3 && PYTHONPATH=. python make_v3_store.py OUT_DIR

What is in it (the strings the upgrade test looks for in the raw bytes):
* a mistyped ``!consent 9434765919``, whose refusal echoed the NHS number (done action);
* a consent for patient 9434765919 and referral 1 with QUESTION_1: thread, image, and
  OPINION_1 given: its Notify to the GP is still pending (plain JSON in the outbox);
* referral 2 with QUESTION_2, whose PostThreadRoot is still pending;
* the plain SHA-256 audit chain of all that.
The master key is written next to it as ``v3-store.key`` (test data only).
"""
import asyncio
import base64
import os
import shutil
import sys
from pathlib import Path

from handlers import events as E
from storage.keys import Keys
from storage.sqlite_store import SQLiteStore
from tests.handlers.helpers import CONSENT_OK, DERM, GP, Harness, consent_id_from, jpeg_with_metadata, referral_id_from

QUESTION_1 = "Spreading ring-shaped rash on the forearm for 3 weeks; tinea or discoid eczema?"
QUESTION_2 = "Pearly nodule on the left shin with a rolled edge; is this a basal cell carcinoma?"
OPINION_1 = "Discoid eczema: emollients and a moderate potency steroid for two weeks."


async def main(out: Path) -> None:
    master = os.urandom(32)
    keys = Keys.from_master(master)
    path = out / "v3-store.sqlite3"
    for p in out.glob("v3-store.sqlite3*"):
        p.unlink()
    store = await SQLiteStore.open(path, keys)
    h = Harness(store=store)
    await h.say(GP, "!consent 9434765919")
    cid = consent_id_from(await h.say(GP, CONSENT_OK))
    rid1 = referral_id_from(await h.say(GP, f"!refer dermatology {cid} {QUESTION_1}"))
    await h.send_image(GP, jpeg_with_metadata(seed=7))
    await h.drain()
    thread = E.SpecialtyThread("dermatology", None, f"$root-{rid1}")
    await h.say(DERM, f"!opinion {OPINION_1}", place=thread)  # Notify + Reply stay pending
    await h.say(GP, f"!refer dermatology {cid} {QUESTION_2}")  # PostThreadRoot stays pending
    assert (await store.verify_audit()).intact
    await store.close()  # the last connection checkpoints the WAL into the file
    (out / "v3-store.key").write_text(base64.b64encode(master).decode() + "\n")
    print(path, path.stat().st_size, "bytes;", cid, rid1)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))
