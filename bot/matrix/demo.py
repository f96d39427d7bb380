"""`referral-bot demo`: the whole story on a throwaway local Synapse.

Synapse on a free loopback port in a temporary directory; the bot (the real
``BotApp``: SQLite store, vault, workflow, Matrix transport with E2EE), a GP and a
specialist as real matrix-nio clients; an encrypted direct chat and an encrypted
"Dermatology advice" room. The GP records consent, opens a referral and sends a
phone photo carrying GPS and device metadata; the specialist sees a thread with the
clean image, asks the GP a question in the thread (relayed to the GP's direct chat), the
GP answers with a reply (posted back into the thread); a second photo with the patient's
name label is held, the GP previews its blurred copy and sends it with ``!blur``; the
specialist gives the opinion; after the grace period the images are redacted and their media deleted from
the server (downloads answer 404).
"""
from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, TextIO

from bot.matrix import nioclient
from bot.matrix.people import Seen
from bot.matrix.photo import make_photo
from bot.matrix.world import World
from bot.synapse_local import LocalSynapse

GRACE_SECONDS = 4


class Transcript:
    """Prints what the GP and the specialist see, in order, as it happens."""

    def __init__(self, world: World, out: TextIO):
        self.w = world
        self.out = out
        self.printed: set[str] = set()
        self.t0 = time.monotonic()

    def _who(self, user_id: str) -> str:
        w = self.w
        return {w.gp.user_id: "GP", w.sp.user_id: "Specialist",
                w.bot_user.user_id: "Bot"}.get(user_id, user_id)

    def _where(self, s: Seen) -> str:
        if s.room_id == self.w.dm_room:
            return "GP <-> bot (direct, encrypted)"
        if s.room_id == self.w.derm_room:
            return "Dermatology advice" + (" / thread" if s.thread_root else "")
        return s.room_id

    def step(self, title: str) -> None:
        print(f"\n== {title}", file=self.out)

    def flush(self) -> None:
        seen: dict[str, Seen] = {}
        for person in (self.w.gp, self.w.sp):
            for s in person.seen:
                if s.type != "m.room.message" or not s.event_id:
                    continue
                prev = seen.get(s.event_id)
                if prev is None or (s.redacted and not prev.redacted):
                    seen[s.event_id] = s
        for s in sorted(seen.values(), key=lambda s: s.ts):
            if s.event_id in self.printed:
                continue
            self.printed.add(s.event_id)
            t = s.ts - self.t0
            who = self._who(s.sender)
            if s.redacted:
                was = s.before_redaction or {}
                kind = "image" if was.get("msgtype") == "m.image" else "message"
                text = (f"[{kind} {was.get('body', '')!r}, since redacted by the bot]"
                        if was else "[redacted]")
            elif s.msgtype == "m.image":
                enc = "encrypted" if "file" in s.content else "NOT encrypted"
                extra = ", with thumbnail" if (s.content.get("info") or {}).get("thumbnail_file") else ""
                text = f"[image {s.body!r}, {enc}{extra}]"
            else:
                text = s.body
            text = text.replace("\n", "\n" + " " * 14)
            print(f"  {t:6.1f}s  [{self._where(s)}] {who}: {text}", file=self.out)


def exif_table(original: bytes, received: bytes, workdir: Path) -> list[tuple[str, str, str]]:
    """(tag, before, after) for every metadata tag exiftool reports on either file."""
    a, b = workdir / "original.jpg", workdir / "received.jpg"
    a.write_bytes(original)
    b.write_bytes(received)

    def tags(p: Path) -> dict[str, str]:
        res = subprocess.run(["exiftool", "-j", "-G1", "-a", "-u", str(p)], capture_output=True,
                             text=True, timeout=30)
        data = json.loads(res.stdout or "[{}]")[0]
        skip = ("SourceFile", "ExifTool:", "System:", "File:")
        return {k: str(v) for k, v in data.items() if not k.startswith(skip)}

    ta, tb = tags(a), tags(b)
    rows = []
    for k in list(dict.fromkeys([*ta, *tb])):
        rows.append((k, ta.get(k, "-"), tb.get(k, "-")))
    return rows


def print_table(rows: list[tuple[str, str, str]], out: TextIO) -> None:
    w0 = max(len("tag"), *(len(r[0]) for r in rows)) if rows else 3
    clip = lambda s: s if len(s) <= 40 else s[:37] + "..."
    print(f"  {'tag'.ljust(w0)}  {'original (GP phone)'.ljust(40)}  specialist received", file=out)
    print(f"  {'-' * w0}  {'-' * 40}  {'-' * 20}", file=out)
    for k, before, after in rows:
        print(f"  {k.ljust(w0)}  {clip(before).ljust(40)}  {clip(after)}", file=out)


async def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def show_filed(inbox: Path, out: TextIO) -> None:
    """What the practice's document workflow finds: the files, and page 1 of the PDF as text."""
    import io
    import json
    import stat

    from pypdf import PdfReader

    manifest = json.loads((inbox / "manifest.json").read_text())["records"]
    for p in sorted(inbox.iterdir()):
        print(f"  {p.name}  ({stat.S_IMODE(p.stat().st_mode):04o}, {p.stat().st_size} bytes)", file=out)
    pdf = inbox / manifest[-1]["files"]["pdf"]["name"]
    page = PdfReader(io.BytesIO(pdf.read_bytes())).pages[0]
    print("  --- page 1 of the filed PDF, as text ---", file=out)
    for line in page.extract_text().splitlines():
        print(f"  | {line}", file=out)


def show_pacs(pacs, out: TextIO) -> None:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{pacs.dicomweb_url}/studies?PatientID=9434765919", timeout=10) as resp:
        studies = json.loads(resp.read())
    for st in studies:
        print(f"  PACS (QIDO-RS): study {st['00080050']['Value'][0]} for Patient ID 9434765919, "
              f"{st.get('00201208', {}).get('Value', ['?'])[0]} instance(s), modality XC", file=out)


async def play(out: TextIO, keep_running: bool = False, workdir: Path | None = None,
               with_pacs: bool = False) -> int:
    pacs = None
    if with_pacs:
        from bot.filing.orthanc_local import OrthancServer, OrthancUnavailable

        try:
            pacs = await asyncio.to_thread(OrthancServer.start)
            print(f"Orthanc PACS (DICOMweb) is up at {pacs.dicomweb_url}", file=out)
        except OrthancUnavailable as exc:
            print(f"--with-pacs: {exc}; filing to the practice inbox only.", file=out)
    try:
        return await _play(out, keep_running, workdir, pacs)
    finally:
        if pacs is not None:
            await asyncio.to_thread(pacs.stop)


async def _play(out: TextIO, keep_running: bool, workdir: Path | None, pacs) -> int:
    tmp = Path(workdir or tempfile.mkdtemp(prefix="referral-bot-demo-"))
    hs = LocalSynapse(tmp / "synapse")
    t_start = time.monotonic()
    print(f"Starting a throwaway Synapse in {tmp} ...", file=out)
    await asyncio.to_thread(hs.start)
    print(f"Synapse {hs.url} is up ({time.monotonic() - t_start:.1f} s). Registering the bot, "
          f"a GP and a dermatologist; creating an encrypted direct chat and an encrypted "
          f"'Dermatology advice' room.", file=out)
    world: World | None = None
    try:
        inbox = tmp / "practice-inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        filing = (f'\n[[filing.sink]]\nname = "practice-inbox"\ntype = "folder"\n'
                  f'label = "the practice document inbox"\npath = "{inbox}"\n')
        if pacs is not None:
            filing += (f'\n[[filing.sink]]\nname = "pacs"\ntype = "dicomweb"\n'
                       f'label = "the hospital PACS"\nurl = "{pacs.dicomweb_url}"\n')
        world = await World.create(hs, tmp, policy={
            "grace_period_seconds": GRACE_SECONDS, "max_lifetime_hours": 72,
            "reminder_before_hours": 12}, extra_toml=filing)
        tr = Transcript(world, out)
        await world.start_bot()
        await world.wait_bot_joined()
        bot = world.bot_user.user_id
        tr.step("The GP records the patient's consent")
        ans = await world.gp_says("!consent patient=9434765919 by=patient dob=1971-04-12 sex=female purposes=care "
                                  "specialties=dermatology identifiable=no notes=yes", expect="C-")
        tr.flush()
        consent_id = re.search(r"C-[A-Z0-9]+", ans.body).group(0)

        tr.step("The GP opens a referral to dermatology")
        ans = await world.gp_says(f"!refer dermatology {consent_id} site=left forearm; duration=3 months; "
                                  "Pigmented lesion, grown. Melanoma?",
                                  expect="R-")
        tr.flush()
        referral_id = re.search(r"R-[A-Z0-9]+", ans.body).group(0)

        tr.step("The GP sends the photo from the phone (GPS, device serials, capture time inside)")
        photo = make_photo()
        mark = time.monotonic()
        upload_event, upload_mxc = await world.gp.send_image(world.dm_room, photo, "IMG_4032.JPG",
                                                             with_thumbnail=True)
        upload_seen = next(s for s in world.gp.seen if s.event_id == upload_event) \
            if any(s.event_id == upload_event for s in world.gp.seen) else None
        thumb_mxc = None
        if upload_seen is None:
            upload_seen = await world.gp.wait_for(lambda s: s.event_id == upload_event,
                                                  what="its own upload")
        thumb_mxc = ((upload_seen.content.get("info") or {}).get("thumbnail_file") or {}).get("url")
        img = await world.sp.wait_for(
            lambda s: s.room_id == world.derm_room and s.msgtype == "m.image"
            and s.sender == bot, timeout=30, what="the clean image in the thread")
        latency = img.ts - mark
        clean_mxc = img.content["file"]["url"]
        img_body, img_info = img.body, dict(img.content.get("info") or {})
        await world.gp.wait_for(lambda s: s.event_id == upload_event and s.redacted,
                                timeout=20, what="the original upload being redacted")
        await asyncio.sleep(0.3)
        tr.flush()
        print(f"  (upload -> clean image in the specialist's thread: {latency:.2f} s; the GP's "
              f"original upload was redacted)", file=out)

        received = await world.sp.download_image(img)
        assert received is not None
        tr.step("Metadata: the GP's original photo vs the image the specialist received (exiftool)")
        rows = exif_table(photo, received, tmp)
        print_table(rows, out)
        leaked = [k for k, _, after in rows if after != "-" and re.search(
            r"GPS|Serial|Make|Model|DateTime|Date/Time|Artist|Owner|UniqueID|Software", k)]
        if leaked:
            print(f"  !! metadata survived: {', '.join(leaked)}", file=out)
            return 1
        own_thumb_mxc = (img_info.get("thumbnail_file") or {}).get("url")
        carried = ("xyz.amorgan.blurhash" in img_info or "thumbnail_url" in img_info
                   or (thumb_mxc is not None and own_thumb_mxc == thumb_mxc))
        print(f"  Posted as {img_body!r} (named after the referral); thumbnail/blurhash from the "
              f"phone carried over: {'YES' if carried else 'no'}; its own encrypted thumbnail, "
              f"made from the clean pixels: {'yes' if own_thumb_mxc else 'none'}", file=out)
        if carried:
            return 1

        tr.step("The specialist asks the GP a question in the thread; the GP answers from the direct chat")
        root = img.thread_root
        asked_at = time.monotonic()
        await world.sp.say(world.derm_room, "Has it bled or itched, and is there any family history "
                           "of melanoma?", thread_root=root)
        relayed = await world.gp.wait_for(lambda s: s.room_id == world.dm_room and s.sender == bot
                                          and s.ts >= asked_at and "family history" in s.body,
                                          timeout=20, what="the specialist's question")
        # the GP answers with a Matrix reply to the relayed question, as in any messenger
        await world.gp.say(world.dm_room, "Itched now and then, never bled. No family history.",
                           reply_to=relayed.event_id)
        await world.sp.wait_for(lambda s: s.room_id == world.derm_room and s.thread_root == root
                                and "No family history" in s.body, timeout=20,
                                what="the GP's answer in the thread")
        await asyncio.sleep(0.3)
        tr.flush()
        print("  (both are m.text with m.mentions: Element alerts the GP for the question and the "
              "specialist for the answer; acknowledgements stay m.notice)", file=out)

        tr.step("The GP sends a second photo with the patient's name label beside the lesion: "
                "held, and the GP previews the blurred copy before it goes")
        labelled = make_photo(seed=9, label="Jane Smith  12/04/1971")
        sent_at = time.monotonic()
        await world.gp.send_image(world.dm_room, labelled, "IMG_4033.JPG", caption=referral_id)
        preview = await world.gp.wait_for(
            lambda s: s.room_id == world.dm_room and s.sender == bot and s.msgtype == "m.image"
            and s.ts >= sent_at and s.body.startswith("PREVIEW"), timeout=30, what="the PREVIEW")
        preview_mxc = preview.content["file"]["url"]
        previewed = await world.gp.download_image(preview)
        await asyncio.sleep(0.5)
        tr.flush()
        await world.gp_says(f"!blur {referral_id}")
        second = await world.sp.wait_for(
            lambda s: s.room_id == world.derm_room and s.msgtype == "m.image" and s.sender == bot
            and s.event_id != img.event_id, timeout=30, what="the blurred photo in the thread")
        second_mxc = second.content["file"]["url"]
        shown = await world.sp.download_image(second)
        if previewed is None or shown != previewed:
            print("  !! the thread got other bytes than the GP previewed", file=out)
            return 1
        await asyncio.sleep(0.5)
        tr.flush()
        print("  (the thread got exactly the bytes the GP previewed: the label blurred; the preview "
              "left the GP's chat once the photo was posted)", file=out)

        tr.step("The specialist gives the opinion in the thread")
        await world.sp.say(world.derm_room, "!opinion Features of a benign seborrhoeic "
                           "keratosis; no urgent referral needed. Review if it changes.",
                           thread_root=root)
        await world.gp.wait_for(lambda s: s.room_id == world.dm_room and s.sender == bot
                                and "seborrhoeic" in s.body, timeout=20, what="the opinion")
        await asyncio.sleep(0.3)
        tr.flush()

        tr.step("The record is filed (PDF + FHIR document into the practice inbox"
                + (", the image into the PACS)" if pacs is not None else ")"))
        await _wait(lambda: any(inbox.glob("*.pdf")), 20, "the filed PDF")
        await asyncio.sleep(0.3)
        tr.flush()
        show_filed(inbox, out)
        if pacs is not None:
            show_pacs(pacs, out)

        tr.step(f"Grace period ({GRACE_SECONDS} s) ends: images redacted, media deleted")
        await world.sp.wait_for(lambda s: s.event_id == img.event_id and s.redacted,
                                timeout=GRACE_SECONDS + 20, what="the image being redacted")
        await asyncio.sleep(1.0)
        tr.flush()
        await world.sp.wait_for(lambda s: s.event_id == second.event_id and s.redacted,
                                timeout=20, what="the second image being redacted")
        checks = [("GP's original upload", upload_mxc), ("phone thumbnail", thumb_mxc),
                  ("clean image in the thread", clean_mxc), ("its thumbnail", own_thumb_mxc),
                  ("the PREVIEW in the GP's chat", preview_mxc), ("the blurred photo in the thread", second_mxc)]
        all_gone = True
        for label, mxc in checks:
            if not mxc:
                continue
            gone = await _gone(world.gp.client, mxc)
            all_gone &= gone
            print(f"  {label}: {mxc} -> download now "
                  f"{'404 Not Found (deleted)' if gone else 'STILL AVAILABLE'}", file=out)
        if not all_gone:
            return 1
        tr.step("Status")
        await world.gp_says(f"!status {referral_id}")
        await asyncio.sleep(0.2)
        tr.flush()
        print(f"\nDemo finished in {time.monotonic() - t_start:.1f} s.", file=out)
        if keep_running:
            print("\n--keep-running: Synapse and the bot stay up. Log in with Element "
                  f"(homeserver {hs.url}):", file=out)
            for label, u in (("GP", world.gp_user), ("Specialist", world.sp_user),
                             ("Bot", world.bot_user)):
                print(f"  {label:<10} {u.user_id}  password: {u.password}", file=out)
            print("Press Ctrl-C to stop and clean up.", file=out)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass
        return 0
    finally:
        if world is not None:
            await world.close()
        await asyncio.to_thread(hs.stop)
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)


async def _gone(client, mxc: str) -> bool:
    try:
        return await nioclient.download_bytes(client, mxc) is None
    except nioclient.MatrixCallError:
        return False
