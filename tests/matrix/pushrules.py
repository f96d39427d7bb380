"""The push-rule evaluation a Matrix client does, for the tests of issue 10 (part 3).

In an encrypted room the homeserver only sees ``m.room.encrypted``, so Element decides
whether to notify after decrypting: it runs the account's push rules (the server's
defaults plus the user's own) against the decrypted event. Here those rules are fetched
from the real Synapse (``GET /_matrix/client/v3/pushrules/``) for the person, and
evaluated the way the spec (Client-Server API, "Push rules") describes:

* kinds in order override, content, room, sender, underride; the first enabled rule
  whose conditions all hold decides; its actions say ``notify`` or not;
* conditions ``event_match`` (glob, case-insensitive; ``content.body`` on word
  boundaries), ``event_property_is``, ``event_property_contains``,
  ``contains_display_name``, ``room_member_count``, ``sender_notification_permission``;
  an unknown condition never matches;
* the legacy mention rules (``.m.rule.contains_display_name``,
  ``.m.rule.contains_user_name``, ``.m.rule.roomnotif``) are skipped when the event
  has ``m.mentions`` (intentional mentions, spec v1.7).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp

LEGACY_MENTION_RULES = {".m.rule.contains_display_name", ".m.rule.contains_user_name", ".m.rule.roomnotif"}
KINDS = ("override", "content", "room", "sender", "underride")


async def fetch_rules(homeserver: str, access_token: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{homeserver}/_matrix/client/v3/pushrules/",
                            headers={"Authorization": f"Bearer {access_token}"}) as resp:
            resp.raise_for_status()
            return (await resp.json())["global"]


async def mentions_only(homeserver: str, access_token: str, room_id: str) -> None:
    """What Element's "Mentions & keywords" setting for a room does: a room rule that
    does not notify."""
    async with aiohttp.ClientSession() as http:
        url = f"{homeserver}/_matrix/client/v3/pushrules/global/room/{room_id}"
        async with http.put(url, json={"actions": []},
                            headers={"Authorization": f"Bearer {access_token}"}) as resp:
            resp.raise_for_status()


@dataclass
class Context:
    user_id: str
    display_name: str
    room_id: str
    member_count: int
    sender_power: int = 0
    notification_power: int = 50  # power_levels.notifications.room


def _path(key: str) -> list[str]:
    # dots separate the levels; "\." is a literal dot (m\.mentions)
    parts, cur, i = [], "", 0
    while i < len(key):
        if key[i] == "\\" and i + 1 < len(key):
            cur += key[i + 1]
            i += 2
            continue
        if key[i] == ".":
            parts.append(cur)
            cur = ""
        else:
            cur += key[i]
        i += 1
    parts.append(cur)
    return parts


def _lookup(event: dict, key: str) -> Any:
    value: Any = event
    for part in _path(key):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _glob(pattern: str, word_boundary: bool) -> re.Pattern:
    body = "".join(".*?" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if word_boundary:
        return re.compile(rf"(^|\W){body}(\W|$)", re.IGNORECASE | re.DOTALL)
    return re.compile(rf"^{body}$", re.IGNORECASE | re.DOTALL)


def _member_count(spec: str, n: int) -> bool:
    m = re.fullmatch(r"(==|<=|>=|<|>)?(\d+)", spec)
    if not m:
        return False
    op, want = m.group(1) or "==", int(m.group(2))
    return {"==": n == want, "<": n < want, ">": n > want, "<=": n <= want, ">=": n >= want}[op]


def _holds(cond: dict, event: dict, ctx: Context) -> bool:
    kind = cond.get("kind")
    if kind == "event_match":
        value = _lookup(event, cond["key"])
        return isinstance(value, str) and bool(_glob(cond["pattern"], cond["key"] == "content.body").search(value))
    if kind == "event_property_is":
        value = _lookup(event, cond["key"])
        return value == cond["value"] and type(value) is type(cond["value"])
    if kind == "event_property_contains":
        value = _lookup(event, cond["key"])
        return isinstance(value, list) and cond["value"] in value
    if kind == "contains_display_name":
        body = _lookup(event, "content.body")
        return bool(ctx.display_name) and isinstance(body, str) and bool(
            _glob(ctx.display_name, True).search(body))
    if kind == "room_member_count":
        return _member_count(cond.get("is", ""), ctx.member_count)
    if kind == "sender_notification_permission":
        return ctx.sender_power >= ctx.notification_power
    return False


def matching_rule(rules: dict, event: dict, ctx: Context) -> dict | None:
    has_mentions = isinstance(_lookup(event, "content.m\\.mentions"), dict)
    for kind in KINDS:
        for rule in rules.get(kind, []):
            if not rule.get("enabled", True):
                continue
            if has_mentions and rule.get("rule_id") in LEGACY_MENTION_RULES:
                continue
            if kind == "content":
                conds = [{"kind": "event_match", "key": "content.body", "pattern": rule.get("pattern", "")}]
            elif kind == "room":
                conds = [{"kind": "event_match", "key": "room_id", "pattern": rule["rule_id"]}]
            elif kind == "sender":
                conds = [{"kind": "event_match", "key": "sender", "pattern": rule["rule_id"]}]
            else:
                conds = rule.get("conditions", [])
            if all(_holds(c, event, ctx) for c in conds):
                return rule
    return None


def notifies(rules: dict, event: dict, ctx: Context) -> bool:
    rule = matching_rule(rules, event, ctx)
    if rule is None:
        return False
    return any(a in ("notify", "coalesce") for a in rule.get("actions", []))


def decrypted_event(seen: Any, room_id: str) -> dict:
    """The event as the client evaluates it: decrypted type and content."""
    return {"type": seen.type, "content": seen.content, "sender": seen.sender, "room_id": room_id,
            "event_id": seen.event_id}
