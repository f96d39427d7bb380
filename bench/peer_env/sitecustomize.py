"""Benchmark only (bench/bench_matrix.py, phase 4): started with this folder on PYTHONPATH,
a bot process and its sanitizer workers check faces with the old Haar cascade
(bench/peer_cascade.py) instead of BlazeFace and do not look for text, as the product did
before issue 11. Everything else (decoding, blurring, the workflow, the transport) is the
product's own code, so the difference measured is the detector's."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _use_the_cascade() -> None:
    import numpy as np
    from PIL import Image

    import peer_cascade
    from handlers.sanitizer import _detect

    def check(rgb, *, want_faces, want_text, then=None):
        # on the sanitizer's decode (1008 px for 12 MP), which the cascade scales to 800 px
        # as the product did: not on the 512-px copy BlazeFace looks at
        found = peer_cascade.detect(Image.fromarray(np.asarray(rgb)).convert("L")) if want_faces else []
        if then is not None:
            then()
        return found, []

    _detect.check = check


try:
    _use_the_cascade()
except Exception as exc:  # pragma: no cover - a broken bench set-up must be loud
    print(f"peer_env: could not switch to the cascade: {exc!r}", file=sys.stderr)
    raise
