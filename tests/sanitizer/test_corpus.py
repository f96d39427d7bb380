"""Run the sanitizer over the shared sample corpus (real cameras and phones), when present."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from handlers.sanitizer import ImageRefused, sanitize

from ..conftest import SHARED_CORPUS
from .checks import decoded, displayed, leftovers
from .imagegen import EXIFTOOL

if not SHARED_CORPUS.is_dir():
    pytest.skip(f"no shared corpus at {SHARED_CORPUS}", allow_module_level=True)

FILES = sorted(p for p in SHARED_CORPUS.rglob("*") if p.is_file())


def test_every_corpus_file_is_sanitized_or_cleanly_refused(tmp_path):
    assert FILES, "corpus folder is empty"
    outputs: dict[Path, Path] = {}
    refusals: dict[str, str] = {}
    for i, src in enumerate(FILES):
        data = src.read_bytes()
        try:
            result = sanitize(data, detect_faces=False)
        except ImageRefused as exc:
            refusals[str(src.relative_to(SHARED_CORPUS))] = exc.reason
            continue
        out = tmp_path / f"{i:04d}.{result.extension}"
        out.write_bytes(result.data)
        outputs[src] = out
        if result.media_type == "image/jpeg" and src.suffix.lower() in (".jpg", ".jpeg"):
            assert decoded(result.data).tobytes() == decoded(data).tobytes(), src
            assert displayed(result.data).size == displayed(data).size, src
        else:
            assert decoded(result.data).size == (result.width, result.height)
    # READMEs are not images; the one deliberately corrupted JPEG is refused; real photos are not.
    for name, reason in refusals.items():
        assert name.endswith(("README", ".rst")) or "corrupt" in name, (name, reason)
    assert len(outputs) >= 90
    # exiftool, in one batch, sees nothing but decoding parameters (and our neutral ICC) in any output
    raw = subprocess.run([EXIFTOOL, "-a", "-G1", "-j", "-m", *map(str, outputs.values())], capture_output=True,
                         check=True).stdout
    by_file = {Path(item["SourceFile"]).name: item for item in json.loads(raw)}
    problems = {src.name: leftovers(by_file[out.name]) for src, out in outputs.items() if leftovers(by_file[out.name])}
    assert not problems, problems


def test_invalid_folder_is_handled_without_hanging():
    invalid = SHARED_CORPUS / "exif-samples" / "jpg" / "invalid"
    if not invalid.is_dir():
        pytest.skip("no invalid/ folder in the corpus")
    for src in sorted(invalid.glob("*.jpg")):
        try:
            result = sanitize(src.read_bytes(), detect_faces=False)
        except ImageRefused:
            continue
        assert result.data.startswith(b"\xff\xd8") and result.data.endswith(b"\xff\xd9")
