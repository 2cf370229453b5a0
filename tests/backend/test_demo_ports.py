"""`hivemind-site demo` when it cannot start: a busy site port (P) or bootstrap port (P + 1337) is
named with what to do, before anything starts (it used to crash with an IndexError, or to carry on
against whatever answered on the site port); a bootstrap node that exits without printing its address
is reported with the end of its log."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from site_helpers import demo_port_pair

from backend.demo import BOOTSTRAP_PORT_OFFSET


@contextmanager
def _listening(port: int) -> Iterator[None]:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def _demo(workdir: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("HIVEMIND_")}
    env.pop("DATABASE_URL", None)
    command = [sys.executable, "-m", "backend.cli", "demo", "--workdir", str(workdir), "--port", str(port)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("busy", ["site", "bootstrap"])
def test_a_busy_port_is_named_before_anything_starts(tmp_path, busy):
    port = demo_port_pair()
    busy_port = port if busy == "site" else port + BOOTSTRAP_PORT_OFFSET
    with _listening(busy_port):
        result = _demo(tmp_path / "demo", port)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"port {busy_port}, which the {'site' if busy == 'site' else 'bootstrap DHT node'} needs" in (
        result.stderr
    )
    assert "is already in use" in result.stderr and "--port P" in result.stderr
    assert "Traceback" not in result.stderr and "starting" not in result.stdout
    assert not (tmp_path / "demo").exists()  # nothing was started, not even the demo folder made


@pytest.mark.timeout(90)
def test_a_port_without_room_for_the_bootstrap_port_is_refused(tmp_path):
    result = _demo(tmp_path / "demo", 65535 - BOOTSTRAP_PORT_OFFSET + 1)
    assert (
        result.returncode == 1
        and f"--port must be between 1 and {65535 - BOOTSTRAP_PORT_OFFSET}" in result.stderr
    )


@pytest.mark.timeout(90)
def test_a_bootstrap_node_that_exits_is_reported_with_its_log(tmp_path):
    workdir = tmp_path / "demo"
    workdir.mkdir()
    key = workdir / "bootstrap.key"
    key.write_bytes(b"not a key")
    key.chmod(0o600)
    result = _demo(workdir, demo_port_pair())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the bootstrap DHT node exited with code 1" in result.stderr
    assert str(key) in result.stderr  # the node's own error, from the end of bootstrap.log
    assert "Traceback" not in result.stderr and "starting the site" not in result.stdout
