"""The live demo network for the integration tests (marker ``live``).

A session fixture starts ``$PLEXUS_BIN demo --serve --dir <tmp>`` and waits
for ``<tmp>/connect.json``; or, with ``PLEXUS_CONNECT`` set to a
connect.json, uses a network already running. Without either the live tests
are skipped, except under ``CI=true``, where they fail: CI must not pass by
skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Dict, Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

#: PLEXUS_HTTP2=1 runs the live tests over HTTP/2 instead of HTTP/1.1.
HTTP2 = os.environ.get("PLEXUS_HTTP2", "") == "1"
START_TIMEOUT = float(os.environ.get("PLEXUS_DEMO_START_SECS", "180"))


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class Demo:
    """A running demo network: its directory, connect.json and the binary."""

    def __init__(self, directory: str, connect: Dict[str, Any], binary: str | None) -> None:
        self.dir = directory
        self.connect_path = os.path.join(directory, "connect.json")
        self.connect = connect
        self.binary = binary

    @property
    def url(self) -> str:
        return str(self.connect["url"])

    @property
    def pki(self) -> str:
        return str(self.connect.get("pki") or os.path.join(self.dir, "pki"))

    def network(self, role: str = "researcher"):
        import plexus

        return plexus.Network.from_connect_file(self.connect_path, role=role, http2=HTTP2)


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Iterator[Demo]:
    existing = os.environ.get("PLEXUS_CONNECT")
    binary = os.environ.get("PLEXUS_BIN")
    if existing:
        with open(existing, encoding="utf-8") as f:
            yield Demo(os.path.dirname(os.path.abspath(existing)), json.load(f), binary)
        return
    if not binary:
        reason = ("PLEXUS_BIN is not set: the live tests need the plexus binary built with the demo feature "
                  "(cargo build -p plexus --features demo; PLEXUS_BIN=target/debug/plexus) or PLEXUS_CONNECT")
        if _ci():
            pytest.fail(reason + " (CI=true: failing instead of skipping)", pytrace=False)
        pytest.skip(reason)
    if not os.access(binary, os.X_OK):
        pytest.fail(f"PLEXUS_BIN={binary} is not an executable file", pytrace=False)
    directory = str(tmp_path_factory.mktemp("demo"))
    log_path = os.path.join(directory, "demo.log")
    log = open(log_path, "wb")
    proc = subprocess.Popen([binary, "demo", "--serve", "--dir", directory], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    connect_path = os.path.join(directory, "connect.json")
    deadline = time.monotonic() + START_TIMEOUT
    connect = None
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if os.path.exists(connect_path):
                try:
                    with open(connect_path, encoding="utf-8") as f:
                        connect = json.load(f)
                    break
                except ValueError:
                    pass  # being written
            time.sleep(0.2)
        if connect is None:
            with open(log_path, "rb") as f:
                tail = f.read()[-3000:].decode("utf-8", "replace")
            state = f"exited with {proc.returncode}" if proc.poll() is not None else f"no connect.json after {START_TIMEOUT} s"
            pytest.fail(f"plexus demo --serve {state}; its output ends:\n{tail}")
        yield Demo(directory, connect, binary)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.fixture(scope="session")
def researcher(demo):
    return demo.network("researcher")


@pytest.fixture(scope="session")
def exact_study(demo, researcher):
    return researcher.study(demo.connect.get("studies", {}).get("exact", "aaa-validation"))


@pytest.fixture(scope="session")
def reference(demo, researcher):
    """The reference CSV of the exact study with dictionary types applied (booleans as bool, NA kept)."""
    import pandas as pd

    study = demo.connect.get("studies", {}).get("exact", "aaa-validation")
    frame = pd.read_csv(demo.connect["reference"][study], keep_default_na=True)
    dictionary = researcher.dictionary().set_index("name")
    for name in frame.columns:
        if name in dictionary.index and dictionary.loc[name, "type"] == "boolean":
            frame[name] = frame[name].map(lambda v: None if pd.isna(v) else str(v).strip().lower() == "true")
    return frame

