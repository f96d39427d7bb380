"""The Telegram transport (python-telegram-bot v22): the same workflow as Matrix, over the
Bot API. Telegram chats are NOT end-to-end encrypted; see docs/telegram.md."""
