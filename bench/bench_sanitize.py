#!/usr/bin/env python3
"""Benchmark the image sanitizer against exiftool and jpegtran.

One run:
  1. generates (once, cached) 24 phone-sized 12 MP JPEGs carrying EXIF, GPS,
     an EXIF thumbnail and XMP, plus one 48 MP JPEG;
  2. times, several repetitions each (medians reported):
       - `referral-bot sanitize --out-dir` on the whole batch: ONE process,
         interpreter start-up and imports included;
       - `exiftool -all= -overwrite_original` on copies of the batch (one process);
       - a loop of `jpegtran -copy none` (one process per file);
  3. in-process sanitize() time per 12 MP image (median), without any check, and the
     identifiability check (faces + text) per 12 MP photo, side by side with the peer (the
     OpenCV Haar cascade the product used before, bench/peer_cascade.py) on the same photos,
     and again on the same photos written with restart markers (as an iPhone writes them);
  4. the face-and-text evaluation set (tests/sanitizer/evalset.py, at 12 MP, with the shared
     corpus when present): recall and false alarms, ours and the cascade, in the same run;
  5. peak memory (max RSS) of a child process sanitising the 48 MP image (which has one
     face): faces off, faces and text on, and blurring (reported; the target is for the first two).

Usage:  .venv/bin/python bench/bench_sanitize.py [--reps N] [--cache DIR]
This is a benchmark, not a test: it prints numbers and checks the targets,
exiting 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))  # peer_cascade

N_IMAGES = 24
W12, H12 = 4032, 3024  # 12.2 MP, what most phones shoot
W48, H48 = 8064, 6048  # 48.8 MP, a "48 MP mode" phone photo


def generate(cache: Path) -> tuple[list[Path], Path]:
    import io

    from PIL import Image

    from tests.sanitizer import imagegen as g

    cache.mkdir(parents=True, exist_ok=True)
    files = [cache / f"phone-{i:02d}.jpg" for i in range(N_IMAGES)]
    big = cache / "phone-48mp.jpg"
    stamp = cache / "complete-v3"
    if stamp.exists() and all(f.exists() for f in files) and big.exists():
        return files, big
    print(f"generating {N_IMAGES} x 12 MP + 1 x 48 MP JPEGs into {cache} (once) ...", flush=True)
    thumb = cache / "thumb.jpg"
    g.photo(160, 120).save(thumb, "JPEG", quality=75)
    for i, f in enumerate(files):
        g.photo(W12, H12, seed=i).save(f, "JPEG", quality=90)
    big_im = g.photo(W48, H48, seed=99)
    # one face (the public-domain test portrait), so the faces-on and blur paths do real work
    # (stored turned 90° anticlockwise: the files get Orientation 6, so it displays upright)
    face = Image.open(io.BytesIO(g.face_photo())).resize((2400, 2400)).rotate(90)
    big_im.paste(face, (2000, 1500))
    big_im.save(big, "JPEG", quality=90)
    del big_im
    subprocess.run(
        [g.EXIFTOOL, "-q", "-q", "-overwrite_original",
         "-Make=Phone maker", "-Model=Phone 15 Pro", "-SerialNumber=SN123456789", "-Software=Camera 17.1",
         "-DateTimeOriginal=2024:05:06 07:08:09", "-OffsetTimeOriginal=+01:00", "-LensModel=Main camera",
         "-ExposureTime=1/120", "-FNumber=1.8", "-ISO=64", "-Orientation#=6",
         "-GPSLatitude=51.501364", "-GPSLatitudeRef=N", "-GPSLongitude=0.14189", "-GPSLongitudeRef=W",
         "-GPSAltitude=23", "-GPSDateStamp=2024:05:06", "-GPSTimeStamp=06:08:09",
         f"-ThumbnailImage<={thumb}", "-XMP-dc:Creator=Dr Example", "-XMP-xmp:CreatorTool=Camera 17.1",
         "-XMP-photoshop:City=London", *map(str, files), str(big)],
        check=True,
    )
    stamp.write_text("ok\n")
    return files, big


def timed(cmd: list[str] | None = None, fn=None) -> float:
    t0 = time.perf_counter()
    if cmd is not None:
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        fn()
    return time.perf_counter() - t0


def bench_batches(files: list[Path], reps: int) -> dict[str, list[float]]:
    exiftool = shutil.which("exiftool")
    jpegtran = shutil.which("jpegtran")
    cli = Path(sys.executable).with_name("referral-bot")
    ours_cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "bot.cli"]
    results: dict[str, list[float]] = {"referral-bot sanitize --out-dir": [], "exiftool -all= (batch)": [],
                                       "jpegtran -copy none (loop)": []}
    for rep in range(reps):
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            tmp = Path(tmp)
            out = tmp / "ours"
            out.mkdir()
            results["referral-bot sanitize --out-dir"].append(
                timed(ours_cmd + ["sanitize", *map(str, files), "--out-dir", str(out)]))
            assert len(list(out.iterdir())) == len(files)

            if exiftool:
                copies = tmp / "copies"
                copies.mkdir()
                for f in files:
                    shutil.copyfile(f, copies / f.name)  # not timed
                results["exiftool -all= (batch)"].append(
                    timed([exiftool, "-q", "-q", "-all=", "-overwrite_original", *map(str, sorted(copies.iterdir()))]))

            if jpegtran:
                jt = tmp / "jpegtran"
                jt.mkdir()

                def loop() -> None:
                    for f in files:
                        subprocess.run([jpegtran, "-copy", "none", "-outfile", str(jt / f.name), str(f)], check=True)

                results["jpegtran -copy none (loop)"].append(timed(fn=loop))
        print(f"  repetition {rep + 1}/{reps} done", flush=True)
    return {k: v for k, v in results.items() if v}


def bench_in_process(files: list[Path], reps: int) -> dict[str, float]:
    import io

    import peer_cascade
    from PIL import Image

    from bot.matrix.photo import make_phone_photo
    from handlers.sanitizer import sanitize

    datas = [f.read_bytes() for f in files]
    phone5mb = [make_phone_photo(seed=20 + i) for i in range(4)]  # what bench_matrix sends
    # the same photos with a restart marker per row of blocks, as an iPhone writes its JPEGs:
    # the check then decodes each in two halves at once (handlers/sanitizer/_jpeg_split.py)
    phone5rst = [make_phone_photo(seed=20 + i, restart_markers=True) for i in range(4)]
    test_rst = []
    for d in datas[:8]:
        im = Image.open(io.BytesIO(d))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=90, exif=im.info.get("exif", b""), restart_marker_rows=1)
        test_rst.append(out.getvalue())
    sanitize(datas[0], detect_text=True)  # warm-up: first-call imports and model loads
    peer_cascade.detect_bytes(datas[0])
    fast, check, check5, peer, peer5, check5rst, peer5rst, check_rst = [], [], [], [], [], [], [], []
    cpu5, peer_cpu5 = [], []  # CPU time of the process (both threads): what load cannot inflate
    for _ in range(reps):
        for d in datas:
            t0 = time.perf_counter()
            sanitize(d, detect_faces=False)
            fast.append(time.perf_counter() - t0)
    def ours(d: bytes) -> None:
        sanitize(d, detect_faces=True, detect_text=True)

    def peer_too(photos, ours_out, peer_out, cpu_out=None, peer_cpu_out=None) -> None:
        """Ours and the cascade on each photo in turn: wall time (and CPU time if asked)."""
        for d in photos:
            for fn, out, cpu in ((ours, ours_out, cpu_out), (peer_cascade.detect_bytes, peer_out, peer_cpu_out)):
                if out is None:
                    continue
                c0, t0 = time.process_time(), time.perf_counter()
                fn(d)
                out.append(time.perf_counter() - t0)
                if cpu is not None:
                    cpu.append(time.process_time() - c0)

    for _ in range(max(1, reps // 2)):
        peer_too(datas[:8], check, peer)
        peer_too(phone5mb, check5, peer5, cpu5, peer_cpu5)
        peer_too(phone5rst, check5rst, peer5rst)
        peer_too(test_rst, check_rst, None)
    # what the turned passes (when nothing is found upright) cost, and what the text check costs
    from handlers.sanitizer import _detect

    no_turn, faces_only = [], []
    _detect.TURNED_PASSES = False
    try:
        for d in phone5mb * max(1, reps // 2):
            t0 = time.perf_counter()
            sanitize(d, detect_faces=True, detect_text=True)
            no_turn.append(time.perf_counter() - t0)
    finally:
        _detect.TURNED_PASSES = True
    for d in phone5mb * max(1, reps // 2):
        t0 = time.perf_counter()
        sanitize(d, detect_faces=True)
        faces_only.append(time.perf_counter() - t0)
    # the critical path no scheduling can shorten: the decode (serial Huffman decoding
    # unless the file has restart markers) and then the full-range face pass, which needs
    # the whole picture; everything else can run on the other core meanwhile
    import numpy as np

    from handlers.sanitizer._jpeg_split import decode_scaled
    from handlers.sanitizer._types import Limits
    from handlers.sanitizer.jpeg import sanitize_jpeg

    # and the passes after the decode, one at a time (no contention): two cores need at
    # least half their sum
    decode5, full5, after5 = [], [], []
    for d in phone5mb * max(1, reps // 2):
        clean, info, _ = sanitize_jpeg(d, Limits())
        t0 = time.perf_counter()
        im = decode_scaled(clean, (info.width // 4, info.height // 4), run_beside=_detect.beside)
        decode5.append(time.perf_counter() - t0)
        small = _detect.fit(np.ascontiguousarray(np.asarray(im)))
        t0 = time.perf_counter()
        _detect._whole(small, _detect._FULL, _detect.FULL_SIDE, _detect.FULL_CANDIDATE)
        full5.append(time.perf_counter() - t0)
        _detect.text(small)
        _detect._short(small)
        turned = _detect._turned_copy(small)
        for k in (1, 2, 3):
            _detect._turned(turned, k)
        after5.append(time.perf_counter() - t0)
    med = lambda v: statistics.median(v) * 1000  # noqa: E731
    return {"decode5": med(decode5), "full5": med(full5), "after5": med(after5), "fast": med(fast), "check": med(check), "check5": med(check5), "peer": med(peer), "peer5": med(peer5),
            "check5_no_turn": med(no_turn), "check5_faces_only": med(faces_only),
            "cpu5": med(cpu5), "peer_cpu5": med(peer_cpu5),
            "check5rst": med(check5rst), "peer5rst": med(peer5rst), "check_rst": med(check_rst)}


def bench_evalset(cache: Path) -> dict:
    """Recall and false alarms on the evaluation set, ours and the cascade, same pictures."""
    import pillow_heif

    import peer_cascade
    from handlers.sanitizer import ImageRefused, sanitize
    from tests.sanitizer import evalset

    pillow_heif.register_heif_opener()
    folder = cache / "evalset-v1"
    folder.mkdir(parents=True, exist_ok=True)
    cases = evalset.cases(W12)
    for c in cases:  # build each generated picture once and keep it
        if c.tags and "corpus" in c.tags:
            continue
        path = folder / (c.name.replace("/", "_") + ".jpg")
        if not path.exists():
            path.write_bytes(c.make())
        c.make = path.read_bytes

    def ours(data: bytes):
        try:
            r = sanitize(data, detect_faces=True, detect_text=True)
        except ImageRefused:
            return [], None
        return r.face_boxes, r.text_boxes

    def cascade(data: bytes):
        try:
            return peer_cascade.detect_bytes(data), None
        except Exception:  # noqa: BLE001 - a file the peer's decoder cannot open: nothing found
            return [], None

    held = evalset.holdout_cases(W12)  # never used to choose a threshold
    hfolder = cache / "evalset-holdout"
    hfolder.mkdir(parents=True, exist_ok=True)
    for c in held:
        path = hfolder / (c.name.replace("/", "_") + ".jpg")
        if not path.exists():
            path.write_bytes(c.make())
        c.make = path.read_bytes
    return {"ours": evalset.score(ours, cases), "cascade": evalset.score(cascade, cases), "cases": cases,
            "held_ours": evalset.score(ours, held), "held_cascade": evalset.score(cascade, held), "held": held}


_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])


def hwm_mb():
    # VmHWM (not ru_maxrss, which Linux carries over from the forking parent across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024


from handlers.sanitizer import sanitize, Limits
import PIL.Image  # imported by the faces path anyway; count it in the baseline too
base = hwm_mb()
data = open(sys.argv[2], "rb").read()
on = sys.argv[3] != "0"
r = sanitize(data, limits=Limits(max_pixels=60_000_000), detect_faces=on, detect_text=on,
             blur_faces=sys.argv[3] == "2", blur_text=sys.argv[3] == "2")
print(base, hwm_mb(), len(data) // (1 << 20), r.width * r.height, r.faces)
"""


def peak_rss(big: Path, mode: str) -> tuple[int, int, int, int, int]:
    """mode: "0" faces off, "1" faces on, "2" blur faces."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(REPO), str(big), mode],
                         check=True, capture_output=True, text=True).stdout.split()
    return tuple(int(x) for x in out)  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each batch timing (default 5)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "referral-bot-bench-images")
    args = ap.parse_args()

    files, big = generate(args.cache)
    size_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
    print(f"batch: {len(files)} JPEGs, {W12}x{H12} ({W12 * H12 / 1e6:.1f} MP), {size_mb:.1f} MB each on average, "
          "EXIF+GPS+thumbnail+XMP")
    print(f"timing {args.reps} repetitions of each batch ...", flush=True)
    batches = bench_batches(files, args.reps)
    inproc = bench_in_process(files, max(1, args.reps // 2))
    print("evaluation set: ours and the cascade on the same pictures (generated ones cached) ...", flush=True)
    ev = bench_evalset(args.cache)
    base_mb, peak_mb, big_mb, big_px, _ = peak_rss(big, "0")
    _, peak_faces_mb, _, _, big_faces = peak_rss(big, "1")
    _, peak_blur_mb, _, _, _ = peak_rss(big, "2")

    ours = statistics.median(batches["referral-bot sanitize --out-dir"])
    print()
    print(f"{'batch of 24 x 12 MP (median of ' + str(args.reps) + ')':<44}{'total s':>9}{'ms/image':>10}{'vs ours':>9}")
    for name, times in batches.items():
        med = statistics.median(times)
        print(f"{name:<44}{med:>9.3f}{med / len(files) * 1000:>10.1f}{med / ours:>8.1f}x")
    print()
    print(f"in-process sanitize(), 12 MP JPEG, no check: {inproc['fast']:.2f} ms/image (median)")
    print()
    print("identifiability check per 12 MP photo, decode included (median ms)   ours (faces+text)   cascade (faces)")
    print(f"  2.9 MB test photos (8 photos x reps)                               {inproc['check']:>10.1f}"
          f"   {inproc['peer']:>15.1f}")
    print(f"  5 MB bench_matrix photos (4 photos x reps)                         {inproc['check5']:>10.1f}"
          f"   {inproc['peer5']:>15.1f}")
    print(f"  the same 5 MB photos with restart markers (as an iPhone writes) {inproc['check5rst']:>10.1f}"
          f"   {inproc['peer5rst']:>15.1f}")
    print(f"  the 2.9 MB test photos with restart markers                      {inproc['check_rst']:>10.1f}")
    print(f"  5 MB photos, CPU time of the process (both threads; what load does not inflate) {inproc['cpu5']:>6.1f}"
          f"   {inproc['peer_cpu5']:>9.1f}")
    print(f"  5 MB photos, ours without the turned passes / faces only (no text)  {inproc['check5_no_turn']:>6.1f}"
          f" / {inproc['check5_faces_only']:.1f}")
    floor = inproc['decode5'] + max(inproc['full5'], inproc['after5'] / 2)
    print(f"  5 MB photos, the floor: decode {inproc['decode5']:.1f} + max(full-range pass {inproc['full5']:.1f}, "
          f"half of all passes {inproc['after5']:.1f} / 2) = {floor:.1f} (no two-core schedule beats this)")
    o, c = ev["ours"], ev["cascade"]
    print()
    print(f"evaluation set ({len(ev['cases'])} pictures; tests/sanitizer/evalset.py; 12 MP)       ours      cascade")
    print(f"  faces found (recall)                   {o.face_found:>3}/{o.face_total} {o.face_recall:>6.1%}"
          f"   {c.face_found:>3}/{c.face_total} {c.face_recall:>6.1%}")
    print(f"  face false alarms, face-free pictures  {len(o.face_false_alarms):>3}/{o.face_free_total}"
          f"          {len(c.face_false_alarms):>3}/{c.face_free_total}")
    print(f"  face false alarms, skin photos         {len(o.skin_false_alarms):>3}/{o.skin_total}"
          f"           {len(c.skin_false_alarms):>3}/{c.skin_total}")
    print(f"  text found (recall)                    {o.text_found:>3}/{o.text_total} {o.text_recall:>6.1%}      (not looked for)")
    print(f"  text false alarms, skin photos         {len(o.text_false_alarms):>3}/{o.text_free_total}")
    print(f"  ours missed: {', '.join(o.missed_faces) or '-'}; text missed: {', '.join(o.missed_text) or '-'}")
    print(f"  ours false alarms: {', '.join(o.face_false_alarms) or '-'}")
    print(f"  cascade missed {len(c.missed_faces)}: {', '.join(c.missed_faces)}")
    print(f"  unlabelled: {o.notes}")
    ho, hc = ev["held_ours"], ev["held_cascade"]
    print(f"held-out set ({len(ev['held'])} pictures, evalset.holdout_cases(); no threshold chosen on it)   ours      cascade")
    print(f"  faces found (recall)                   {ho.face_found:>3}/{ho.face_total} {ho.face_recall:>6.1%}"
          f"   {hc.face_found:>3}/{hc.face_total} {hc.face_recall:>6.1%}")
    print(f"  face false alarms, skin photos         {len(ho.skin_false_alarms):>3}/{ho.skin_total}"
          f"           {len(hc.skin_false_alarms):>3}/{hc.skin_total}")
    print(f"  text found / false alarms on skin      {ho.text_found:>3}/{ho.text_total} / {len(ho.text_false_alarms)}")
    print(f"  ours missed: {', '.join(ho.missed_faces) or '-'}")
    print(f"peak RSS sanitising a {big_px / 1e6:.1f} MP JPEG ({big_mb} MB, {big_faces} face), child process: "
          f"{peak_mb} MB no check, {peak_faces_mb} MB faces and text checked, {peak_blur_mb} MB blurring "
          f"(interpreter + imports alone: {base_mb} MB)")

    ok = True
    checks = [
        ("faster than exiftool batch incl. start-up", "exiftool -all= (batch)" not in batches
         or ours < statistics.median(batches["exiftool -all= (batch)"])),
        ("<= 10 ms per 12 MP JPEG in-process", inproc["fast"] <= 10.0),
        ("48 MP peak RSS < 300 MB (check off and on)", max(peak_mb, peak_faces_mb) < 300),
        ("identifiability check <= 100 ms per 12 MP photo (5 MB photos)", inproc["check5"] <= 100),
        ("identifiability check <= 100 ms per 12 MP photo (5 MB photos with restart markers)",
         inproc["check5rst"] <= 100),
        ("face recall >= 90% on the evaluation set", o.face_recall >= 0.9),
        ("0 face false alarms on skin photos", not o.skin_false_alarms),
    ]
    print()
    for label, passed in checks:
        print(f"target: {label}: {'met' if passed else 'MISSED'}")
        ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
