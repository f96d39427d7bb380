"""The sanitizer in worker processes, with a memory cap and a time limit.

A hostile image can make a decoder run for seconds or allocate gigabytes (issue 9, finding
7: a JPEG with 4,000 progressive scans took 14 s and 393 MB). In the bot's own process that
froze every other GP's commands and the timers. Here each image is cleaned in a separate
process whose address space is capped (``RLIMIT_AS``) and which is killed when it takes
longer than the time limit; the GP gets one plain sentence and the next image gets a fresh
worker. The workflow receives an instance as its ``sanitize`` callable (``handlers/`` stays
free of processes and I/O):

    pool = SanitizerPool(); pool.start()          # spawns and warms the workers (loads models)
    workflow = Workflow(..., sanitize=pool)         # awaited: await pool(data, detect_faces=True)
    pool.close()

Bytes travel over a pipe as raw bytes (no pickling of the 5 MB photo); only the small
result header is pickled.

One exception, for speed: a JPEG for which no face/text check is asked (the consent covers
identifiable images) is cleaned in this process, in a thread. That path decodes no pixel: it
is the marker-segment filter, whose work is linear in the file size (at most 40 MiB, 4096
segments, 64 scans; a 20 MB file of 5 million segments is refused in ~15 ms) and whose memory
is a few copies of the file. Sending a 5 MB photo to a worker and back costs 11-19 ms here,
which would have cost that path its 1.3x-the-relay target. Every path that runs a decoder
(libjpeg, libpng, libwebp, libtiff, libheif, OpenCV, ONNX Runtime) runs in a worker.
"""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
from typing import Any

log = logging.getLogger("referral_bot.sanitize_pool")

DEFAULT_MEMORY_MB = 2048  # address space per worker: ~670 MB once warm, +16.4 B/pixel at worst (below)
# The most address space one pixel of a picture costs while it is cleaned, measured with
# /proc/self/status VmPeak on a warm worker: 5.0 B for a 40 MP JPEG checked, 11.0 B for a PNG
# checked, 16.4 B for a 40 MP PNG with faces and text blurred. Rounded up for headroom.
WORST_BYTES_PER_PIXEL = 18
DEFAULT_TIMEOUT_S = 15.0  # a 48 MP photo with faces and text blurred takes ~2 s here


def _refusal(reason: str, message: str):
    from handlers.sanitizer import ImageRefused

    return ImageRefused(reason, message)


_CHECKS = ("detect_faces", "detect_text", "blur_faces", "blur_text")


def _without(kwargs: dict, keys) -> dict:
    return {k: v for k, v in kwargs.items() if k not in keys}


TOO_SLOW = ("too_slow", "That image takes too long to process; please send an ordinary photo from the phone's camera.")
TOO_BIG = ("too_many_pixels", "That image needs too much memory to process; please send a smaller photo.")


def _address_space_now() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limits_within(budget_bytes: int):
    """The sanitizer's limits for what is left under the cap once the worker is warm.

    Without this a picture too big for the cap fails wherever the allocation happens to
    fail: a PNG decoder out of memory says "broken data stream", and the GP was told the
    photo was corrupt. Checked against the declared size before decoding, the refusal is
    the same every time and names the limit."""
    from handlers.sanitizer import Limits

    default = Limits()
    fits = max(0, budget_bytes) // WORST_BYTES_PER_PIXEL
    return Limits(max_bytes=default.max_bytes, max_pixels=min(default.max_pixels, fits))


def _worker_main(conn, memory_bytes: int, warm: bool) -> None:  # pragma: no cover - runs in the child
    import resource
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    from handlers.sanitizer import ImageRefused, sanitize

    if warm:  # load numpy, OpenCV, ONNX Runtime and the models before the first photo
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 150, 120)).save(buf, "JPEG")
        sanitize(buf.getvalue(), detect_faces=True, detect_text=True)
    limits = None
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        limits = _limits_within(memory_bytes - _address_space_now())
    conn.send(("ready",))
    while True:
        try:
            kwargs = conn.recv()
        except (EOFError, OSError):
            return
        if kwargs is None:
            return
        data = conn.recv_bytes()
        if limits is not None:
            asked = kwargs.get("limits")
            kwargs["limits"] = limits if asked is None else type(limits)(
                max_bytes=asked.max_bytes, max_pixels=min(asked.max_pixels, limits.max_pixels))
        try:
            result = sanitize(data, **kwargs)
        except ImageRefused as exc:
            conn.send(("refused", exc.reason, str(exc)))
            continue
        except MemoryError:
            conn.send(("refused", *TOO_BIG))
            continue
        except BaseException as exc:  # noqa: BLE001 - reported by type name only, never the image
            conn.send(("error", type(exc).__name__))
            continue
        out, result.data = result.data, b""
        conn.send(("ok", result))
        conn.send_bytes(out)


class _Worker:
    def __init__(self, ctx, memory_bytes: int, warm: bool, start_timeout: float):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, memory_bytes, warm), daemon=True,
                                name="referral-bot-sanitize")
        self.proc.start()
        child.close()
        try:
            if not self.conn.poll(start_timeout):
                raise EOFError
            self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            raise RuntimeError("the sanitizer worker did not start") from None

    def run(self, data: bytes, kwargs: dict, timeout: float):
        """Clean one image; raises ImageRefused (including for a timeout or a crash)."""
        self.conn.send(kwargs)
        self.conn.send_bytes(data)
        if not self.conn.poll(timeout):
            self.kill()
            raise _refusal(*TOO_SLOW)
        try:
            reply = self.conn.recv()
            if reply[0] == "ok":
                result = reply[1]
                result.data = self.conn.recv_bytes()
                return result
        except (EOFError, OSError):  # the process died: killed by the kernel or out of memory in C code
            self.kill()
            raise _refusal(*TOO_BIG) from None
        if reply[0] == "refused":
            raise _refusal(reply[1], reply[2])
        raise RuntimeError(f"sanitizer worker failed: {reply[1]}")

    @property
    def alive(self) -> bool:
        return self.proc.is_alive()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(5)
        self.kill()


class SanitizerPool:
    """``await pool(data, **sanitize_kwargs) -> SanitizedImage``, one image per worker at a time."""

    def __init__(self, workers: int = 1, *, memory_mb: int = DEFAULT_MEMORY_MB, timeout_s: float = DEFAULT_TIMEOUT_S,
                 warm: bool = True, start_timeout_s: float = 60.0):
        self.size = max(1, workers)
        self.memory_bytes = int(memory_mb) * 1024 * 1024 if memory_mb else 0
        self.timeout_s = timeout_s
        self.warm = warm
        self.start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context("spawn")  # never fork the bot's threads and sockets
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._sem: asyncio.Semaphore | None = None
        self.kills = 0  # workers killed for a timeout or a crash (for tests and metrics)
        self.spawned = 0

    def start(self) -> "SanitizerPool":
        """Spawn and warm the workers (blocking; a second or two per worker)."""
        with self._lock:
            while len(self._idle) < self.size:
                self._idle.append(self._spawn())
        return self

    def _spawn(self) -> _Worker:
        self.spawned += 1
        return _Worker(self._ctx, self.memory_bytes, self.warm, self.start_timeout_s)

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._spawn()  # first use without start(), or a worker was killed

    def _give_back(self, worker: _Worker) -> None:
        if worker.alive:
            with self._lock:
                self._idle.append(worker)
        else:
            self.kills += 1
            log.warning("a sanitizer worker was stopped (time or memory limit); a fresh one starts on the next image")

    def _run(self, data: bytes, kwargs: dict):
        worker = self._take()
        try:
            return worker.run(data, kwargs, self.timeout_s)
        finally:
            self._give_back(worker)

    async def __call__(self, data: bytes, **kwargs: Any):
        data = bytes(data)
        if data[:3] == b"\xff\xd8\xff" and not any(kwargs.get(k) for k in _CHECKS):
            from handlers.sanitizer import sanitize

            return await asyncio.to_thread(sanitize, data, detect_faces=False, **_without(kwargs, _CHECKS))
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.size)
        async with self._sem:
            return await asyncio.to_thread(self._run, data, kwargs)

    def close(self) -> None:
        with self._lock:
            workers, self._idle = self._idle, []
        for w in workers:
            w.stop()
