"""`referral-bot sanitize`: strip metadata (location, device, time, thumbnails) from image files.

    referral-bot sanitize INPUT -o OUTPUT
    referral-bot sanitize INPUT... --out-dir DIR

Output names never carry the input's name (a random stem is used with
--out-dir). A refused file gets one plain line on stderr and leaves no output
behind (we write to a temporary file and rename it into place).
Module-level imports stay light: the sanitizer itself is imported in run(),
and numpy/OpenCV/ONNX Runtime only load when faces or text are asked for.
"""
from __future__ import annotations

import argparse
import os
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image file(s) to clean")
    dest = parser.add_mutually_exclusive_group(required=True)
    dest.add_argument("-o", "--output", metavar="OUTPUT", help="where to write the clean image (one INPUT only)")
    dest.add_argument("--out-dir", metavar="DIR", help="write clean images into DIR under random names")
    parser.add_argument("--report", action="store_true", help="print what was removed, as JSON, on stdout")
    parser.add_argument("--detect-faces", action="store_true", help="look for faces and report how many")
    parser.add_argument("--blur-faces", action="store_true", help="blur any faces found (implies --detect-faces)")
    parser.add_argument("--detect-text", action="store_true",
                        help="look for text on the photo (labels, wristbands, writing) and report where")
    parser.add_argument("--blur-text", action="store_true", help="blur any text found (implies --detect-text)")
    parser.add_argument("--max-bytes", type=int, default=None, metavar="N", help="refuse files larger than N bytes (default 40 MiB)")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N", help="refuse images with more than N pixels (default 60 million)")


def _write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".sanitize-{os.urandom(6).hex()}.tmp")
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class _quiet_native_stderr:
    """Silence C libraries (libtiff, libjpeg, libheif) that print their own complaints on fd 2.

    A refusal must be ONE plain line on stderr: ours, not "ZIPDecode: Decoding error ...".
    """

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False


def run(args: argparse.Namespace) -> int:
    import warnings

    from handlers.sanitizer import ImageRefused, Limits, sanitize

    warnings.simplefilter("ignore")  # Pillow's warnings about damaged files are not for the user

    defaults = Limits()
    limits = Limits(
        max_bytes=args.max_bytes if args.max_bytes is not None else defaults.max_bytes,
        max_pixels=args.max_pixels if args.max_pixels is not None else defaults.max_pixels,
    )
    if args.output is not None and len(args.inputs) != 1:
        print("referral-bot sanitize: -o takes exactly one INPUT; use --out-dir for several.", file=sys.stderr)
        return 2
    if args.out_dir is not None and not os.path.isdir(args.out_dir):
        print(f"referral-bot sanitize: output directory {args.out_dir} does not exist.", file=sys.stderr)
        return 2
    detect = args.detect_faces or args.blur_faces
    reports: list[dict] = []
    failures = 0
    stem = None
    for index, path in enumerate(args.inputs, start=1):
        prefix = f"{path}: " if len(args.inputs) > 1 else ""
        try:
            size = os.path.getsize(path)
            if size > limits.max_bytes:
                raise ImageRefused(
                    "too_large",
                    f"That file is too big ({size / 1e6:.1f} MB, limit {limits.max_bytes / 1e6:.0f} MB); please send a smaller photo.",
                )
            with open(path, "rb") as fh:
                data = fh.read()
            with _quiet_native_stderr():
                result = sanitize(data, limits=limits, blur_faces=args.blur_faces, detect_faces=detect,
                                  detect_text=args.detect_text, blur_text=args.blur_text)
            if args.output is not None:
                out_path = args.output
            else:
                if stem is None:
                    stem = os.urandom(4).hex()
                out_path = os.path.join(args.out_dir, f"clean-{stem}-{index:04d}.{result.extension}")
            _write_atomic(out_path, result.data)
        except ImageRefused as exc:
            failures += 1
            print(f"{prefix}{exc}", file=sys.stderr)
            if args.report:
                reports.append({"input": path, "refused": exc.reason, "message": str(exc)})
            continue
        except OSError as exc:
            failures += 1
            what = (exc.strerror or "input/output error").lower()
            print(f"Cannot read or write {exc.filename or path}: {what}.", file=sys.stderr)
            continue
        if args.report:
            rep = result.report()
            rep["input"] = path
            rep["output"] = out_path
            reports.append(rep)
    if args.report:
        import json

        payload = reports[0] if args.output is not None and reports else reports
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 1 if failures else 0
