"""A throwaway Orthanc PACS with its DICOMweb plugin, on a free loopback port.

For the tests and ``referral-bot demo --with-pacs``. Uses Debian's ``orthanc`` and
``orthanc-dicomweb`` packages (``scripts/bootstrap.sh`` installs them). Storage, index
and config live in a temporary folder; the DICOM (DIMSE) listener is off, HTTP listens
on 127.0.0.1 only, without authentication (loopback, throwaway data).

    with OrthancServer.start() as pacs:
        pacs.dicomweb_url      # http://127.0.0.1:PORT/dicom-web
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OrthancUnavailable", "OrthancServer", "find_orthanc"]

_BINARY = "/usr/sbin/Orthanc"
_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancUnavailable(Exception):
    """Orthanc cannot run here; the message says why."""


def find_orthanc() -> tuple[str, str]:
    binary = shutil.which("Orthanc") or (_BINARY if Path(_BINARY).exists() else None)
    if binary is None:
        raise OrthancUnavailable("Orthanc is not installed (Debian packages orthanc and orthanc-dicomweb; "
                                 "scripts/bootstrap.sh installs them)")
    if not Path(_PLUGIN).exists():
        raise OrthancUnavailable("the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
    return binary, _PLUGIN


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OrthancServer:
    root: Path
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @classmethod
    def start(cls, timeout: float = 30.0) -> "OrthancServer":
        binary, plugin = find_orthanc()
        root = Path(tempfile.mkdtemp(prefix="referral-bot-orthanc-"))
        port = _free_port()
        config = {
            "Name": "referral-bot-test-pacs",
            "StorageDirectory": str(root / "db"),
            "IndexDirectory": str(root / "db"),
            "HttpPort": port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "HttpsVerifyPeers": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False},
            "StableAge": 1,
        }
        (root / "orthanc.json").write_text(json.dumps(config))
        log = open(root / "orthanc.log", "wb")
        proc = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                cwd=root, start_new_session=True)
        server = cls(root=root, port=port, process=proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (root / "orthanc.log").read_text(errors="replace")[-800:]
                server.stop()
                raise OrthancUnavailable(f"Orthanc exited at start: {tail}")
            try:
                with urllib.request.urlopen(f"{server.url}/system", timeout=1) as resp:
                    if resp.status == 200:
                        return server
            except OSError:
                time.sleep(0.1)
        server.stop()
        raise OrthancUnavailable("Orthanc did not answer on its HTTP port in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "OrthancServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
