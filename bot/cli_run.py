"""`referral-bot run --config FILE`: run the bot (Matrix transport) until interrupted."""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="TOML config file (see `referral-bot init`)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from bot.config import ConfigError, load_config

    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # nio logs request URLs (with access tokens in query strings) at DEBUG: keep it quiet
    for noisy in ("nio", "aiohttp", "peewee"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"referral-bot run: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        from bot.app import BotApp

        app = BotApp(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # pragma: no cover
                pass
        try:
            await app.start()
        except Exception as exc:  # a clear sentence, not a traceback
            await app.stop()
            print(f"referral-bot run: could not start: {_plain(exc)}", file=sys.stderr)
            return 1
        print("referral-bot is running; press Ctrl-C to stop.", file=sys.stderr)
        await stop.wait()
        await app.stop()
        return 0

    return asyncio.run(main())


def _plain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
