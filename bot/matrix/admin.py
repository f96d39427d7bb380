"""Synapse admin API calls the bot needs: delete a piece of media, verify it is gone.

Redacting an event does not delete its media from Synapse; the bot therefore deletes
every media id it posted or received with
``DELETE /_synapse/admin/v1/media/<server>/<media_id>`` when it has an admin token,
and then checks that downloading it now answers 404. Media it did not upload itself is
deleted only when ``GET`` on the same path names the sender of the event that carried
it as the uploader (an event can name anybody's media).
"""
from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass

import aiohttp


def split_mxc(mxc: str) -> tuple[str, str]:
    parsed = urllib.parse.urlparse(mxc)
    if parsed.scheme != "mxc" or not parsed.netloc or not parsed.path.strip("/"):
        raise ValueError("not an mxc:// URI")
    return parsed.netloc, parsed.path.strip("/")


@dataclass
class MediaGone:
    mxc: str
    deleted: bool   # the admin API accepted the deletion (or it was already gone)
    verified: bool  # a download now answers 404


class SynapseAdmin:
    """Minimal async Synapse admin client (own aiohttp session)."""

    def __init__(self, homeserver: str, admin_token: str | None, user_token: str | None = None):
        self.homeserver = homeserver.rstrip("/")
        self._admin_token = admin_token
        self._user_token = user_token or admin_token
        self._session: aiohttp.ClientSession | None = None

    @property
    def can_delete(self) -> bool:
        return bool(self._admin_token)

    async def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, token: str | None,
                       body: dict | None = None) -> tuple[int, dict]:
        sess = await self._sess()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = json.dumps(body) if body is not None else None
        async with sess.request(method, self.homeserver + path, headers=headers, data=data) as r:
            raw = await r.read()
            try:
                parsed = json.loads(raw) if raw and r.content_type == "application/json" else {}
            except ValueError:
                parsed = {}
            return r.status, parsed

    async def media_exists(self, mxc: str) -> bool:
        """True if the media can still be downloaded (authenticated media endpoint)."""
        server, media_id = split_mxc(mxc)
        path = (f"/_matrix/client/v1/media/download/{urllib.parse.quote(server)}/"
                f"{urllib.parse.quote(media_id)}")
        status, _ = await self._request("GET", path, self._user_token)
        if status == 404:
            return False
        if status == 200:
            return True
        raise ConnectionError(f"media check answered HTTP {status}")

    async def media_uploader(self, mxc: str) -> tuple[bool, str | None]:
        """``(exists, uploader)`` from the admin media-info API: the local user who
        uploaded it (None for remote media, whose uploader this server does not know)."""
        server, media_id = split_mxc(mxc)
        path = (f"/_synapse/admin/v1/media/{urllib.parse.quote(server)}/"
                f"{urllib.parse.quote(media_id)}")
        status, body = await self._request("GET", path, self._admin_token)
        if status == 404:
            return False, None
        if status != 200:
            raise ConnectionError(f"media info answered HTTP {status}")
        info = body.get("media_info") or {}
        return True, info.get("user_id")

    async def delete_media(self, mxc: str) -> MediaGone:
        if not self.can_delete:
            return MediaGone(mxc, deleted=False, verified=False)
        server, media_id = split_mxc(mxc)
        path = (f"/_synapse/admin/v1/media/{urllib.parse.quote(server)}/"
                f"{urllib.parse.quote(media_id)}")
        status, _ = await self._request("DELETE", path, self._admin_token)
        if status >= 500:
            raise ConnectionError(f"media deletion answered HTTP {status}")
        deleted = status in (200, 404)
        verified = not await self.media_exists(mxc)
        return MediaGone(mxc, deleted=deleted, verified=verified)

    async def leave_with_reason(self, room_id: str, reason: str) -> bool:
        """Decline an invite (leave) with a reason the inviter can see."""
        path = f"/_matrix/client/v3/rooms/{urllib.parse.quote(room_id)}/leave"
        status, _ = await self._request("POST", path, self._user_token, {"reason": reason})
        return status == 200

    async def whoami_is_admin(self, user_id: str) -> bool:
        path = f"/_synapse/admin/v2/users/{urllib.parse.quote(user_id)}"
        status, body = await self._request("GET", path, self._admin_token)
        return status == 200 and bool(body.get("admin"))
