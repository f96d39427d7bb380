"""Run a started-and-stopped app (Matrix or Telegram) until SIGINT/SIGTERM."""
from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any, Callable


def plain(exc: BaseException) -> str:
    """The first line of an exception's message: what a person reads instead of a traceback."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


async def serve_until_signalled(app: Any, command: str, banner: str,
                                on_started: Callable[[], None] | None = None) -> int:
    """Start ``app``, wait for Ctrl-C or SIGTERM, stop it. A failed start is one plain line
    on stderr and exit status 1."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:  # pragma: no cover - not on this platform
            pass
    # start-up retries an unreachable server with backoff: a stop request must still end it
    starting = asyncio.create_task(app.start())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await starting
        await app.stop()
        print(f"referral-bot {command}: stopped before start-up finished "
              "(is the server reachable?)", file=sys.stderr)
        return 1
    stopping.cancel()
    if starting.exception() is not None:
        await app.stop()
        print(f"referral-bot {command}: could not start: {plain(starting.exception())}",
              file=sys.stderr)
        return 1
    if on_started is not None:
        on_started()
    print(banner, file=sys.stderr)
    await stop.wait()
    await app.stop()
    return 0
