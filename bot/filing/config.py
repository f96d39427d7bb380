"""The ``[filing]`` section of the bot's TOML config: which sinks, and how to reach them.

    [filing]
    retention_warning_days = 7          # warn the GP and the operator before an unfiled record's retention ends

    [[filing.sink]]
    name = "practice-inbox"             # goes into the audit trail
    type = "folder"                     # folder | smtp | dicomweb
    label = "the practice document inbox"   # what the GP reads: "filed to the practice document inbox"
    path = "/var/spool/referral-bot/inbox"

    [[filing.sink]]
    name = "practice-mail"
    type = "smtp"
    label = "the practice mailbox"
    host = "smtp.example.nhs.uk"
    port = 587
    from = "referral-bot@example.nhs.uk"
    to = "documents@riverside.example.nhs.uk"
    username = "referral-bot"
    password_file = "/etc/referral-bot/smtp-password"   # or password_env / REFERRAL_BOT_FILING_PASSWORD
    cafile = "/etc/ssl/certs/ca-certificates.crt"       # optional

    [[filing.sink]]
    name = "pacs"
    type = "dicomweb"
    label = "the hospital PACS"
    url = "https://pacs.example.nhs.uk/dicom-web"
    token_file = "/etc/referral-bot/pacs-token"          # optional bearer token

No ``[filing]`` (or no sink): filing is off; the bot keeps no record copy and destroys
the vault copies at the end of their retention (as before this feature).
"""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

from bot.filing.sinks import DicomWebSink, FolderSink, SmtpSink, Sink

__all__ = ["FilingConfigError", "parse_sinks", "filing_key"]


class FilingConfigError(ValueError):
    """One plain sentence naming the setting."""


def filing_key(records_key: bytes) -> bytes:
    """The key that makes filed file names unguessable (derived, one purpose)."""
    return hmac.new(records_key, b"referral-bot filing names v1", hashlib.sha256).digest()


def _secret(entry: dict, name: str, where: str, base: Path | None) -> str | None:
    """The sink's secret, read by the config's one secret reader (``bot.config``)."""
    from bot.config import ConfigError, read_secret

    try:
        return read_secret(entry, name, "filing", base, where=where)
    except ConfigError as exc:
        raise FilingConfigError(str(exc)) from None


def parse_sinks(raw: dict[str, Any], *, key: bytes, base: Path | None = None) -> list[Sink]:
    section = raw.get("filing") or {}
    if not isinstance(section, dict):
        raise FilingConfigError("[filing] must be a table.")
    entries = section.get("sink", []) or []
    if not isinstance(entries, list):
        raise FilingConfigError("[[filing.sink]] must be a list of tables.")
    sinks: list[Sink] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, 1):
        where = f"[[filing.sink]] #{n}"
        if not isinstance(entry, dict):
            raise FilingConfigError(f"{where} must be a table.")
        name = str(entry.get("name") or "").strip()
        kind = str(entry.get("type") or "").strip()
        if not name or not name.replace("-", "").replace("_", "").isalnum():
            raise FilingConfigError(f"{where} needs a name made of letters, digits, - or _.")
        if name in seen:
            raise FilingConfigError(f"{where}: the name {name!r} is used twice.")
        seen.add(name)
        where = f"[[filing.sink]] {name!r}"
        label = str(entry.get("label") or "").strip()
        if kind == "folder":
            if not entry.get("path"):
                raise FilingConfigError(f"{where} (folder) needs path.")
            path = Path(str(entry["path"]))
            if base and not path.is_absolute():
                path = base / path
            sinks.append(FolderSink(name=name, label=label or "the practice document inbox", path=path, key=key))
        elif kind == "smtp":
            for need in ("host", "from", "to"):
                if not entry.get(need):
                    raise FilingConfigError(f"{where} (smtp) needs {need}.")
            sinks.append(SmtpSink(
                name=name, label=label or "the practice mailbox", host=str(entry["host"]),
                port=int(entry.get("port", 587)), sender=str(entry["from"]), recipient=str(entry["to"]),
                username=entry.get("username"), password=_secret(entry, "password", where, base),
                cafile=entry.get("cafile"), timeout=float(entry.get("timeout_seconds", 30))))
        elif kind == "dicomweb":
            url = str(entry.get("url") or "")
            if not url.startswith(("http://", "https://")):
                raise FilingConfigError(f"{where} (dicomweb) needs url, the DICOMweb root (https://…/dicom-web).")
            sinks.append(DicomWebSink(
                name=name, label=label or "the hospital PACS", url=url, token=_secret(entry, "token", where, base),
                cafile=entry.get("cafile"), timeout=float(entry.get("timeout_seconds", 60))))
        else:
            raise FilingConfigError(f"{where} type must be folder, smtp or dicomweb (got {kind!r}).")
    return sinks
