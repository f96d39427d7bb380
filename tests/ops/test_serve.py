"""`referral-bot run` against a homeserver that does not answer: it keeps retrying, but a
SIGTERM (systemd stop, Ctrl-C) still ends it promptly with one plain line."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_run_stops_on_sigterm_while_the_homeserver_is_unreachable(tmp_path):
    from storage.keys import generate_key_file

    generate_key_file(tmp_path / "bot.key")
    (tmp_path / "config.toml").write_text(f"""
[matrix]
homeserver = "http://127.0.0.1:{_closed_port()}"
user_id = "@bot:example.org"
password_env = "TEST_BOT_PASSWORD"
store_dir = "store"

[storage]
sqlite_path = "bot.sqlite3"
key_file = "bot.key"

[directory]
allowed_servers = ["example.org"]
[[directory.clinicians]]
user_id = "@gp:example.org"
practice = "P1"
""")
    env = dict(os.environ, TEST_BOT_PASSWORD="not-logged", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "run", "--config", str(tmp_path / "config.toml")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(3)
    assert proc.poll() is None, "it should keep retrying the unreachable server, not give up"
    proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("SIGTERM did not stop a bot that was still starting")
    assert proc.returncode == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("referral-bot run:")]
    assert lines == ["referral-bot run: stopped before start-up finished (is the server reachable?)"]
    assert "Traceback" not in err and "not-logged" not in err + out
