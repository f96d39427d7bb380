"""A referral taken through the real workflow (memory store) to a filed state, for the
renderers and sinks; and a throwaway Orthanc for the PACS tests (marked ``orthanc``)."""
from __future__ import annotations

import pytest

from bot.filing.record import RecordDocument, load_record
from tests.handlers.helpers import DERM, GP, Harness, consent_id_from, jpeg_with_metadata, policy, referral_id_from

NHS = "9434765919"
QUESTION = "Left forearm: pigmented lesion, grown over 3 months. Melanoma?"
OPINION = "Seborrhoeic keratosis; reassure. No follow-up needed."


async def make_referral(*, images: int = 2, identifiable: bool = False, withdraw: bool = False,
                        purposes: str = "care", consent_extra: str = "", refer_fields: str = "",
                        ) -> tuple[Harness, str, str]:
    from handlers.events import SpecialtyThread

    h = Harness(policy=policy(filing_enabled=True))
    cid = consent_id_from(await h.say(
        GP, f"!consent patient={NHS[:3]}-{NHS[3:6]}-{NHS[6:]} by=patient adult=yes specialties=dermatology "
            f"purposes={purposes} "
            f"identifiable={'yes' if identifiable else 'no'} notes=yes {consent_extra}"))
    rid = referral_id_from(await h.say(GP, f"!refer derm {cid} {refer_fields} {QUESTION}"))
    await h.drain()
    for n in range(images):
        await h.send_image(GP, jpeg_with_metadata(640, 480, seed=n * 7))
        await h.drain()
    await h.say(DERM, f"!opinion {OPINION}", place=SpecialtyThread("dermatology", rid))
    await h.drain()
    if withdraw:
        await h.say(GP, f"!withdraw {cid}")
        await h.drain()
    return h, cid, rid


async def record_of(h: Harness, rid: str) -> RecordDocument:
    ref = h.store.referral(rid)
    return await load_record(h.store, rid, version=max(1, ref.filing_version), at=h.now)


@pytest.fixture
async def filed():
    h, cid, rid = await make_referral()
    return h, rid, await record_of(h, rid)


@pytest.fixture(scope="module")
def orthanc():
    from bot.filing.orthanc_local import OrthancServer, OrthancUnavailable

    try:
        server = OrthancServer.start()
    except OrthancUnavailable as exc:  # the bootstrap installs it; say plainly if it is missing
        pytest.fail(str(exc))
    yield server
    server.stop()
