"""The ``[telegram]`` section of the config file, parsed here (the transport owns it).

::

    [telegram]
    token_file = "/run/secrets/telegram_token"   # or token_env = "VAR", or REFERRAL_BOT_TELEGRAM_TOKEN
    allow_images = false        # the explicit opt-in: patient data (images, consent, questions) over Telegram
    preview_images = false      # show the GP a held photo's blurred preview as a photo (needs allow_images)
    lifetimes = "shorten"       # or "refuse": what to do when the policy outlives Telegram's 48 h delete window
    poll_timeout_seconds = 20
    tick_seconds = 1.0
    max_image_mb = 20
    # base_url / base_file_url: only for a self-hosted Bot API server (or the tests' fake one)

    [telegram.users]            # Telegram numeric user id -> clinician user id in [directory]
    "123456789" = "@dr.gp:example.org"

    [telegram.specialties]      # forum supergroup (chat id) per specialty key in [specialties]
    dermatology = -1001234567890

Every problem raises :class:`TelegramConfigError` with one plain sentence naming the setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.config import ConfigError, read_secret

__all__ = [
    "TelegramConfigError",
    "TelegramConfig",
    "parse_telegram_config",
    "fit_policy_to_telegram",
    "DELETE_WINDOW",
    "SAFETY_MARGIN",
]

#: Telegram lets a bot delete a message only within 48 hours of sending it.
DELETE_WINDOW = timedelta(hours=48)
#: room for downtime, ticks and retries: images must be gone this long before the window closes.
SAFETY_MARGIN = timedelta(hours=2)
#: longest grace period kept when lifetimes are shortened
_SHORTENED_GRACE = timedelta(hours=12)


class TelegramConfigError(ValueError):
    """The [telegram] section is unusable; str() says which setting and why."""


@dataclass(frozen=True)
class TelegramConfig:
    token: str = field(repr=False)
    allow_images: bool = False
    # A held photo's preview is the one image whose de-identification nobody has confirmed
    # yet (the check can miss a face). Sent as a photo only with this second opt-in;
    # otherwise the GP gets its description in words (docs/telegram.md, "Previews").
    preview_images: bool = False
    users: dict[int, str] = field(default_factory=dict)  # telegram user id -> directory user id
    specialty_chats: dict[str, int] = field(default_factory=dict)  # specialty -> supergroup chat id
    lifetimes: str = "shorten"
    base_url: str = "https://api.telegram.org/bot"
    base_file_url: str = "https://api.telegram.org/file/bot"
    poll_timeout_seconds: float = 20.0
    tick_seconds: float = 1.0
    max_image_bytes: int = 20 * 1024 * 1024

    def telegram_id_for(self, user_id: str) -> int | None:
        for tg_id, uid in self.users.items():
            if uid == user_id:
                return tg_id
        return None

    def specialty_for_chat(self, chat_id: int) -> str | None:
        for key, cid in self.specialty_chats.items():
            if cid == chat_id:
                return key
        return None


def _read_token(section: dict[str, Any], base: Path | None) -> str:
    """The bot token, read by the one secret reader every section uses (bot/config.py)."""
    try:
        return read_secret(section, "token", "telegram", base, required=True, what="the bot token")
    except ConfigError as exc:
        raise TelegramConfigError(str(exc)) from None


def _number(section: dict[str, Any], key: str, default: float, minimum: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise TelegramConfigError(f"[telegram] {key} must be a number of at least {minimum:g}.")
    return float(value)


def parse_telegram_config(raw: dict[str, Any] | None, base: Path | None = None,
                          known_users: set[str] | None = None,
                          known_specialties: set[str] | None = None) -> TelegramConfig | None:
    """Parse ``raw["telegram"]`` of the whole config (None when there is no such section).

    ``known_users`` / ``known_specialties``: the directory's user ids and the configured
    specialty keys, to catch typos early (skipped when None).
    """
    if raw is None or raw.get("telegram") is None:
        return None
    t = raw["telegram"]
    if not isinstance(t, dict):
        raise TelegramConfigError("[telegram] must be a table.")
    token = _read_token(t, base)
    if ":" not in token:
        raise TelegramConfigError("[telegram] the token does not look like a bot token (digits:letters).")
    allow = t.get("allow_images", False)
    if not isinstance(allow, bool):
        raise TelegramConfigError("[telegram] allow_images must be true or false.")
    previews = t.get("preview_images", False)
    if not isinstance(previews, bool):
        raise TelegramConfigError("[telegram] preview_images must be true or false.")
    if previews and not allow:
        raise TelegramConfigError("[telegram] preview_images = true needs allow_images = true: without it no "
                                  "photo is taken on Telegram, so there is nothing to preview.")
    lifetimes = str(t.get("lifetimes", "shorten"))
    if lifetimes not in ("shorten", "refuse"):
        raise TelegramConfigError('[telegram] lifetimes must be "shorten" or "refuse".')

    users: dict[int, str] = {}
    for key, uid in (t.get("users") or {}).items():
        try:
            tg_id = int(str(key))
        except ValueError:
            raise TelegramConfigError(f"[telegram.users] key {key!r} must be a numeric Telegram user id.") from None
        if tg_id <= 0:
            raise TelegramConfigError(f"[telegram.users] {key} is not a user id (user ids are positive).")
        uid = str(uid)
        if known_users is not None and uid not in known_users:
            raise TelegramConfigError(f"[telegram.users] {key} maps to {uid}, who is not in [directory].")
        users[tg_id] = uid
    if len(set(users.values())) != len(users):
        raise TelegramConfigError("[telegram.users] maps two Telegram accounts to the same clinician.")

    chats: dict[str, int] = {}
    for key, chat in (t.get("specialties") or {}).items():
        if isinstance(chat, bool) or not isinstance(chat, int) or chat >= 0:
            raise TelegramConfigError(
                f"[telegram.specialties] {key} must be the negative chat id of a forum supergroup.")
        if known_specialties is not None and key.lower() not in known_specialties:
            raise TelegramConfigError(f"[telegram.specialties] {key} is not a specialty in [specialties].")
        chats[key.lower()] = chat

    max_mb = _number(t, "max_image_mb", 20, 1)
    return TelegramConfig(
        token=token,
        allow_images=allow,
        preview_images=previews,
        users=users,
        specialty_chats=chats,
        lifetimes=lifetimes,
        base_url=str(t.get("base_url", "https://api.telegram.org/bot")),
        base_file_url=str(t.get("base_file_url", "https://api.telegram.org/file/bot")),
        poll_timeout_seconds=_number(t, "poll_timeout_seconds", 20, 0),
        tick_seconds=_number(t, "tick_seconds", 1.0, 0.05),
        max_image_bytes=int(min(max_mb, 20) * 1024 * 1024),  # the Bot API downloads at most 20 MB
    )


def fit_policy_to_telegram(policy: Any, mode: str = "shorten") -> tuple[Any, list[str]]:
    """Make sure no image can stay in a Telegram chat past the 48 h deletion window.

    An image is posted after its referral opens and is removed at the latest at the
    referral's expiry (``max_lifetime``) or ``grace_period`` after an opinion given just
    before expiry, so its time in chat is bounded by ``max_lifetime + grace_period``;
    that must stay under ``DELETE_WINDOW - SAFETY_MARGIN`` (46 h).

    ``mode="shorten"`` returns a shortened copy of the policy and notes saying what
    changed; ``mode="refuse"`` raises :class:`TelegramConfigError` instead.
    """
    budget = DELETE_WINDOW - SAFETY_MARGIN
    if policy.max_lifetime + policy.grace_period <= budget:
        return policy, []
    if mode == "refuse":
        raise TelegramConfigError(
            f"[policy] max_lifetime ({_hours(policy.max_lifetime)}) plus grace_period "
            f"({_hours(policy.grace_period)}) can keep an image in a Telegram chat longer than "
            f"{_hours(budget)}, but Telegram only lets the bot delete messages for 48 hours; "
            f"shorten them or set [telegram] lifetimes = \"shorten\"."
        )
    grace = min(policy.grace_period, _SHORTENED_GRACE)
    lifetime = min(policy.max_lifetime, budget - grace)
    lead = min(policy.reminder_lead, lifetime / 2)
    notes = []
    if grace != policy.grace_period:
        notes.append(f"grace period shortened from {_hours(policy.grace_period)} to {_hours(grace)}")
    if lifetime != policy.max_lifetime:
        notes.append(f"maximum referral lifetime shortened from {_hours(policy.max_lifetime)} to {_hours(lifetime)}")
    if lead != policy.reminder_lead:
        notes.append(f"reminder lead shortened from {_hours(policy.reminder_lead)} to {_hours(lead)}")
    return replace(policy, grace_period=grace, max_lifetime=lifetime, reminder_lead=lead), notes


def _hours(d: timedelta) -> str:
    h = d.total_seconds() / 3600
    return f"{h:g} h"
