"""The cross-signing glue without a homeserver: what the bot signs verifies with
matrix.org's own signedjson (an independent implementation of "Signing JSON"), and the
private keys are sealed in the store under the deployment key, bound to the account."""
from __future__ import annotations

import base64
import json

import pytest
from signedjson.key import decode_verify_key_bytes
from signedjson.sign import SignatureVerifyException, verify_signed_json

from bot.matrix.crosssign import (CrossSigningKeys, CrossSigningProblem, add_signature,
                                  signature_valid)
from storage.keys import Keys

USER = "@referral-bot:example.org"


def verify_key(public_b64: str):
    raw = base64.b64decode(public_b64 + "=" * (-len(public_b64) % 4))
    return decode_verify_key_bytes(f"ed25519:{public_b64}", raw)


def test_uploaded_keys_are_signed_by_the_master_key():
    keys = CrossSigningKeys.generate()
    body = keys.upload_body(USER)
    assert body["master_key"]["usage"] == ["master"]
    assert body["master_key"]["keys"] == {f"ed25519:{keys.master_public}": keys.master_public}
    for name, usage in (("self_signing_key", "self_signing"), ("user_signing_key", "user_signing")):
        obj = body[name]
        assert obj["usage"] == [usage] and obj["user_id"] == USER
        verify_signed_json(obj, USER, verify_key(keys.master_public))   # raises if invalid
        assert signature_valid(obj, USER, keys.master_public)
        # not signed by anything else
        with pytest.raises(SignatureVerifyException):
            verify_signed_json(obj, USER, verify_key(keys.self_signing_public))
    assert len({keys.master_public, keys.self_signing_public, keys.user_signing_public}) == 3


def test_a_device_signature_covers_the_device_keys_not_unsigned_data():
    keys = CrossSigningKeys.generate()
    device = {"user_id": USER, "device_id": "BOTDEVICE", "algorithms": ["m.megolm.v1.aes-sha2"],
              "keys": {"ed25519:BOTDEVICE": "x" * 43, "curve25519:BOTDEVICE": "y" * 43},
              "signatures": {USER: {"ed25519:BOTDEVICE": "z" * 86}},
              "unsigned": {"device_display_name": "référral bot"}}
    signed = add_signature(device, USER, keys.self_signing)
    verify_signed_json(signed, USER, verify_key(keys.self_signing_public))
    assert signed["signatures"][USER]["ed25519:BOTDEVICE"] == "z" * 86   # the device's own kept
    signed["unsigned"]["device_display_name"] = "renamed"                 # not covered
    assert signature_valid(signed, USER, keys.self_signing_public)
    tampered = json.loads(json.dumps(signed))
    tampered["keys"]["ed25519:BOTDEVICE"] = "w" * 43                      # covered
    assert not signature_valid(tampered, USER, keys.self_signing_public)
    with pytest.raises(SignatureVerifyException):
        verify_signed_json(tampered, USER, verify_key(keys.self_signing_public))


def test_private_keys_are_sealed_under_the_deployment_key_and_account():
    deployment = Keys.from_master(bytes(range(32)))
    assert len(deployment.cross_signing_key) == 32
    assert deployment.cross_signing_key not in (deployment.kek, deployment.records_key,
                                                deployment.patient_ref_key)
    keys = CrossSigningKeys.generate()
    blob = keys.seal(deployment.cross_signing_key, USER)
    for seed in (keys.master, keys.self_signing, keys.user_signing):
        assert seed.hex() not in blob and base64.b64encode(seed).decode()[:20] not in blob
    for seed in (keys.master, keys.self_signing, keys.user_signing):   # repr: public key only
        assert seed.hex() not in repr(keys) and str(seed) not in repr(keys)
    opened = CrossSigningKeys.unseal(blob, deployment.cross_signing_key, USER)
    assert opened == keys
    other = Keys.from_master(bytes(range(1, 33)))
    with pytest.raises(CrossSigningProblem):
        CrossSigningKeys.unseal(blob, other.cross_signing_key, USER)        # another key file
    with pytest.raises(CrossSigningProblem):
        CrossSigningKeys.unseal(blob, deployment.cross_signing_key, "@someone:example.org")
