"""End-to-end Matrix benchmark on a local Synapse with real E2EE clients.

    .venv/bin/python bench/bench_matrix.py [--referrals 50] [--inflight 20] [--json out.json]

1. Latency from the GP pressing "send" on a ~5 MB phone photo (encrypt + upload +
   event) to the specialist's client holding the clean image event in the referral
   thread, over N referrals; side by side, interleaved in the same run, with a plain
   relay bot (download, decrypt, re-encrypt, upload the same bytes, post in a thread;
   no processing, no database). Target: bot p50 within 1.3x of the relay p50.
   Each referral is run twice: under a consent that covers identifiable images (no
   face check: nothing depends on it) and under one that does not (the face check
   is mandatory and blocks posting); the three paths are interleaved. The bot posts
   a referral's thread root when the referral opens (before the photo, as the relay's
   thread exists before its photo too); when the specialist sees it after `!refer`
   is reported as well.
2. Removal lateness: every referral of phase 1 gets an opinion; the images are due
   for removal at the end of the grace period (read from the bot's store); lateness
   is when the specialist's client sees the redaction minus that deadline.
   Target: p99 under 2 s.
3. 20 referrals in flight at once (refer, then its photo captioned with the referral id,
   back to back): none lost
   (each gets exactly one clean image in its own thread); the bot's peak RSS
   (VmHWM of the bot process) under 250 MB; its sanitizer worker's peak is reported beside it.
4. The peer, in the same run: the bot is restarted with bench/peer_env on PYTHONPATH, which
   makes it (and its workers) check faces with the old Haar cascade and no text, as before
   issue 11; N more referrals under the consent that does not cover identifiable images,
   interleaved with the relay. Target for ours: p50 within 1.5x of the relay (goal 1.3x).

The bot runs as its own process (`referral-bot run`), exactly as deployed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.matrix import nioclient  # noqa: E402
from bot.matrix.people import Person, Seen  # noqa: E402
from bot.matrix.photo import make_phone_photo  # noqa: E402
from bot.matrix.world import World  # noqa: E402
from bot.synapse_local import LocalSynapse  # noqa: E402

GRACE_SECONDS = 6


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def child_pids(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def proc_mem(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) // 1024
    except OSError:
        pass
    return out


class Relay:
    """The baseline: a bot that only moves the bytes (no sanitizing, no store)."""

    def __init__(self, person: Person, room: str, thread_root: str):
        self.p, self.room, self.root = person, room, thread_root
        self.done: set[str] = set()
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        while True:
            s = await self.p.wait_for(lambda s: s.msgtype == "m.image" and s.event_id not in self.done
                                      and s.sender != self.p.user_id, timeout=3600)
            self.done.add(s.event_id)
            data = await nioclient.download_decrypt(self.p.client, s.content["file"])
            up = await nioclient.upload_encrypted(self.p.client, data, "relay.jpg", "image/jpeg")
            await nioclient.send(self.p.client, self.room,
                                 nioclient.image_content(up, "relay.jpg", len(data),
                                                         thread_root=self.root))


async def wait_image(sp: Person, room: str, sender: str, after: float, exclude: set[str],
                     timeout: float = 120) -> Seen:
    return await sp.wait_for(lambda s: s.room_id == room and s.msgtype == "m.image"
                             and s.sender == sender and s.ts >= after
                             and s.event_id not in exclude, timeout, "an image")


async def main(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-matrix-"))
    print(f"working directory (bot.log): {tmp}", flush=True)
    hs = LocalSynapse(tmp / "synapse")
    hs.start()
    print(f"Synapse at {hs.url}; generating {args.photos} phone photos ...", flush=True)
    photos = [make_phone_photo(seed=20 + i, restart_markers=args.restart_markers) for i in range(args.photos)]
    print(f"  photo sizes: {[round(len(p) / 1e6, 2) for p in photos]} MB", flush=True)
    results: dict = {"referrals": args.referrals, "photo_mb": round(statistics.mean(len(p) for p in photos) / 1e6, 2),
                     "restart_markers": args.restart_markers}
    w = await World.create(hs, tmp, suffix="b", policy={
        "grace_period_seconds": GRACE_SECONDS, "max_lifetime_hours": 72, "reminder_before_hours": 12})
    proc = None
    try:
        # the relay: its own account, a DM with the GP and its own room + thread with the specialist
        relay_u = hs.register("relay")
        relay = await Person.login(hs.url, relay_u.user_id, relay_u.password, tmp / "people" / "relay", "relay")
        w.extra_people.append(relay)
        relay.start()
        relay_room = await relay.create_room("Relay room", [w.sp.user_id], encrypted=True)
        relay_dm = await w.gp.create_room("Relay", [relay.user_id], encrypted=True, direct=True)
        await w.sp.wait_for(lambda s: s.room_id == relay_room and s.sender == w.sp.user_id
                            and s.type == "m.room.member", 20, "joining the relay room")
        await relay.wait_for(lambda s: s.room_id == relay_dm and s.type == "m.room.member"
                             and s.sender == relay.user_id, 20, "joining the relay DM")
        relay_root = await relay.say(relay_room, "Relay thread")
        r = Relay(relay, relay_room, relay_root)
        r.task = asyncio.create_task(r.run())

        log = open(tmp / "bot.log", "ab")
        bot_cmd = [sys.executable, "-m", "bot.cli", "run", "--config", str(w.config_path),
                   "--log-level", args.bot_log_level]
        proc = subprocess.Popen(bot_cmd, stdout=log, stderr=log)
        await w.wait_bot_joined(timeout=60)
        bot = w.bot_user.user_id
        # two consents for the same patient: one covering identifiable images (the face
        # check is not needed and not run) and one not covering them (the face check is
        # mandatory and blocks posting); every referral of phase 1 alternates between them
        cids = {}
        for case, ident in (("ident", "yes"), ("nonident", "no")):
            ans = await w.gp_says(f"!consent patient=9434765919 by=patient adult=yes specialties=dermatology purposes=care "
                                  f"identifiable={ident} notes=yes", expect="C-")
            cids[case] = re.search(r"C-[A-Z0-9]+", ans.body).group(0)
        cid = cids["ident"]

        # ---- phase 1: latency, interleaved: bot (consent covers identifiable images),
        # bot (consent does not: face check), relay; the order rotates every referral
        lat: dict[str, list[float]] = {"ident": [], "nonident": [], "relay": [], "ident_second_photo": []}
        root_lat: dict[str, list[float]] = {"ident": [], "nonident": []}  # after !refer
        seen_imgs: set[str] = set()
        referral_images: dict[str, Seen] = {}
        order = ("ident", "nonident", "relay")
        for i in range(args.referrals):
            photo = photos[i % len(photos)]
            for k in range(3):
                which = order[(i + k) % 3]
                # let the bot finish the previous referral's housekeeping (redacting the
                # GP's upload, deleting its media, replies, the opinion) first, so that
                # no path is timed while Synapse is busy with another's leftovers
                await asyncio.sleep(args.settle)
                if which == "relay":
                    t0 = time.monotonic()
                    await w.gp.send_image(relay_dm, photo, f"IMG_{i:04d}.JPG")
                    img = await wait_image(w.sp, relay_room, relay.user_id, t0, seen_imgs)
                    seen_imgs.add(img.event_id)
                    lat["relay"].append(img.ts - t0)
                    continue
                t_refer = time.monotonic()
                ans = await w.gp_says(f"!refer dermatology {cids[which]} Bench referral {i} {which}",
                                      expect=" opened")
                rid = re.search(r"(R-[A-Z0-9]+) opened", ans.body).group(1)
                t0 = time.monotonic()
                await w.gp.send_image(w.dm_room, photo, f"IMG_{i:04d}.JPG")
                img = await wait_image(w.sp, w.derm_room, bot, t0, seen_imgs)
                seen_imgs.add(img.event_id)
                assert img.body.startswith(rid), (img.body, rid)
                lat[which].append(img.ts - t0)
                root = next((s for s in w.sp.seen if s.event_id == img.thread_root), None)
                if root is not None:
                    root_lat[which].append(root.ts - t_refer)
                referral_images[rid] = img
                if which == "ident" and args.second_image:
                    # a second photo for the same referral, into the same thread
                    await asyncio.sleep(args.settle)
                    t0 = time.monotonic()
                    await w.gp.send_image(w.dm_room, photo, f"IMG_{i:04d}b.JPG")
                    img2 = await wait_image(w.sp, w.derm_room, bot, t0, seen_imgs)
                    seen_imgs.add(img2.event_id)
                    assert img2.body.startswith(rid) and img2.thread_root == img.thread_root, (img2.body, rid)
                    lat["ident_second_photo"].append(img2.ts - t0)
                await w.sp.say(w.derm_room, "!opinion Bench opinion.", thread_root=img.thread_root)
            if (i + 1) % 10 == 0:
                print(f"  {i + 1}/{args.referrals}: p50 bot/identifiable {statistics.median(lat['ident']):.3f} s, "
                      f"bot/face check {statistics.median(lat['nonident']):.3f} s, "
                      f"relay {statistics.median(lat['relay']):.3f} s", flush=True)

        def summary(v: list[float]) -> dict:
            return {"p50": round(pct(v, 50), 3), "p90": round(pct(v, 90), 3), "p99": round(pct(v, 99), 3),
                    "max": round(max(v), 3)}

        results["latency_relay_s"] = summary(lat["relay"])
        results["latency_bot_identifiable_consent_s"] = summary(lat["ident"])
        results["latency_bot_face_check_s"] = summary(lat["nonident"])
        relay50 = pct(lat["relay"], 50)
        if lat["ident_second_photo"]:
            results["latency_bot_identifiable_second_photo_s"] = summary(lat["ident_second_photo"])
            results["ratio_p50_identifiable_second_photo"] = round(pct(lat["ident_second_photo"], 50) / relay50, 3)
        results["ratio_p50_identifiable_consent"] = round(pct(lat["ident"], 50) / relay50, 3)
        results["ratio_p50_face_check"] = round(pct(lat["nonident"], 50) / relay50, 3)
        results["face_check_cost_p50_s"] = round(pct(lat["nonident"], 50) - pct(lat["ident"], 50), 3)
        results["thread_root_seen_after_refer_p50_s"] = {k: round(pct(v, 50), 3) for k, v in root_lat.items()}
        results["mem_after_phase1_mb"] = proc_mem(proc.pid)

        print("phase 2: waiting for the removals ...", flush=True)
        # ---- phase 2: removal lateness (deadline from the bot's store vs seen redaction)
        deadline_wait = time.monotonic() + GRACE_SECONDS + 60
        while time.monotonic() < deadline_wait:
            if all(img.redacted for img in referral_images.values()):
                break
            await asyncio.sleep(0.5)
        mono_to_wall = time.time() - time.monotonic()
        redacted_at: dict[str, float] = {}
        for rid, img in referral_images.items():
            red = next((s for s in w.sp.seen if s.type == "m.room.redaction"
                        and (s.content.get("redacts") == img.event_id)), None)
            if red is not None:
                redacted_at[rid] = red.ts + mono_to_wall
        lateness = await removal_lateness(w, redacted_at)
        results["removal_lateness_s"] = {"n": len(lateness), "p50": round(pct(lateness, 50), 3),
                                         "p99": round(pct(lateness, 99), 3),
                                         "max": round(max(lateness), 3) if lateness else None}
        results["removed_all"] = len(lateness) == len(referral_images)

        print(f"  removal lateness: {results['removal_lateness_s']}", flush=True)
        print(f"phase 3: {args.inflight} referrals in flight ...", flush=True)
        # ---- phase 3: 20 referrals in flight at once
        t0 = time.monotonic()
        before = set(seen_imgs)
        for j in range(args.inflight):
            # with many referrals open, a photo names its referral (the bot never guesses
            # which one it is for): the GP captions it with the id the bot answered with
            ans = await w.gp_says(f"!refer dermatology {cid} Burst referral {j}", expect=" opened")
            burst_rid = re.search(r"(R-[A-Z0-9]+) opened", ans.body).group(1)
            await w.gp.send_image(w.dm_room, photos[j % len(photos)], f"BURST_{j:02d}.JPG",
                                  caption=f"{burst_rid} burst photo")
        peak = 0
        deadline = time.monotonic() + 300
        burst: list[Seen] = []
        while time.monotonic() < deadline:
            burst = [s for s in w.sp.seen if s.room_id == w.derm_room and s.msgtype == "m.image"
                     and s.sender == bot and s.event_id not in before]
            peak = max(peak, proc_mem(proc.pid).get("VmRSS", 0))
            if len(burst) >= args.inflight:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        burst = [s for s in w.sp.seen if s.room_id == w.derm_room and s.sender == bot
                 and s.event_id not in before and (s.msgtype == "m.image")]
        names = sorted(s.body for s in burst)
        rids = {n.rsplit("-", 1)[0] for n in names}
        mem = proc_mem(proc.pid)
        results["inflight"] = {"sent": args.inflight, "images_posted": len(burst),
                               "distinct_referrals": len(rids),
                               "all_in_own_thread": len({s.thread_root for s in burst}) == len(burst),
                               "seconds_to_all": round(time.monotonic() - t0, 2),
                               "bot_rss_mb_peak_sampled": peak, "bot_vmhwm_mb": mem.get("VmHWM")}
        results["lost"] = args.inflight - len(rids)
        workers = child_pids(proc.pid)
        results["inflight"]["sanitizer_worker_vmhwm_mb"] = [proc_mem(c).get("VmHWM") for c in workers]

        # ---- phase 4: the peer (Haar cascade, no text check), same homeserver, same clients
        if args.peer_referrals:
            print(f"phase 4: the peer (Haar cascade), {args.peer_referrals} referrals ...", flush=True)
            proc.terminate()
            proc.wait(timeout=30)
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                [str(ROOT / "bench" / "peer_env"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
            proc = subprocess.Popen(bot_cmd, stdout=log, stderr=log, env=env)
            await asyncio.sleep(3)
            await w.gp_says("!help", expect="!consent", timeout=60)
            peer = {"nonident": [], "relay": []}
            for i in range(args.peer_referrals):
                photo = photos[i % len(photos)]
                for which in (("nonident", "relay") if i % 2 else ("relay", "nonident")):
                    await asyncio.sleep(args.settle)
                    t0 = time.monotonic()
                    if which == "relay":
                        await w.gp.send_image(relay_dm, photo, f"PEER_{i:04d}.JPG")
                        img = await wait_image(w.sp, relay_room, relay.user_id, t0, seen_imgs)
                    else:
                        ans = await w.gp_says(f"!refer dermatology {cids['nonident']} Peer referral {i}",
                                              expect=" opened")
                        rid = re.search(r"(R-[A-Z0-9]+) opened", ans.body).group(1)
                        t0 = time.monotonic()
                        # phase 3 left referrals open: the photo names its referral
                        await w.gp.send_image(w.dm_room, photo, f"PEER_{i:04d}.JPG", caption=f"{rid} photo")
                        img = await wait_image(w.sp, w.derm_room, bot, t0, seen_imgs)
                        assert img.body.startswith(rid), (img.body, rid)
                        await w.sp.say(w.derm_room, "!opinion Bench opinion.", thread_root=img.thread_root)
                    seen_imgs.add(img.event_id)
                    peer[which].append(img.ts - t0)
            results["peer_cascade"] = {
                "latency_relay_s": summary(peer["relay"]),
                "latency_bot_face_check_s": summary(peer["nonident"]),
                "ratio_p50_face_check": round(pct(peer["nonident"], 50) / pct(peer["relay"], 50), 3),
            }
            print(f"  peer: {results['peer_cascade']}", flush=True)
        # where the difference goes: the sanitizer alone on the same photos (measured last,
        # so it cannot delay the clients' view of the timings above)
        from handlers.sanitizer import sanitize

        for faces in (False, True):
            san = []
            for photo in photos * 3:
                t = time.perf_counter()
                sanitize(photo, detect_faces=faces, detect_text=faces)
                san.append(time.perf_counter() - t)
            results[f"sanitize_{'with' if faces else 'without'}_face_and_text_check_s_p50"] = round(pct(san, 50), 4)
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        await w.close()
        hs.stop()
    return results


async def removal_lateness(w: World, redacted_at: dict[str, float]) -> list[float]:
    """Seen redaction time minus the removal deadline recorded in the bot's store."""
    from bot.app import open_store
    from bot.config import load_config

    cfg = load_config(w.config_path)
    store, _ = await open_store(cfg)
    out = []
    try:
        reader = getattr(store, "read", store.transaction)
        async with reader() as tx:
            for rid, when in redacted_at.items():
                ref = await tx.get_referral(rid)
                if ref is None or ref.remove_images_at is None:
                    continue
                out.append(when - ref.remove_images_at.timestamp())
    finally:
        await store.close()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--referrals", type=int, default=50)
    ap.add_argument("--inflight", type=int, default=20)
    ap.add_argument("--photos", type=int, default=4, help="distinct generated photos to cycle")
    ap.add_argument("--restart-markers", action="store_true",
                    help="photos with a restart marker per row of blocks, as an iPhone writes them "
                         "(the check then decodes each photo in two halves at once)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="quiet seconds before each timed send in phase 1")
    ap.add_argument("--no-second-image", dest="second_image", action="store_false",
                    help="skip the timed second photo per covered-consent referral")
    ap.add_argument("--bot-log-level", default="WARNING",
                    help="DEBUG shows the transport's per-action timings in bot.log")
    ap.add_argument("--peer-referrals", type=int, default=20,
                    help="referrals timed with the peer (Haar cascade) bot in phase 4; 0 skips it")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args()
    res = asyncio.run(main(a))
    print(json.dumps(res, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    print(f"\nGP upload -> clean image in the thread, p50 ratio to the relay (same run):\n"
          f"  consent covers identifiable images (no check): {res['ratio_p50_identifiable_consent']}x (target 1.3x)\n"
          f"  consent does not: ours (BlazeFace + text) {res['ratio_p50_face_check']}x (target 1.5x, goal 1.3x)"
          + (f"; peer (Haar cascade, faces only) {res['peer_cascade']['ratio_p50_face_check']}x"
             if "peer_cascade" in res else ""))
    ok = (res.get("ratio_p50_identifiable_consent", 9) <= 1.3 and res["removal_lateness_s"]["p99"] < 2
          and res.get("lost", 1) == 0 and (res["inflight"]["bot_vmhwm_mb"] or 0) < 250
          and res.get("ratio_p50_face_check", 9) <= 1.5)
    print("targets met" if ok else "TARGETS NOT MET")
