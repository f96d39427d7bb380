from tests.telegram.conftest import fake_api  # noqa: F401  (the fake Telegram Bot API fixture)
