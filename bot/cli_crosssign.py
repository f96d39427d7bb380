"""`referral-bot cross-signing --config FILE [--reset]`: the bot's Matrix cross-signing.

Without ``--reset`` it does what every start of the bot does (set up the keys if the
account has none, sign the device) and prints the result. With ``--reset`` it replaces
cross-signing keys the bot does not hold (made by another client, or by this bot with a
lost store) with new ones, authorised by the bot's password. Stop the bot first: this
uses its device and store.
"""
from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="TOML config file")
    parser.add_argument("--reset", action="store_true",
                        help="replace cross-signing keys the bot does not hold with new ones "
                             "(needs the bot's password; others must verify the bot again)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from bot.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"referral-bot cross-signing: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        from bot.app import open_store, pickle_key_for
        from bot.matrix import crosssign, nioclient
        from bot.matrix.state import TransportState

        m = config.matrix
        store, keys = await open_store(config)
        await store.close()
        client = await nioclient.login_persistent(
            m.homeserver, m.user_id, m.store_dir, pickle_key_for(config, keys),
            password=m.password, access_token=m.access_token, device_id=m.device_id,
            device_name=m.device_name)
        state = TransportState(m.store_dir / "transport.sqlite3")
        try:
            status = await crosssign.ensure_cross_signing(
                client, state, keys.cross_signing_key,
                password=str(m.password) if m.password else None, reset=args.reset)
        except (crosssign.CrossSigningProblem, crosssign.TransientCrossSigningError) as exc:
            print(f"referral-bot cross-signing: {exc}", file=sys.stderr)
            return 1
        finally:
            state.close()
            await client.close()
        if not status.ready:
            print(status.message, file=sys.stderr)
            return 1
        done = ("new keys uploaded, " if status.uploaded_keys else "") + (
            "device signed" if status.signed_device else "device already signed")
        print(f"{m.user_id}: cross-signed (master key {status.master_key}); "
              f"device {client.device_id}: {done}.")
        return 0

    return asyncio.run(main())
