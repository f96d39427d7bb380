"""Issue 9, finding 13: two bot processes on one database each sent every reply and would
share one Matrix crypto store. The second `referral-bot run` is now refused at once with
one plain line; `status` still works next to the running bot; after the first bot stops,
a new one starts."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from storage.instance import AlreadyRunning
from storage.sqlite_store import SQLiteStore
from tests.ops.test_serve import _closed_port


def _config(tmp_path: Path, name: str, db: str, store_dir: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[matrix]
homeserver = "http://127.0.0.1:{_closed_port()}"
user_id = "@bot:example.org"
password_env = "TEST_BOT_PASSWORD"
store_dir = "{store_dir}"

[storage]
sqlite_path = "{db}"
key_file = "bot.key"

[directory]
allowed_servers = ["example.org"]
[[directory.clinicians]]
user_id = "@gp:example.org"
practice = "P1"
""")
    return path


ENV = dict(os.environ, TEST_BOT_PASSWORD="not-logged", PYTHONUNBUFFERED="1")


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def _run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def _wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def test_a_second_bot_on_the_same_database_or_store_is_refused(tmp_path):
    from storage.keys import generate_key_file

    generate_key_file(tmp_path / "bot.key")
    first = _start(_config(tmp_path, "first", "bot.sqlite3", "store"))
    try:
        # the first bot holds both locks while it keeps retrying the unreachable homeserver
        _wait_for(tmp_path / "store" / "bot.lock")
        assert first.poll() is None
        for name, db, store_dir, what in (
            ("same", "bot.sqlite3", "store2", f"the database {tmp_path / 'bot.sqlite3'}"),
            ("shared-store", "other.sqlite3", "store", f"the Matrix store {tmp_path / 'store'}"),
        ):
            second = _run("run", "--config", str(_config(tmp_path, name, db, store_dir)))
            assert second.returncode == 1, second.stderr
            lines = [ln for ln in second.stderr.splitlines() if ln.startswith("referral-bot")]
            assert lines == [f"referral-bot run: could not start: another referral-bot is already running on "
                             f"{what} (pid {first.pid}); stop it first, or give this one its own database "
                             "and store directory"], second.stderr
        assert not (tmp_path / "other.sqlite3").exists()  # the refused bot opened nothing
        # `status` is no second bot: it reads next to the running one
        status = _run("status", "--config", str(tmp_path / "first.toml"))
        assert status.returncode == 0, status.stderr
        assert "Referrals open: 0" in status.stdout
    finally:
        _stop(first)
    # the lock went with the process: a new bot starts (and keeps retrying the homeserver)
    again = _start(tmp_path / "first.toml")
    try:
        time.sleep(2.5)
        assert again.poll() is None, again.stderr.read() if again.stderr else ""
    finally:
        _stop(again)


async def test_the_store_lock_in_one_process(tmp_path):
    from storage.keys import Keys

    keys = Keys.from_master(os.urandom(32))
    path = tmp_path / "bot.sqlite3"
    bot = await SQLiteStore.open(path, keys, exclusive=True)
    try:
        with pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):
            await SQLiteStore.open(path, keys, exclusive=True)
        tool = await SQLiteStore.open(path, keys)  # status / export: no lock
        await tool.close()
    finally:
        await bot.close()
    again = await SQLiteStore.open(path, keys, exclusive=True)
    await again.close()
