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
        from bot.serve import serve_until_signalled
        from bot.telegram.app import TelegramApp

        try:
            app = TelegramApp(config)
        except ConfigError as exc:
            print(f"referral-bot telegram: {exc}", file=sys.stderr)
            return 2
        redactor.add_secret(app.tg.token)
        return await serve_until_signalled(
            app, "telegram", "referral-bot (Telegram) is running; press Ctrl-C to stop.")

    return asyncio.run(main())
