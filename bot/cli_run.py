"""`referral-bot run --config FILE`: run the bot (Matrix transport) until interrupted."""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="TOML config file (see `referral-bot init`)")
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="overrides [logging] level (default INFO)")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from bot.config import ConfigError, load_config
    from bot.metrics import configure_logging, logging_settings

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"referral-bot run: {exc}", file=sys.stderr)
        return 2
    # JSON lines (or text) through the redacting filter: no token, patient reference,
    # consent text or image bytes reaches a log line
    level, fmt = logging_settings(config.raw)
    redactor = configure_logging(args.log_level or level, fmt)
    # nio logs request URLs (with access tokens in query strings) at DEBUG: keep it quiet
    for noisy in ("nio", "aiohttp", "peewee"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def main() -> int:
        from bot.app import BotApp

        app = BotApp(config)
        for secret in app.secrets():
            redactor.add_secret(secret)
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
        for secret in app.secrets():  # the access token the login just produced
            redactor.add_secret(secret)
        print("referral-bot is running; press Ctrl-C to stop.", file=sys.stderr)
        await stop.wait()
        await app.stop()
        return 0

    return asyncio.run(main())


def _plain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
