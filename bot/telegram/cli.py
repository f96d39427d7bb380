"""`referral-bot telegram --config FILE`: run the Telegram transport until interrupted."""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE",
                        help="TOML config file with a [telegram] section (see docs/telegram.md)")
    parser.add_argument("--log-level", default=None, choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="overrides [logging] level")


def run(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from bot.config import ConfigError, load_config
    from bot.metrics import configure_logging, logging_settings

    try:
        config = load_config(args.config, need_matrix=False)
    except ConfigError as exc:
        print(f"referral-bot telegram: {exc}", file=sys.stderr)
        return 2
    level, fmt = logging_settings(config.raw)
    redactor = configure_logging(args.log_level or level, fmt)

    async def main() -> int:
        from bot.telegram.app import TelegramApp

        try:
            app = TelegramApp(config)
        except ConfigError as exc:
            print(f"referral-bot telegram: {exc}", file=sys.stderr)
            return 2
        redactor.add_secret(app.tg.token)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except NotImplementedError:  # pragma: no cover
                pass
        try:
            await app.start()
        except Exception as exc:  # one clear sentence, not a traceback
            await app.stop()
            text = (str(exc).strip() or type(exc).__name__).splitlines()[0][:300]
            print(f"referral-bot telegram: could not start: {text}", file=sys.stderr)
            return 1
        print("referral-bot (Telegram) is running; press Ctrl-C to stop.", file=sys.stderr)
        await stop.wait()
        await app.stop()
        return 0

    return asyncio.run(main())
