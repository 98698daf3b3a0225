"""A throw-away Orthanc PACS on localhost: the PACS of the node's tests and bench, and a way to try
``medseg-listen --forward`` without a hospital's PACS.

Debian's ``orthanc`` package (``make dicom-tools`` installs it) is started with a config
written to a temporary folder: its own storage and index folders, DICOM and HTTP ports on
127.0.0.1 only (``RemoteAccessAllowed`` false, no authentication, which is safe only because
of that), no plugins, and C-STORE accepted only from the modalities listed (the node). Its REST
API is read with urllib.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

INSTALL_HINT = "Orthanc is not installed: `make dicom-tools` installs it (Debian package orthanc, needs root)"


def find_orthanc() -> str | None:
    """The Orthanc binary (PATH, then Debian's /usr/sbin/Orthanc), None when absent."""
    found = shutil.which("Orthanc")
    if found:
        return found
    return "/usr/sbin/Orthanc" if os.access("/usr/sbin/Orthanc", os.X_OK) else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Orthanc:
    """``with Orthanc(modalities={"MEDSEG": ("MEDSEG", "127.0.0.1", 11112)}) as pacs:`` — started
    and reachable inside the block; everything it stored is deleted after it."""

    def __init__(self, aet: str = "ORTHANC", modalities: dict[str, tuple[str, str, int]] | None = None,
                 binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or find_orthanc()
        if self.binary is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.aet = aet
        self.modalities = modalities or {}
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.work = ""
        self.dicom_port = self.http_port = 0

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.work = tempfile.mkdtemp(prefix="orthanc_")
        self.dicom_port, self.http_port = free_port(), free_port()
        config = {
            "Name": "medseg-test-pacs", "StorageDirectory": os.path.join(self.work, "storage"),
            "IndexDirectory": os.path.join(self.work, "index"), "HttpPort": self.http_port, "DicomPort": self.dicom_port,
            "DicomAet": self.aet, "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
            "DicomModalities": {name: list(entry) for name, entry in self.modalities.items()},
            "Plugins": [], "SaveJobs": False, "StableAge": 1,
        }
        path = os.path.join(self.work, "orthanc.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
        self._log = open(os.path.join(self.work, "orthanc.log"), "w", encoding="utf-8")
        self.proc = subprocess.Popen([self.binary, path], stdout=self._log, stderr=subprocess.STDOUT, cwd=self.work)
        end = time.monotonic() + self.timeout
        while True:
            try:
                self.get("/system")
                return
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None or time.monotonic() > end:
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"Orthanc did not start (exit {self.proc.returncode}):\n{log[-2000:]}")
                time.sleep(0.05)

    def log(self) -> str:
        try:
            with open(os.path.join(self.work, "orthanc.log"), encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = ""

    def request(self, path: str, body: Any = None) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.read()

    def get(self, path: str) -> Any:
        return json.loads(self.request(path))

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc's id of the study with this StudyInstanceUID (None when it holds none)."""
        found = json.loads(self.request("/tools/find", {"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}))
        return found[0] if found else None

    def study_series(self, study_uid: str) -> list[dict]:
        """The series of a study as Orthanc lists them (``MainDicomTags``, ``Instances``…)."""
        study = self.find_study(study_uid)
        return [] if study is None else self.get(f"/studies/{study}/series")

    def instance_file(self, instance_id: str) -> bytes:
        return self.request(f"/instances/{instance_id}/file")
