"""`referral-bot demo`: play the whole story on a throwaway local Synapse (see bot/matrix/demo.py)."""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep-running", action="store_true",
                        help="leave Synapse and the bot up afterwards and print logins for Element")
    parser.add_argument("--with-pacs", action="store_true",
                        help="also start a throwaway Orthanc PACS (if installed) and file the image there")
    parser.add_argument("--workdir", default=None, metavar="DIR",
                        help="use (and keep) this directory instead of a temporary one")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import shutil
    from pathlib import Path

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    for noisy in ("nio", "aiohttp", "peewee"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if shutil.which("exiftool") is None:
        print("referral-bot demo: exiftool is needed (apt-get install libimage-exiftool-perl).",
              file=sys.stderr)
        return 2
    import importlib.util

    # find it without importing it: importing synapse sets Pillow's LOAD_TRUNCATED_IMAGES
    # for the whole process, which would weaken the sanitizer running in this process
    if importlib.util.find_spec("synapse") is None:
        print("referral-bot demo: matrix-synapse is needed (pip install 'referral-bot[demo]').",
              file=sys.stderr)
        return 2
    from bot.matrix.demo import play

    try:
        return asyncio.run(play(sys.stdout, keep_running=args.keep_running,
                                workdir=Path(args.workdir) if args.workdir else None,
                                with_pacs=args.with_pacs))
    except KeyboardInterrupt:
        return 0
    except (TimeoutError, AssertionError) as exc:
        print(f"\nreferral-bot demo: FAILED: {exc}", file=sys.stderr)
        return 1
