"""Data-free Telegram notifications for a Matrix deployment.

Where clinicians live on Telegram but patient data must stay in end-to-end-encrypted
Matrix rooms, the Matrix bot can still tell the specialty's Telegram group that a new
referral is waiting. The message names the referral id and the specialty, nothing else:
no clinical question, no patient reference, no image.

Wiring (in the Matrix process)::

    notifier = TelegramNotifier(bot, tg_config, specialty_titles)
    matrix_transport.on_action_done = notifier.on_action_done

``on_action_done(action, outcome)`` is called by the Matrix transport after each outbox
action; when a ``PostThreadRoot`` succeeded (``ThreadRootPosted``), the notification is
sent in the background. Failures are logged and never affect the Matrix side.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from telegram import Bot
from telegram.error import TelegramError

from bot.telegram.config import TelegramConfig
from handlers import actions as A
from handlers import events as E

log = logging.getLogger("referral_bot.telegram.notifier")


def notification_text(referral_id: str, title: str) -> str:
    return (f"New referral {referral_id} for {title} is waiting in the encrypted Matrix room. "
            f"Details and images are only there.")


class TelegramNotifier:
    def __init__(self, bot: Bot, config: TelegramConfig, specialty_titles: dict[str, str] | None = None):
        self.bot = bot
        self.cfg = config
        self.titles = specialty_titles or {}
        self._tasks: set[asyncio.Task] = set()
        self.sent = 0
        self.failed = 0

    def on_action_done(self, action: Any, outcome: Any) -> None:
        if isinstance(action, A.PostThreadRoot) and isinstance(outcome, E.ThreadRootPosted):
            task = asyncio.get_running_loop().create_task(self.notify(action.specialty, action.referral_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def notify(self, specialty: str, referral_id: str) -> bool:
        chat_id = self.cfg.specialty_chats.get(specialty)
        if chat_id is None:
            return False
        title = self.titles.get(specialty) or specialty.capitalize()
        try:
            await self.bot.send_message(chat_id, notification_text(referral_id, title))
        except TelegramError as exc:
            self.failed += 1
            log.warning("Telegram notification failed (%s)", type(exc).__name__)
            return False
        self.sent += 1
        return True

    async def drain(self) -> None:
        """Wait for notifications in flight (for shutdown and tests)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
