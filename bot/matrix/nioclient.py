"""Thin helpers around matrix-nio's AsyncClient with end-to-end encryption.

Used by the bot and by the scripted people (GP, specialist) of the demo and tests:
- one persistent device per account: the device id and access token are kept in
  ``<store_dir>/credentials.json`` (0600) and the Olm/Megolm state in nio's SQLite
  store in the same directory, protected with a real pickle key;
- ``sync_once`` does one /sync plus the crypto housekeeping that ``sync_forever``
  would do (send queued to-device messages, upload/query/claim keys);
- encrypted attachments: encrypt with AES-CTR (nio.crypto.attachments), upload the
  ciphertext, and carry ``file: {url, key, iv, hashes, v}`` in the event.
"""
from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nio import AsyncClient, AsyncClientConfig, LoginResponse, SyncResponse
from nio.crypto.attachments import decrypt_attachment, encrypt_attachment
from nio.responses import DownloadError, UploadResponse


class MatrixCallError(RuntimeError):
    """A Matrix API call failed; the message never contains tokens or content.

    ``http``: the HTTP status when the server answered (None otherwise). ``permanent``:
    the server refused this request for good (403 not allowed / not in the room, 404
    unknown room, other 4xx but 401, 408 and 429): retrying the same call cannot help.
    """

    def __init__(self, what: str, status: str | int | None = None, errcode: str | None = None,
                 http: int | None = None):
        self.what = what
        self.status = status
        self.errcode = errcode
        self.http = http
        super().__init__(f"{what} failed ({errcode or status or http or 'error'})")

    @classmethod
    def from_response(cls, what: str, resp: Any) -> "MatrixCallError":
        http = getattr(getattr(resp, "transport_response", None), "status", None)
        errcode = getattr(resp, "status_code", None)
        return cls(what, err_code(resp), errcode if isinstance(errcode, str) else None,
                   http if isinstance(http, int) else None)

    @property
    def forbidden(self) -> bool:
        """403 / M_FORBIDDEN: typically the bot is not (or no longer) in the room."""
        return self.http == 403 or self.errcode == "M_FORBIDDEN"

    @property
    def permanent(self) -> bool:
        if self.errcode in ("M_FORBIDDEN", "M_NOT_FOUND", "M_UNKNOWN_ROOM", "M_TOO_LARGE"):
            return True
        return self.http is not None and 400 <= self.http < 500 and self.http not in (401, 408, 429)


def make_client(homeserver: str, user_id: str, store_dir: str | os.PathLike,
                pickle_key: str, device_id: str | None = None,
                request_timeout: float = 30.0) -> AsyncClient:
    store_dir = Path(store_dir)
    store_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(store_dir, 0o700)
    config = AsyncClientConfig(
        encryption_enabled=True,
        pickle_key=pickle_key,
        store_sync_tokens=False,  # we persist the token ourselves, after processing
        request_timeout=request_timeout,
        max_timeouts=None,
        backoff_factor=0.2,
        max_timeout_retry_wait_time=5,
    )
    return AsyncClient(homeserver, user_id, device_id=device_id,
                       store_path=str(store_dir), config=config)


def _creds_path(store_dir: str | os.PathLike) -> Path:
    return Path(store_dir) / "credentials.json"


def load_credentials(store_dir: str | os.PathLike) -> dict | None:
    p = _creds_path(store_dir)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def save_credentials(store_dir: str | os.PathLike, data: dict) -> None:
    p = _creds_path(store_dir)
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, p)


async def login_persistent(homeserver: str, user_id: str, store_dir: str | os.PathLike,
                           pickle_key: str, password: str | None = None,
                           access_token: str | None = None, device_id: str | None = None,
                           device_name: str = "referral-bot") -> AsyncClient:
    """Return a logged-in client that always reuses the same device and crypto store.

    The first time, log in with the password (or adopt a given access token + device
    id); afterwards restore the saved login so the Olm account and Megolm sessions
    persist and earlier messages stay readable.
    """
    creds = load_credentials(store_dir)
    if creds and creds.get("user_id") == user_id and creds.get("homeserver") == homeserver:
        client = make_client(homeserver, user_id, store_dir, pickle_key, creds["device_id"])
        client.restore_login(user_id, creds["device_id"], creds["access_token"])
        return client
    if access_token and device_id:
        client = make_client(homeserver, user_id, store_dir, pickle_key, device_id)
        client.restore_login(user_id, device_id, access_token)
    else:
        if not password:
            raise MatrixCallError(f"login of {user_id}", errcode="no password or token configured")
        client = make_client(homeserver, user_id, store_dir, pickle_key)
        resp = await client.login(password, device_name=device_name)
        if not isinstance(resp, LoginResponse):
            await client.close()
            raise MatrixCallError(f"login of {user_id}", getattr(resp, "status_code", None),
                                  getattr(resp, "status_code", None))
    save_credentials(store_dir, {"homeserver": homeserver, "user_id": user_id,
                                 "device_id": client.device_id,
                                 "access_token": client.access_token})
    return client


async def crypto_housekeeping(client: AsyncClient) -> None:
    """What sync_forever does between syncs: to-device out, keys up/query/claim."""
    if client.olm is None:
        return
    if client.outgoing_to_device_messages:
        await client.send_to_device_messages()
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        users = client.get_users_for_key_claiming()
        if users:
            await client.keys_claim(users)


# Synapse's default is 10 timeline events per room per sync, and a "limited" timeline
# silently skips the rest: ask for many, and backfill when even that was not enough.
SYNC_FILTER = {"room": {"timeline": {"limit": 200}}}


async def sync_once(client: AsyncClient, timeout_ms: int = 0, since: str | None = None,
                    full_state: bool | None = None, sync_filter: Any = None) -> SyncResponse:
    if sync_filter is None:
        sync_filter = SYNC_FILTER
    resp = await client.sync(timeout=timeout_ms, since=since, full_state=full_state,
                             sync_filter=sync_filter)
    if not isinstance(resp, SyncResponse):
        raise MatrixCallError("sync", getattr(resp, "status_code", None))
    await crypto_housekeeping(client)
    return resp


def err_code(resp: Any) -> str | None:
    return getattr(resp, "status_code", None) or getattr(resp, "message", None)


@dataclass(frozen=True)
class UploadedFile:
    mxc: str
    file_info: dict  # the m.file-style object: url, key, iv, hashes, v, mimetype


async def upload_encrypted(client: AsyncClient, data: bytes, filename: str,
                           mimetype: str) -> UploadedFile:
    """Encrypt ``data`` for an encrypted room and upload the ciphertext."""
    ciphertext, keys = await asyncio.to_thread(encrypt_attachment, data)
    resp, _ = await client.upload(lambda *_: ciphertext, content_type="application/octet-stream",
                                  filename=filename, filesize=len(ciphertext))
    if not isinstance(resp, UploadResponse):
        raise MatrixCallError.from_response("upload", resp)
    info = dict(keys)
    info["url"] = resp.content_uri
    info["mimetype"] = mimetype
    return UploadedFile(resp.content_uri, info)


async def upload_thumbnail(client: AsyncClient, clean: Any, filename: str) -> "Thumbnail | None":
    """Make the thumbnail of a clean image (bot/matrix/thumbnail.py, in a worker thread)
    and upload it encrypted like the image; None when the image is small enough to be
    its own thumbnail. ``clean`` may also be a thumbnail the sanitizer already made (it
    has ``data``, ``width``, ``height``, ``mimetype``). Raises like ``upload_encrypted``."""
    from bot.matrix.thumbnail import make_thumbnail

    thumb = clean if hasattr(clean, "mimetype") else await asyncio.to_thread(make_thumbnail, clean)
    if thumb is None:
        return None
    stem = filename.rsplit(".", 1)[0]
    up = await upload_encrypted(client, thumb.data, f"{stem}-thumbnail.jpg", thumb.mimetype)
    return Thumbnail(up, thumb.width, thumb.height, len(thumb.data))


async def download_bytes(client: AsyncClient, mxc: str) -> bytes | None:
    """Download media; None when the server says it does not exist (404)."""
    resp = await client.download(mxc=mxc)
    if isinstance(resp, DownloadError):
        if str(resp.status_code) in ("M_NOT_FOUND", "404"):
            return None
        raise MatrixCallError("download", resp.status_code)
    return resp.body


async def download_decrypt(client: AsyncClient, file_info: dict) -> bytes | None:
    """Fetch and decrypt an encrypted attachment described by a ``file`` object."""
    ciphertext = await download_bytes(client, file_info["url"])
    if ciphertext is None:
        return None
    return await asyncio.to_thread(decrypt_attachment, ciphertext, file_info["key"]["k"],
                                   file_info["hashes"]["sha256"], file_info["iv"])


@dataclass(frozen=True)
class Thumbnail:
    """An encrypted thumbnail already uploaded: its ``file`` object and its ``info``."""

    upload: UploadedFile
    width: int
    height: int
    size: int


def image_content(upload: UploadedFile, body: str, size: int, width: int | None = None,
                  height: int | None = None, thread_root: str | None = None,
                  in_reply_to: str | None = None, thumbnail: Thumbnail | None = None,
                  caption: str | None = None) -> dict:
    """An m.image content for an encrypted room, with an encrypted thumbnail when given
    (``info.thumbnail_file`` + ``info.thumbnail_info``); never a blurhash. ``body`` is the
    file name; ``caption``, when given, becomes the ``body`` shown under the image (a media
    caption, Matrix spec 1.10: ``filename`` set and ``body`` different from it)."""
    info: dict[str, Any] = {"mimetype": upload.file_info["mimetype"], "size": size}
    if width and height:
        info["w"], info["h"] = width, height
    if thumbnail is not None:
        info["thumbnail_file"] = thumbnail.upload.file_info
        info["thumbnail_info"] = {"mimetype": thumbnail.upload.file_info["mimetype"],
                                  "size": thumbnail.size, "w": thumbnail.width,
                                  "h": thumbnail.height}
    content: dict[str, Any] = {"msgtype": "m.image", "body": caption or body, "filename": body,
                               "file": upload.file_info, "info": info}
    if thread_root:
        content["m.relates_to"] = thread_relation(thread_root, in_reply_to)
    return content


def thread_relation(root_event_id: str, latest_event_id: str | None = None) -> dict:
    """An ``m.thread`` relation with the reply fallback for clients without threads: its
    ``m.in_reply_to`` names the latest message known in the thread (the root when none
    is known), as the spec's "Fallback for unthreaded clients" says.
    Only event ids here: m.relates_to stays in clear text on encrypted events."""
    return {"rel_type": "m.thread", "event_id": root_event_id, "is_falling_back": True,
            "m.in_reply_to": {"event_id": latest_event_id or root_event_id}}


def text_content(body: str, thread_root: str | None = None, notice: bool = False,
                 in_reply_to: str | None = None) -> dict:
    content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": body}
    if thread_root:
        content["m.relates_to"] = thread_relation(thread_root, in_reply_to)
    return content


async def send(client: AsyncClient, room_id: str, content: dict,
               event_type: str = "m.room.message", txn_id: str | None = None) -> str:
    """Send (encrypting when the room is encrypted) and return the event id.

    Trust policy: devices are not interactively verified; the bot shares keys with
    every device of the room's members (``ignore_unverified_devices=True``), and
    only posts into rooms whose members are all in the clinician directory.
    """
    from nio import RoomSendResponse

    resp = await client.room_send(room_id, event_type, content, tx_id=txn_id,
                                  ignore_unverified_devices=True)
    if not isinstance(resp, RoomSendResponse):
        raise MatrixCallError.from_response("send", resp)
    return resp.event_id
