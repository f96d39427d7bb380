"""The `referral-bot` command.

Each sub-command lives in its own module (``bot/cli_<name>.py``) exposing
``configure(parser)`` and ``run(args) -> int``. Only the chosen sub-command's
module is imported, so `referral-bot sanitize` does not pay for Matrix, SQLite
or FHIR imports at start-up.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("bot.cli_demo", "run the whole story on a local Synapse (the embedded default)"),
    "sanitize": ("bot.cli_sanitize", "strip metadata (location, device, time, thumbnails) from image files"),
    "init": ("bot.cli_init", "write a commented example config and a fresh key file"),
    "run": ("bot.cli_run", "run the bot with a config file"),
    "telegram": ("bot.telegram.cli", "run the Telegram transport with its own config file"),
    "status": ("bot.cli_status", "show live images, next expiry and overdue items"),
    "audit": ("bot.cli_audit", "check the hash-chained audit trail"),
    "export": ("bot.cli_export", "export a referral as a FHIR R4 bundle"),
    "cross-signing": ("bot.cli_crosssign", "set up (or --reset) the bot's Matrix cross-signing"),
}


def _top_level_help() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: referral-bot COMMAND [options]", "", "commands:"]
    for name, (_module, help_text) in SUBCOMMANDS.items():
        lines.append(f"  {name.ljust(width)}  {help_text}")
    lines.append("")
    lines.append("Run `referral-bot COMMAND --help` for a command's options.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_level_help())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"referral-bot: unknown command {name!r}", file=sys.stderr)
        print(_top_level_help(), file=sys.stderr)
        return 2
    module_name, help_text = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"referral-bot: the {name!r} command is not available in this build", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"referral-bot {name}", description=help_text)
    module.configure(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
