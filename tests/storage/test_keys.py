"""Key file / environment key loading and derivation."""
from __future__ import annotations

import base64
import os
import stat

import pytest

from storage.keys import ENV_VAR, KeyProblem, Keys, generate_key_file, load_key_file, load_keys


def test_generated_key_file_is_0600_and_loads(tmp_path):
    path = generate_key_file(tmp_path / "bot.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = load_key_file(path)
    assert len(keys.kek) == 32 and len(keys.patient_ref_key) == 32 and len(keys.records_key) == 32
    # distinct labels -> distinct keys
    assert len({keys.kek, keys.patient_ref_key, keys.records_key}) == 3
    # same file -> same keys
    assert load_key_file(path) == keys
    assert "kek" not in repr(keys) or base64.b64encode(keys.kek).decode() not in repr(keys)


def test_existing_key_file_is_never_overwritten(tmp_path):
    path = generate_key_file(tmp_path / "bot.key")
    before = path.read_bytes()
    with pytest.raises(KeyProblem, match="refusing to overwrite"):
        generate_key_file(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = generate_key_file(tmp_path / "bot.key")
    os.chmod(path, mode)
    with pytest.raises(KeyProblem) as err:
        load_key_file(path)
    assert f"{mode:04o}" in str(err.value)
    assert "chmod 600" in str(err.value)


def test_missing_and_malformed_key_files(tmp_path):
    with pytest.raises(KeyProblem, match="does not exist"):
        load_key_file(tmp_path / "absent.key")
    bad = tmp_path / "bad.key"
    for content, match in [
        ("not base64 !!!\n", "not valid base64"),
        (base64.b64encode(b"short").decode() + "\n", "32 bytes"),
        ("# only a comment\n", "exactly one base64 line"),
    ]:
        bad.write_text(content)
        os.chmod(bad, 0o600)
        with pytest.raises(KeyProblem, match=match):
            load_key_file(bad)


def test_symlinked_key_file_is_refused(tmp_path):
    real = generate_key_file(tmp_path / "real.key")
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyProblem, match="cannot open"):
        load_key_file(link)


def test_environment_variable(tmp_path):
    master = os.urandom(32)
    env = {ENV_VAR: base64.b64encode(master).decode()}
    keys = load_keys(None, environ=env)
    assert keys == Keys.from_master(master, source=keys.source)
    assert ENV_VAR in keys.source
    with pytest.raises(KeyProblem, match="no key given"):
        load_keys(None, environ={})
    with pytest.raises(KeyProblem, match=ENV_VAR):
        load_keys(None, environ={ENV_VAR: "@@@"})


def test_key_file_wins_over_environment(tmp_path):
    path = generate_key_file(tmp_path / "bot.key")
    env = {ENV_VAR: base64.b64encode(os.urandom(32)).decode()}
    assert load_keys(path, environ=env) == load_key_file(path)


def test_patient_ref_hasher_uses_the_derived_secret(keys):
    hasher = keys.patient_ref_hasher()
    a = hasher.hash("943 476 5919")
    assert a == hasher.hash("9434765919")
    assert "9434765919" not in a
    other = Keys.from_master(os.urandom(32)).patient_ref_hasher()
    assert other.hash("9434765919") != a
