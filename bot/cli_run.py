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
        from bot.serve import serve_until_signalled

        app = BotApp(config)

        def hide_secrets() -> None:  # again after start: the login produced an access token
            for secret in app.secrets():
                redactor.add_secret(secret)

        hide_secrets()
        return await serve_until_signalled(
            app, "run", "referral-bot is running; press Ctrl-C to stop.", on_started=hide_secrets)

    return asyncio.run(main())

