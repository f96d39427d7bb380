"""Messages that must reach a person: ``m.text`` with intentional mentions.

Element (like every client on the default push rules) silences ``m.notice``: the
override rule ``.m.rule.suppress_notices`` matches it before any mention rule. So a
message that needs someone (a new referral for the roster, a question, the opinion, a
reminder) goes out as ``m.text`` with

* ``m.mentions: {"user_ids": [...]}`` (the spec's intentional mentions, matched by the
  override rule ``.m.rule.is_user_mention`` even in a room set to "mentions only"), and
* a pill for each person in ``formatted_body`` (a ``https://matrix.to/#/@user:server``
  link) with their name as the plain-text fallback in ``body``, on a last line
  "For: Dr A, Dr B", so the message itself is what a phone shows first.

Routine acknowledgements stay ``m.notice`` (``nioclient.text_content(notice=True)``).
Only user ids and names go into the mention; no patient data. (``m.mentions`` is inside
the encrypted content, unlike ``m.relates_to``.)
"""
from __future__ import annotations

import html
from typing import Iterable
from urllib.parse import quote

__all__ = ["alert_content", "pill"]


def pill(user_id: str, name: str) -> str:
    """An HTML mention pill, as Element writes it."""
    return f'<a href="https://matrix.to/#/{quote(user_id, safe="@:")}">{html.escape(name or user_id)}</a>'


def alert_content(text: str, people: Iterable[tuple[str, str]], relates_to: dict | None = None) -> dict:
    """``m.text`` content that mentions ``people`` ((user id, display name) pairs)."""
    people = list(dict.fromkeys((uid, name or uid) for uid, name in people))
    content: dict = {"msgtype": "m.text", "body": text, "m.mentions": {"user_ids": [uid for uid, _ in people]}}
    escaped = html.escape(text).replace("\n", "<br>")
    if people:
        names = ", ".join(name for _, name in people)
        pills = ", ".join(pill(uid, name) for uid, name in people)
        content["body"] = f"{text}\nFor: {names}"
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = f"{escaped}<br>For: {pills}"
    if relates_to:
        content["m.relates_to"] = relates_to
    return content
