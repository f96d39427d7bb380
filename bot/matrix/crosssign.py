"""Cross-signing for the bot's own Matrix account, so clients trust its device.

Element (matrix-js-sdk with its Rust crypto) marks every message from a device that
its owner has not cross-signed with a red shield ("Encrypted by a device not verified
by its owner"), and with "exclude insecure devices" on (the direction of MSC4153) it
neither decrypts such a device's messages nor shares room keys with it. matrix-nio
does not do cross-signing, so the bot does it here, at every start:

* first start: make three Ed25519 keys (master, self-signing, user-signing), sign the
  self-signing and user-signing keys with the master key and upload them
  (``POST /_matrix/client/v3/keys/device_signing/upload``, with user-interactive auth
  by the bot's password when the homeserver asks for it); then sign the bot's device
  with the self-signing key, and the master key with the device
  (``POST /_matrix/client/v3/keys/signatures/upload``);
* later starts: read the account's keys back (``/keys/query``); if they are the ones
  the bot holds and its device already carries a valid self-signing signature,
  nothing is sent (a new device after a fresh login is signed);
* an account whose cross-signing keys the bot does not hold (made by another client,
  or by this bot with a store that was lost) is left alone: the operator is told
  once, in plain words, how to replace them (``referral-bot cross-signing --reset``).

The private keys (the 32-byte Ed25519 seeds) are kept in the transport's store, sealed
with AES-256-GCM under a key derived from the deployment key with its own label
(``storage.keys.LABEL_CROSS_SIGNING``), bound to the account's user id. Signing uses
``cryptography``'s Ed25519 and Matrix canonical JSON (sorted keys, no whitespace,
UTF-8), without ``signatures`` and ``unsigned``, as the spec's "Signing JSON" says.
Only the glue is written here. No log line carries a key or a token.
"""
from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

log = logging.getLogger("referral_bot.matrix.crosssign")

STATE_KEY = "cross_signing.v1"   # where the sealed seeds live in the transport state
_AAD = b"referral-bot matrix cross-signing keys v1\x00"


class CrossSigningProblem(Exception):
    """Cross-signing could not be set up; ``str()`` is a sentence for the operator."""


class TransientCrossSigningError(Exception):
    """The homeserver could not be reached or failed; worth trying again later."""


# ---------------------------------------------------------------- signing JSON
def unpadded_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def canonical_json(obj: dict) -> bytes:
    """Matrix canonical JSON of ``obj`` as signed: without ``signatures`` and ``unsigned``."""
    body = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                      sort_keys=True).encode("utf-8")


def public_key_of(seed: bytes) -> str:
    raw = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)
    return unpadded_b64(raw)


def add_signature(obj: dict, user_id: str, seed: bytes) -> dict:
    """A copy of ``obj`` carrying a signature by ``seed`` (key id ``ed25519:<public key>``)."""
    signature = unpadded_b64(Ed25519PrivateKey.from_private_bytes(seed).sign(canonical_json(obj)))
    signed = json.loads(json.dumps(obj))
    signed.setdefault("signatures", {}).setdefault(user_id, {})[
        f"ed25519:{public_key_of(seed)}"] = signature
    return signed


def signature_valid(obj: dict, user_id: str, public_key: str, key_id: str | None = None) -> bool:
    """True if ``obj`` carries a valid signature by ``user_id``'s Ed25519 ``public_key``
    (listed as ``ed25519:<public key>`` for cross-signing keys, or ``key_id``, e.g.
    ``ed25519:<device id>`` for a device)."""
    sig = ((obj.get("signatures") or {}).get(user_id) or {}).get(key_id or f"ed25519:{public_key}")
    if not isinstance(sig, str):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(_b64decode(public_key)).verify(
            _b64decode(sig), canonical_json(obj))
    except (InvalidSignature, ValueError):
        return False
    return True


def single_key(key_object: dict | None) -> str | None:
    """The Ed25519 public key of a cross-signing key object (it holds exactly one)."""
    keys = list(((key_object or {}).get("keys") or {}).values())
    return keys[0] if len(keys) == 1 else None


# ---------------------------------------------------------------- the keys
@dataclass(frozen=True, repr=False)
class CrossSigningKeys:
    """The three private keys (Ed25519 seeds). ``repr`` never shows them."""

    master: bytes
    self_signing: bytes
    user_signing: bytes

    def __repr__(self) -> str:
        return f"CrossSigningKeys(master={self.master_public})"

    @classmethod
    def generate(cls) -> "CrossSigningKeys":
        return cls(os.urandom(32), os.urandom(32), os.urandom(32))

    @property
    def master_public(self) -> str:
        return public_key_of(self.master)

    @property
    def self_signing_public(self) -> str:
        return public_key_of(self.self_signing)

    @property
    def user_signing_public(self) -> str:
        return public_key_of(self.user_signing)

    def upload_body(self, user_id: str) -> dict:
        """The three public key objects; self-signing and user-signing signed by the master."""
        def key_object(usage: str, seed: bytes) -> dict:
            pub = public_key_of(seed)
            return {"user_id": user_id, "usage": [usage], "keys": {f"ed25519:{pub}": pub}}

        return {
            "master_key": key_object("master", self.master),
            "self_signing_key": add_signature(key_object("self_signing", self.self_signing),
                                              user_id, self.master),
            "user_signing_key": add_signature(key_object("user_signing", self.user_signing),
                                              user_id, self.master),
        }

    # sealed in the transport state: AES-256-GCM, bound to the account
    def seal(self, key: bytes, user_id: str) -> str:
        nonce = os.urandom(12)
        ct = AESGCM(key).encrypt(nonce, self.master + self.self_signing + self.user_signing,
                                 _AAD + user_id.encode("utf-8"))
        return json.dumps({"v": 1, "nonce": unpadded_b64(nonce), "ct": unpadded_b64(ct)})

    @classmethod
    def unseal(cls, blob: str, key: bytes, user_id: str) -> "CrossSigningKeys":
        try:
            data = json.loads(blob)
            raw = AESGCM(key).decrypt(_b64decode(data["nonce"]), _b64decode(data["ct"]),
                                      _AAD + user_id.encode("utf-8"))
        except Exception:
            raise CrossSigningProblem(
                "The bot's stored cross-signing keys cannot be opened with this deployment "
                "key (a different key file, or a store copied from another account).") from None
        return cls(raw[:32], raw[32:64], raw[64:96])


# ---------------------------------------------------------------- the homeserver
class _Homeserver:
    """The few client-server calls cross-signing needs (own aiohttp session)."""

    def __init__(self, homeserver: str, access_token: str):
        self.base = homeserver.rstrip("/")
        self._token = access_token

    async def call(self, path: str, body: dict) -> tuple[int, dict]:
        headers = {"Authorization": f"Bearer {self._token}", "Content-Type": "application/json"}
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as sess:
                async with sess.post(self.base + path, data=json.dumps(body),
                                     headers=headers) as resp:
                    status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise TransientCrossSigningError(type(exc).__name__) from None
        if status >= 500 or status == 429:
            raise TransientCrossSigningError(f"HTTP {status}")
        try:
            return status, json.loads(raw or b"{}")
        except ValueError:
            return status, {}


@dataclass(frozen=True)
class CrossSigningStatus:
    """What ``ensure_cross_signing`` found or did."""

    state: str                  # "ready" | "foreign" | "device_mismatch"
    master_key: str | None      # the account's master public key, if it has one
    uploaded_keys: bool = False
    signed_device: bool = False
    message: str = ""           # for the operator, when state is not "ready"

    @property
    def ready(self) -> bool:
        return self.state == "ready"


def _foreign_message(user_id: str, master: str) -> str:
    return (f"The Matrix account {user_id} already has cross-signing keys that this bot does "
            f"not hold (master key {master[:8]}...), made by another client or by this bot "
            f"with a store that was since lost. The bot runs, but Element shows its messages "
            f"as sent by a device not verified by its owner. To replace the keys with new "
            f"ones the bot holds, run `referral-bot cross-signing --config <config> --reset` "
            f"(the homeserver will ask for the bot's password); anyone who verified the old "
            f"keys must verify the bot again.")


async def _upload_keys(hs: _Homeserver, user_id: str, body: dict, password: str | None) -> None:
    status, resp = await hs.call("/_matrix/client/v3/keys/device_signing/upload", body)
    if status == 200:
        return
    if status != 401 or "flows" not in resp:
        raise CrossSigningProblem(f"The homeserver refused the bot's cross-signing keys "
                                  f"({resp.get('errcode') or status}).")
    flows = [f.get("stages") or [] for f in resp.get("flows") or []]
    if ["m.login.password"] not in flows:
        where = ""
        for params in (resp.get("params") or {}).values():
            if isinstance(params, dict) and params.get("url"):
                where = f" Approve the reset at {params['url']}, then restart the bot."
        raise CrossSigningProblem("The homeserver asks for an approval the bot cannot give to "
                                  f"set up cross-signing (offered: {flows})." + where)
    if not password:
        raise CrossSigningProblem("The homeserver asks for the bot's password to set up "
                                  "cross-signing, and only an access token is configured: set "
                                  "[matrix] password_file (or password_env) and start again.")
    body = dict(body, auth={"type": "m.login.password", "session": resp.get("session"),
                            "identifier": {"type": "m.id.user", "user": user_id},
                            "password": password})
    status, resp = await hs.call("/_matrix/client/v3/keys/device_signing/upload", body)
    if status != 200:
        raise CrossSigningProblem("The homeserver did not accept the bot's password for "
                                  f"setting up cross-signing ({resp.get('errcode') or status}).")


async def ensure_cross_signing(client: Any, state: Any, storage_key: bytes,
                               password: str | None = None,
                               reset: bool = False) -> CrossSigningStatus:
    """Make sure the bot's account is cross-signed with keys the bot holds and that its
    device is signed by them (see the module docstring). Safe to call at every start.

    ``client`` is the logged-in nio client (its Olm account gives the device's own keys,
    which is what gets signed: never a device key only the server vouches for),
    ``state`` the transport state (``get``/``put``), ``storage_key`` the deployment's
    ``Keys.cross_signing_key``. ``reset`` replaces keys the bot does not hold.
    Raises ``CrossSigningProblem`` (a sentence for the operator) or
    ``TransientCrossSigningError`` (try again later).
    """
    user_id, device_id = client.user_id, client.device_id
    if client.olm is None:
        raise CrossSigningProblem("End-to-end encryption is not loaded, so the bot's device "
                                  "cannot be cross-signed.")
    if client.should_upload_keys:  # a fresh device: the server must know it before it is signed
        from nio import KeysUploadResponse

        resp = await client.keys_upload()
        if not isinstance(resp, KeysUploadResponse):
            raise TransientCrossSigningError("keys upload")
    hs = _Homeserver(client.homeserver, client.access_token)

    sealed = state.get(STATE_KEY)
    held = CrossSigningKeys.unseal(sealed, storage_key, user_id) if sealed else None

    status, found = await hs.call("/_matrix/client/v3/keys/query",
                                  {"device_keys": {user_id: []}})
    if status != 200:
        raise TransientCrossSigningError(f"keys query {status}")
    server_master = single_key((found.get("master_keys") or {}).get(user_id))
    server_ssk = single_key((found.get("self_signing_keys") or {}).get(user_id))
    server_usk = single_key((found.get("user_signing_keys") or {}).get(user_id))

    ours_on_server = held is not None and (server_master, server_ssk, server_usk) == (
        held.master_public, held.self_signing_public, held.user_signing_public)
    uploaded = False
    if not ours_on_server:
        if server_master is not None and not reset:
            return CrossSigningStatus("foreign", server_master,
                                      message=_foreign_message(user_id, server_master))
        if held is None or (server_master is not None and reset):
            held = CrossSigningKeys.generate()
        # saved before the upload: if the upload succeeds and the bot dies right after,
        # the next start finds its own keys on the server instead of "foreign" ones
        state.put(STATE_KEY, held.seal(storage_key, user_id))
        await _upload_keys(hs, user_id, held.upload_body(user_id), password)
        uploaded = True
        log.info("uploaded the bot's cross-signing keys (master %s)", held.master_public[:8])

    # the device: the server's copy must be exactly the device this client holds
    device = ((found.get("device_keys") or {}).get(user_id) or {}).get(device_id)
    identity = client.olm.account.identity_keys
    if (device is None or (device.get("keys") or {}).get(f"ed25519:{device_id}")
            != identity["ed25519"]
            or (device.get("keys") or {}).get(f"curve25519:{device_id}") != identity["curve25519"]):
        return CrossSigningStatus(
            "device_mismatch", held.master_public, uploaded_keys=uploaded,
            message=(f"The homeserver does not hold this bot's device keys for {device_id} "
                     f"as the bot's store does, so the device was not cross-signed; the bot "
                     f"will try again at its next start."))
    signatures: dict[str, dict] = {}
    if not signature_valid(device, user_id, held.self_signing_public):
        bare = {k: v for k, v in device.items() if k != "unsigned"}
        signatures[device_id] = add_signature(bare, user_id, held.self_signing)
    master_obj = (found.get("master_keys") or {}).get(user_id) if not uploaded else None
    master_obj = master_obj or held.upload_body(user_id)["master_key"]
    if not signature_valid(master_obj, user_id, identity["ed25519"], f"ed25519:{device_id}"):
        # the device vouches for the master key too, as Element's own devices do
        body = {k: v for k, v in master_obj.items() if k not in ("signatures", "unsigned")}
        sig = client.olm.sign_json(body)
        body["signatures"] = {user_id: {f"ed25519:{device_id}": sig}}
        signatures[held.master_public] = body
    if signatures:
        status, resp = await hs.call("/_matrix/client/v3/keys/signatures/upload",
                                     {user_id: signatures})
        failures = (resp.get("failures") or {}) if status == 200 else {"_": status}
        if failures:
            raise CrossSigningProblem("The homeserver refused the signature on the bot's device "
                                      f"({_failure_codes(failures)}).")
        log.info("signed the bot's device with its self-signing key")
    return CrossSigningStatus("ready", held.master_public, uploaded_keys=uploaded,
                              signed_device=device_id in signatures)


def _failure_codes(failures: dict) -> str:
    codes = set()
    for per_user in failures.values():
        if isinstance(per_user, dict):
            for f in per_user.values():
                codes.add(str((f or {}).get("errcode") if isinstance(f, dict) else f))
        else:
            codes.add(str(per_user))
    return ", ".join(sorted(codes))
