"""Checks on deploy/ that can run without a Docker engine.

No container is built or started here (the development and CI machines have no Docker);
what can be checked is that the files are well-formed and agree with each other, and that
the real tools accept them: Synapse parses our homeserver.yaml, systemd verifies the unit.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_the_three_services_and_consistent_references():
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"postgres", "synapse", "bot"}
    declared_secrets = set(compose["secrets"])
    declared_volumes = set(compose["volumes"])
    declared_networks = set(compose["networks"])
    for name, svc in services.items():
        for secret in svc.get("secrets", []):
            assert secret in declared_secrets, f"{name} uses undeclared secret {secret}"
        for net in svc.get("networks", []):
            assert net in declared_networks, f"{name} uses undeclared network {net}"
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing file {source}"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
        for dep in svc.get("depends_on", {}):
            assert dep in services
    # Every secret file is produced by make-secrets.sh.
    script = (DEPLOY / "make-secrets.sh").read_text()
    for secret, spec in compose["secrets"].items():
        filename = Path(spec["file"]).name
        assert re.search(rf"\b{re.escape(filename)}\b", script), f"make-secrets.sh never writes {filename}"
    # Synapse runs on PostgreSQL, the bot is built from our Dockerfile.
    assert services["bot"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "postgres" in services["synapse"]["depends_on"]
    # Metrics and Synapse are published on loopback only.
    for svc in ("bot", "synapse"):
        for port in services[svc].get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{svc} publishes {port} beyond loopback"
    # The KEK is a secret file, never an environment variable.
    assert "kek" in services["bot"]["secrets"]
    for svc in services.values():
        env = svc.get("environment", {})
        assert not any("KEK" in key.upper() for key in env)


def test_dockerfile_copies_only_paths_that_exist_and_runs_unprivileged():
    text = (DEPLOY / "Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (REPO_ROOT / src).exists(), f"Dockerfile copies missing {src}"
    assert re.search(r"^USER referralbot$", text, flags=re.M)
    assert "9464" in text and "/healthz" in text


def test_example_config_is_valid_toml_without_inline_secrets():
    raw = (DEPLOY / "config.example.toml").read_text()
    config = tomllib.loads(raw)
    assert config["storage"]["backend"] == "postgres"
    assert config["storage"]["key_file"].startswith("/run/secrets/")
    # Secrets are referenced by *_file keys only.
    for line in raw.splitlines():
        if "=" not in line or line.lstrip().startswith("# ") and " = " not in line:
            continue
        key = line.split("=", 1)[0].strip().lstrip("# ")
        if any(word in key for word in ("password", "token", "secret", "kek")):
            assert key.endswith("_file"), f"secret inline in example config: {key}"


def test_example_config_is_accepted_by_the_bots_own_parser(tmp_path):
    """The example must match bot/config.py, not just be TOML: secrets point at files
    (replaced here by temp files), and the policy it sets fits Telegram's 48 h window."""
    from bot.config import parse_config

    raw = tomllib.loads((DEPLOY / "config.example.toml").read_text())
    for section in raw.values():
        if not isinstance(section, dict):
            continue
        for key in list(section):
            if key.endswith("_file") and key != "key_file":
                secret = tmp_path / key
                secret.write_text("not-a-real-secret\n")
                section[key] = str(secret)
    config = parse_config(raw, DEPLOY / "config.example.toml")
    assert config.storage.backend == "postgres" and config.storage.dsn.startswith("postgresql://")
    assert config.matrix is not None and config.matrix.password == "not-a-real-secret"
    policy = config.policy()
    assert "dermatology" in policy.specialties
    assert policy.max_lifetime + policy.grace_period < __import__("datetime").timedelta(hours=48)


def test_make_secrets_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(DEPLOY / "make-secrets.sh")], check=True)
    subprocess.run(["bash", "-n", str(DEPLOY / "postgres" / "init-databases.sh")], check=True)


def test_synapse_accepts_the_homeserver_config(tmp_path):
    # find_spec, not importorskip: importing synapse in this process would flip PIL's global
    # ImageFile.LOAD_TRUNCATED_IMAGES to True (synapse/__init__.py) for every later test.
    if importlib.util.find_spec("synapse") is None:
        pytest.skip("matrix-synapse is not installed")
    data = tmp_path / "data"
    (data / "store").mkdir(parents=True)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    text = (DEPLOY / "synapse" / "homeserver.yaml").read_text()
    text = text.replace("/data/", f"{data}/").replace("/run/secrets/", f"{secrets}/")
    (data / "homeserver.yaml").write_text(text)
    shutil.copy(DEPLOY / "synapse" / "log.config", data / "log.config")
    for name in ("synapse_macaroon_secret", "synapse_form_secret",
                 "synapse_registration_secret", "synapse_pgpass"):
        (secrets / name).write_text("test-secret-" + name + "\n")
    probe = (
        "from synapse.config.homeserver import HomeServerConfig as H\n"
        "import sys\n"
        "p = sys.argv[1]\n"
        "H.load_or_generate_config('t', ['--config-path', p, '--generate-keys'])\n"
        "c = H.load_config('t', ['--config-path', p])\n"
        "print(c.server.server_name, c.database.databases[0].config['name'],\n"
        "      c.retention.retention_enabled, c.registration.enable_registration)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(data / "homeserver.yaml")],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1].split() == ["example.org", "psycopg2", "True", "False"]


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (DEPLOY / "systemd" / "referral-bot.service").read_text()
    assert "LoadCredential=matrix_password:" in unit
    # The binary does not exist on the test machine; point ExecStart at one that does so
    # that verify checks everything else in the unit.
    unit = unit.replace("/opt/referral-bot/bin/referral-bot", shutil.which("true") or "/bin/true")
    path = tmp_path / "referral-bot.service"
    path.write_text(unit)
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines()
                if "referral-bot.service" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
