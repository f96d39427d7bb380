"""`referral-bot demo`, the main job on the embedded default, played start to finish: it
exits 0 only when no metadata survived, the held photo's preview is what the thread got,
and every piece of media answers 404 after removal."""
from __future__ import annotations

import asyncio
import io
import re

import pytest

from bot.matrix.demo import play

pytestmark = pytest.mark.synapse


def test_the_demo_plays_the_whole_story_and_leaves_nothing_on_the_server(tmp_path):
    out = io.StringIO()
    rc = asyncio.run(play(out, workdir=tmp_path / "demo"))
    text = out.getvalue()
    assert rc == 0, text[-3000:]
    assert "!! " not in text  # the demo's own alarms: metadata survived, other bytes than previewed
    assert "PREVIEW, not sent" in text and "1 text area blurred" in text
    assert "the thread got exactly the bytes the GP previewed" in text
    gone = re.findall(r"-> download now (.+)", text)
    assert len(gone) == 6 and all(g == "404 Not Found (deleted)" for g in gone), gone
    assert "Demo finished" in text
