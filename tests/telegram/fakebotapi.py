"""A small fake Telegram Bot API server on loopback (aiohttp), for tests.

python-telegram-bot reaches it through ``base_url`` / ``base_file_url``. It keeps just
enough state to behave like the real service where our transport depends on it:

* chats (private chats, forum supergroups), messages with their send time, forum topics;
* files: a user's photo/document can be fetched with ``getFile`` + a GET on the file URL;
* ``deleteMessage`` refuses messages older than 48 hours (Telegram's rule), measured on a
  clock the test controls (``server.now``), and refuses already deleted ones;
* ``getUpdates`` serves updates the test scripts (``user_sends_text`` ...), honouring
  ``offset`` and long polling (``timeout``).

Every call is recorded in ``server.calls`` as ``(method, params)`` (file parameters as
``{"filename", "size"}`` only) so tests can assert exactly what reached "Telegram".
"""
from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

DELETE_WINDOW_SECONDS = 48 * 3600


@dataclass
class FakeChat:
    id: int
    type: str  # "private" | "supergroup"
    title: str = ""
    is_forum: bool = False
    first_name: str = ""
    topics: dict[int, str] = field(default_factory=dict)
    members: set[int] = field(default_factory=set)  # user ids besides the bot
    admins: list[int] = field(default_factory=list)  # members who administer it (first: the creator)
    bot_is_admin: bool = True

    def to_api(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "type": self.type}
        if self.type == "private":
            d["first_name"] = self.first_name or "user"
        else:
            d["title"] = self.title
            if self.is_forum:
                d["is_forum"] = True
        return d


@dataclass
class FakeMessage:
    chat_id: int
    message_id: int
    date: int
    from_id: int
    thread_id: int | None
    body: dict[str, Any]
    deleted: bool = False


@dataclass
class FakeFile:
    file_id: str
    unique_id: str
    data: bytes
    path: str


class FakeBotAPI:
    def __init__(self, token: str = "123456:TEST-token-abcdefghijklmnopqrstuvwxyz", bot_id: int = 123456):
        self.token = token
        self.bot_id = bot_id
        self.bot_username = "referral_test_bot"
        self.now: Callable[[], float] = time.time
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.chats: dict[int, FakeChat] = {}
        self.users: dict[int, dict[str, Any]] = {}
        self.messages: dict[tuple[int, int], FakeMessage] = {}
        self.files: dict[str, FakeFile] = {}
        self._msg_ids: dict[int, itertools.count] = {}
        self._file_ids = itertools.count(1)
        self._topic_ids = itertools.count(1001)
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._new_update = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.fail_next: dict[str, tuple[int, str]] = {}  # method -> (error_code, description)

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> "FakeBotAPI":
        app = web.Application(client_max_size=60 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # -- world set-up used by tests -------------------------------------------------
    def add_user(self, user_id: int, first_name: str) -> FakeChat:
        self.users[user_id] = {"id": user_id, "is_bot": False, "first_name": first_name}
        chat = FakeChat(id=user_id, type="private", first_name=first_name)
        self.chats[user_id] = chat
        return chat

    def add_forum(self, chat_id: int, title: str, is_forum: bool = True, members: tuple[int, ...] = (),
                  admins: tuple[int, ...] = ()) -> FakeChat:
        chat = FakeChat(id=chat_id, type="supergroup", title=title, is_forum=is_forum,
                        members=set(members) | set(admins), admins=list(admins))
        self.chats[chat_id] = chat
        return chat

    def _next_message_id(self, chat_id: int) -> int:
        return next(self._msg_ids.setdefault(chat_id, itertools.count(1)))

    def _store_file(self, data: bytes, folder: str, ext: str) -> FakeFile:
        n = next(self._file_ids)
        f = FakeFile(file_id=f"FILE{n:06d}", unique_id=f"U{n:06d}", data=data, path=f"{folder}/file_{n}.{ext}")
        self.files[f.file_id] = f
        return f

    def _message_to_api(self, m: FakeMessage) -> dict[str, Any]:
        chat = self.chats[m.chat_id]
        sender = {"id": self.bot_id, "is_bot": True, "first_name": "Referral bot", "username": self.bot_username} \
            if m.from_id == self.bot_id else self.users[m.from_id]
        d = {"message_id": m.message_id, "date": m.date, "chat": chat.to_api(), "from": sender, **m.body}
        if m.thread_id is not None:
            d["message_thread_id"] = m.thread_id
            d["is_topic_message"] = True
        return d

    def _push_update(self, message: FakeMessage) -> dict[str, Any]:
        update = {"update_id": next(self._update_ids), "message": self._message_to_api(message)}
        self._updates.append(update)
        self._new_update.set()
        return update

    def _user_message(self, user_id: int, chat_id: int, body: dict[str, Any], thread_id: int | None) -> FakeMessage:
        m = FakeMessage(chat_id=chat_id, message_id=self._next_message_id(chat_id), date=int(self.now()),
                        from_id=user_id, thread_id=thread_id, body=body)
        self.messages[(chat_id, m.message_id)] = m
        self._push_update(m)
        return m

    def user_sends_text(self, user_id: int, text: str, chat_id: int | None = None,
                        thread_id: int | None = None) -> FakeMessage:
        return self._user_message(user_id, user_id if chat_id is None else chat_id, {"text": text}, thread_id)

    def user_sends_photo(self, user_id: int, data: bytes, width: int = 640, height: int = 480,
                         chat_id: int | None = None) -> FakeMessage:
        f = self._store_file(data, "photos", "jpg")
        sizes = [{"file_id": f.file_id, "file_unique_id": f.unique_id, "width": width, "height": height,
                  "file_size": len(data)}]
        return self._user_message(user_id, user_id if chat_id is None else chat_id, {"photo": sizes}, None)

    def user_sends_document(self, user_id: int, data: bytes, filename: str, mime_type: str,
                            chat_id: int | None = None) -> FakeMessage:
        f = self._store_file(data, "documents", filename.rsplit(".", 1)[-1] if "." in filename else "bin")
        doc = {"file_id": f.file_id, "file_unique_id": f.unique_id, "file_name": filename,
               "mime_type": mime_type, "file_size": len(data)}
        return self._user_message(user_id, user_id if chat_id is None else chat_id, {"document": doc}, None)

    # -- inspection helpers -----------------------------------------------------------
    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == method]

    def live_messages(self, chat_id: int, from_bot: bool | None = None) -> list[FakeMessage]:
        return [m for (c, _), m in sorted(self.messages.items()) if c == chat_id and not m.deleted
                and (from_bot is None or (m.from_id == self.bot_id) == from_bot)]

    def bot_texts(self, chat_id: int, thread_id: int | None = None) -> list[str]:
        return [m.body["text"] for m in self.live_messages(chat_id, from_bot=True)
                if "text" in m.body and (thread_id is None or m.thread_id == thread_id)]

    # -- HTTP handlers ------------------------------------------------------------------
    @staticmethod
    def _ok(result: Any) -> web.Response:
        return web.json_response({"ok": True, "result": result})

    @staticmethod
    def _error(code: int, description: str) -> web.Response:
        return web.json_response({"ok": False, "error_code": code, "description": description}, status=code)

    async def _read_params(self, request: web.Request) -> tuple[dict[str, Any], dict[str, tuple[str, bytes]]]:
        params: dict[str, Any] = {}
        files: dict[str, tuple[str, bytes]] = {}
        if request.content_type == "application/json":
            params = await request.json()
        elif request.can_read_body:
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = (value.filename or "", value.file.read())
                else:
                    params[key] = value
        for key, value in request.query.items():
            params.setdefault(key, value)
        return params, files

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return self._error(401, "Unauthorized")
        method = request.match_info["method"]
        params, files = await self._read_params(request)
        recorded = dict(params)
        for key, (filename, data) in files.items():
            recorded[key] = {"filename": filename, "size": len(data)}
        # multipart uploads reference their file part as "attach://name"
        for key, value in list(params.items()):
            if isinstance(value, str) and value.startswith("attach://") and value[9:] in files:
                recorded[key] = {"filename": files[value[9:]][0], "size": len(files[value[9:]][1])}
                files[key] = files[value[9:]]
        self.calls.append((method, recorded))
        if method in self.fail_next:
            code, description = self.fail_next.pop(method)
            return self._error(code, description)
        handler = getattr(self, "_m_" + method, None)
        if handler is None:
            return self._error(404, "Not Found")
        try:
            return await handler(params, files)
        except (KeyError, ValueError) as exc:
            return self._error(400, f"Bad Request: invalid parameter {exc}")

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        path = request.match_info["path"]
        for f in self.files.values():
            if f.path == path:
                self.calls.append(("<download>", {"path": path}))
                return web.Response(body=f.data, content_type="application/octet-stream")
        return web.Response(status=404)

    # -- methods ------------------------------------------------------------------------
    def _chat(self, params: dict[str, Any]) -> FakeChat:
        chat_id = int(params["chat_id"])
        if chat_id not in self.chats:
            raise LookupError("chat not found")
        return self.chats[chat_id]

    def _thread(self, chat: FakeChat, params: dict[str, Any]) -> int | None:
        raw = params.get("message_thread_id")
        if raw in (None, ""):
            return None
        thread_id = int(raw)
        if not chat.is_forum or thread_id not in chat.topics:
            raise LookupError("message thread not found")
        return thread_id

    def _bot_message(self, chat: FakeChat, thread_id: int | None, body: dict[str, Any]) -> web.Response:
        m = FakeMessage(chat_id=chat.id, message_id=self._next_message_id(chat.id), date=int(self.now()),
                        from_id=self.bot_id, thread_id=thread_id, body=body)
        self.messages[(chat.id, m.message_id)] = m
        return self._ok(self._message_to_api(m))

    async def _m_getMe(self, params, files) -> web.Response:
        return self._ok({"id": self.bot_id, "is_bot": True, "first_name": "Referral bot",
                         "username": self.bot_username, "can_join_groups": True,
                         "can_read_all_group_messages": True, "supports_inline_queries": False})

    async def _m_getUpdates(self, params, files) -> web.Response:
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + min(timeout, 5.0)
        while True:
            pending = [u for u in self._updates if u["update_id"] >= offset]
            if pending or time.monotonic() >= deadline:
                # updates below the offset are confirmed and forgotten, as on Telegram
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
                limit = int(params.get("limit") or 100)
                return self._ok(pending[:limit])
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                pass

    async def _m_sendMessage(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
            thread_id = self._thread(chat, params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        text = params.get("text", "")
        if not text:
            return self._error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return self._error(400, "Bad Request: message is too long")
        return self._bot_message(chat, thread_id, {"text": text})

    async def _m_sendPhoto(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
            thread_id = self._thread(chat, params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        if "photo" not in files:
            return self._error(400, "Bad Request: there is no photo in the request")
        _name, data = files["photo"]
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
        except Exception:
            return self._error(400, "Bad Request: IMAGE_PROCESS_FAILED")
        f = self._store_file(data, "photos", "jpg")
        body: dict[str, Any] = {"photo": [{"file_id": f.file_id, "file_unique_id": f.unique_id,
                                           "width": width, "height": height, "file_size": len(data)}]}
        if params.get("caption"):
            body["caption"] = params["caption"]
        return self._bot_message(chat, thread_id, body)

    async def _m_sendDocument(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
            thread_id = self._thread(chat, params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        if "document" not in files:
            return self._error(400, "Bad Request: there is no document in the request")
        name, data = files["document"]
        f = self._store_file(data, "documents", "bin")
        body: dict[str, Any] = {"document": {"file_id": f.file_id, "file_unique_id": f.unique_id,
                                             "file_name": name, "file_size": len(data)}}
        if params.get("caption"):
            body["caption"] = params["caption"]
        return self._bot_message(chat, thread_id, body)

    async def _m_deleteMessage(self, params, files) -> web.Response:
        key = (int(params["chat_id"]), int(params["message_id"]))
        m = self.messages.get(key)
        if m is None or m.deleted:
            return self._error(400, "Bad Request: message to delete not found")
        if self.now() - m.date >= DELETE_WINDOW_SECONDS:
            return self._error(400, "Bad Request: message can't be deleted")
        m.deleted = True
        return self._ok(True)

    async def _m_getChat(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        full = chat.to_api()
        full.setdefault("accent_color_id", 0)
        full.setdefault("max_reaction_count", 11)
        return self._ok(full)

    async def _m_getChatMemberCount(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        return self._ok(len(chat.members) + (1 if chat.type != "private" else 2))

    def _user_api(self, user_id: int) -> dict[str, Any]:
        if user_id == self.bot_id:
            return {"id": self.bot_id, "is_bot": True, "first_name": "Referral bot", "username": self.bot_username}
        return dict(self.users.get(user_id) or {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"})

    def _member_api(self, chat: FakeChat, user_id: int) -> dict[str, Any]:
        user = self._user_api(user_id)
        if chat.admins and user_id == chat.admins[0]:
            return {"status": "creator", "user": user, "is_anonymous": False}
        if user_id in chat.admins or (user_id == self.bot_id and chat.bot_is_admin):
            rights = dict.fromkeys(("can_be_edited", "is_anonymous", "can_manage_chat", "can_delete_messages",
                                    "can_manage_video_chats", "can_restrict_members", "can_promote_members",
                                    "can_change_info", "can_invite_users", "can_post_stories",
                                    "can_edit_stories", "can_delete_stories"), False)
            rights.update(can_manage_chat=True, can_delete_messages=True)
            return {"status": "administrator", "user": user, **rights}
        if user_id in chat.members or user_id == self.bot_id:
            return {"status": "member", "user": user}
        return {"status": "left", "user": user}

    async def _m_getChatAdministrators(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        ids = list(chat.admins) + ([self.bot_id] if chat.bot_is_admin else [])
        return self._ok([self._member_api(chat, i) for i in ids])

    async def _m_getChatMember(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        user_id = int(params["user_id"])
        if user_id not in self.users and user_id != self.bot_id:
            return self._error(400, "Bad Request: user not found")
        return self._ok(self._member_api(chat, user_id))

    async def _m_getFile(self, params, files) -> web.Response:
        f = self.files.get(params.get("file_id", ""))
        if f is None:
            return self._error(400, "Bad Request: invalid file_id")
        return self._ok({"file_id": f.file_id, "file_unique_id": f.unique_id, "file_size": len(f.data),
                         "file_path": f.path})

    async def _m_createForumTopic(self, params, files) -> web.Response:
        try:
            chat = self._chat(params)
        except LookupError as exc:
            return self._error(400, f"Bad Request: {exc}")
        if not chat.is_forum:
            return self._error(400, "Bad Request: the chat is not a forum")
        name = params.get("name", "")
        if not 1 <= len(name) <= 128:
            return self._error(400, "Bad Request: invalid forum topic name")
        thread_id = next(self._topic_ids)
        chat.topics[thread_id] = name
        return self._ok({"message_thread_id": thread_id, "name": name, "icon_color": 7322096})


def json_dumps(obj: Any) -> str:  # small helper for tests that want to print calls
    return json.dumps(obj, indent=1, default=str)
