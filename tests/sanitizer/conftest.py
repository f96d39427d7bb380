import shutil

import pytest

if shutil.which("exiftool") is None:  # the README's bootstrap installs it; say so plainly if missing
    pytest.skip("exiftool is not installed (apt-get install libimage-exiftool-perl)", allow_module_level=True)
