"""A throwaway Synapse homeserver on loopback, for the demo, the tests and the benchmark.

It is a real Synapse (the ``matrix-synapse`` package), run as a child process with
SQLite, a media store and its signing key all inside one directory, listening on a
free 127.0.0.1 port, with rate limits effectively switched off and cheap password
hashing so that registering a handful of users takes milliseconds.

Users are registered through the shared-secret admin API
(``/_synapse/admin/v1/register``), which is what an operator would use too.

    hs = LocalSynapse(workdir)
    hs.start()                      # returns once the client API answers
    bot = hs.register("bot", admin=True)
    ...
    hs.stop()

The same directory can be started again after ``stop()`` (same port, same data):
the tests use that to restart Synapse in the middle of a referral.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

SERVER_NAME = "localhost"

# Every rate limiter Synapse knows about, set so high it never triggers.
_RATE_LIMITS = {
    "rc_message": {"per_second": 100000, "burst_count": 100000},
    "rc_registration": {"per_second": 100000, "burst_count": 100000},
    "rc_registration_token_validity": {"per_second": 100000, "burst_count": 100000},
    "rc_login": {
        "address": {"per_second": 100000, "burst_count": 100000},
        "account": {"per_second": 100000, "burst_count": 100000},
        "failed_attempts": {"per_second": 100000, "burst_count": 100000},
    },
    "rc_admin_redaction": {"per_second": 100000, "burst_count": 100000},
    "rc_joins": {
        "local": {"per_second": 100000, "burst_count": 100000},
        "remote": {"per_second": 100000, "burst_count": 100000},
    },
    "rc_joins_per_room": {"per_second": 100000, "burst_count": 100000},
    "rc_3pid_validation": {"per_second": 100000, "burst_count": 100000},
    "rc_invites": {
        "per_room": {"per_second": 100000, "burst_count": 100000},
        "per_user": {"per_second": 100000, "burst_count": 100000},
        "per_issuer": {"per_second": 100000, "burst_count": 100000},
    },
    "rc_third_party_invite": {"per_second": 100000, "burst_count": 100000},
    "rc_media_create": {"per_second": 100000, "burst_count": 100000},
    "rc_federation": {"window_size": 1000, "sleep_limit": 100000, "sleep_delay": 0,
                      "reject_limit": 100000, "concurrent": 100000},
    "rc_key_requests": {"per_second": 100000, "burst_count": 100000},
    "rc_presence": {"per_user": {"per_second": 100000, "burst_count": 100000}},
    "rc_delayed_event_mgmt": {"per_second": 100000, "burst_count": 100000},
    "rc_reports": {"per_second": 100000, "burst_count": 100000},
    "rc_room_creation": {"per_second": 100000, "burst_count": 100000},
}


class SynapseError(RuntimeError):
    """Synapse did not start, or an admin call failed."""


@dataclass(frozen=True)
class LocalUser:
    localpart: str
    user_id: str
    password: str
    access_token: str
    admin: bool


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSynapse:
    """Start, stop and register users on a throwaway Synapse rooted at ``workdir``."""

    def __init__(self, workdir: str | os.PathLike, port: int | None = None,
                 server_name: str = SERVER_NAME, extra_config: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server_name = server_name
        self.port = port or free_port()
        self.extra_config = dict(extra_config or {})
        self._proc: subprocess.Popen | None = None
        self._shared_secret_file = self.workdir / "registration_shared_secret"
        self.config_path = self.workdir / "homeserver.yaml"
        self.log_path = self.workdir / "homeserver.log"

    # ------------------------------------------------------------------ config
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def shared_secret(self) -> str:
        return self._shared_secret_file.read_text().strip()

    @property
    def media_store(self) -> Path:
        return self.workdir / "media_store"

    def _write_config(self) -> None:
        if not self._shared_secret_file.exists():
            self._shared_secret_file.write_text(secrets.token_hex(32))
            os.chmod(self._shared_secret_file, 0o600)
        key_path = self.workdir / "signing.key"
        if not key_path.exists():
            from signedjson.key import generate_signing_key, write_signing_keys

            with open(key_path, "w") as fh:
                write_signing_keys(fh, [generate_signing_key("a_" + secrets.token_hex(2))])
        log_config = self.workdir / "log.yaml"
        log_config.write_text(
            "version: 1\n"
            "formatters:\n  precise:\n    format: '%(asctime)s %(levelname)s %(name)s %(message)s'\n"
            "handlers:\n  file:\n    class: logging.FileHandler\n"
            f"    filename: {json.dumps(str(self.log_path))}\n    formatter: precise\n"
            "root:\n  level: WARNING\n  handlers: [file]\n"
            "disable_existing_loggers: false\n"
        )
        config = {
            "server_name": self.server_name,
            "public_baseurl": self.url + "/",
            "pid_file": str(self.workdir / "homeserver.pid"),
            "listeners": [{
                "port": self.port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }],
            "database": {"name": "sqlite3",
                         "args": {"database": str(self.workdir / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(self.media_store),
            "max_upload_size": "60M",
            "registration_shared_secret_path": str(self._shared_secret_file),
            "enable_registration": False,
            "report_stats": False,
            "signing_key_path": str(key_path),
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "bcrypt_rounds": 4,
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            "enable_metrics": False,
            "federation_domain_whitelist": [],
            "dynamic_thumbnails": False,
            **_RATE_LIMITS,
        }
        config.update(self.extra_config)
        # JSON is valid YAML, and needs no third-party writer.
        self.config_path.write_text(json.dumps(config, indent=2))

    # --------------------------------------------------------------- lifecycle
    def start(self, timeout: float = 60.0) -> None:
        if self.running:
            return
        self._write_config()
        env = dict(os.environ)
        env.setdefault("SYNAPSE_CACHE_FACTOR", "0.5")
        stderr = open(self.workdir / "stderr.log", "ab")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.workdir, stdout=stderr, stderr=stderr, env=env,
            start_new_session=True,
        )
        stderr.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.workdir / "stderr.log").read_text(errors="replace")[-2000:]
                raise SynapseError(f"Synapse exited during start-up:\n{tail}")
            try:
                with urllib.request.urlopen(self.url + "/_matrix/client/versions", timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise SynapseError(f"Synapse did not answer on {self.url} within {timeout:.0f} s")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> "LocalSynapse":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ admin
    def _http(self, method: str, path: str, body: dict | None = None,
              token: str | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else {})
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, {"error": raw[:200].decode(errors="replace")}

    def register(self, localpart: str, password: str | None = None, admin: bool = False,
                 displayname: str | None = None) -> LocalUser:
        """Register a user with the shared-secret admin API and return its login."""
        password = password or secrets.token_urlsafe(18)
        status, body = self._http("GET", "/_synapse/admin/v1/register")
        if status != 200:
            raise SynapseError(f"could not get a registration nonce (HTTP {status})")
        nonce = body["nonce"]
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(nonce.encode() + b"\x00" + localpart.encode() + b"\x00"
                   + password.encode() + b"\x00" + (b"admin" if admin else b"notadmin"))
        status, body = self._http("POST", "/_synapse/admin/v1/register", {
            "nonce": nonce, "username": localpart, "password": password,
            "admin": admin, "displayname": displayname or localpart, "mac": mac.hexdigest(),
        })
        if status != 200:
            raise SynapseError(f"could not register {localpart} (HTTP {status}: "
                               f"{body.get('errcode', '')})")
        return LocalUser(localpart, body["user_id"], password, body["access_token"], admin)

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"
