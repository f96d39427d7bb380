import shutil

import pytest

if shutil.which("exiftool") is None:  # the README's bootstrap installs it; say so plainly if missing
    pytest.skip("exiftool is not installed (apt-get install libimage-exiftool-perl)", allow_module_level=True)


@pytest.fixture(autouse=True)
def strict_sanitizer(monkeypatch):
    """In tests, a bug in our own code must fail loudly, not turn into a 'corrupt' refusal."""
    from handlers.sanitizer import _core

    monkeypatch.setattr(_core, "_STRICT", True)
