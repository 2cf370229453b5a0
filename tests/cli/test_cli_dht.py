"""`hivemind-peer dht` as a user runs it: a real subprocess that serves the DHT to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peer import DHT, get_dht_time
from peer.dht import DHTConfig

STARTUP_TIMEOUT = 30


def _start_node(identity: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str]]:
    command = [sys.executable, "-m", "peer.cli", "dht", "--host", "127.0.0.1", "--identity", str(identity)]
    command += extra
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT
    addresses: list[str] = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("--initial-peers "):
            addresses.append(line.split(maxsplit=1)[1].strip())
            break
    if not addresses:
        process.kill()
        _, stderr = process.communicate(timeout=10)
        pytest.fail(f"hivemind-peer dht printed no address; stderr:\n{stderr}")
    return process, addresses


def _stop(process: subprocess.Popen[str], how: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
    process.send_signal(how)
    _, stderr = process.communicate(timeout=20)
    return process.returncode, stderr


def test_dht_command_serves_a_swarm_and_keeps_its_peer_id(tmp_path: Path) -> None:
    identity = tmp_path / "bootstrap.key"
    process, addresses = _start_node(identity)
    try:
        assert identity.exists() and (identity.stat().st_mode & 0o777) == 0o600
        config = DHTConfig(request_timeout=2.0)
        first = DHT(initial_peers=addresses, config=config)
        second = DHT(initial_peers=addresses, config=config)
        try:
            assert first.store("cli-key", {"answer": 42}, get_dht_time() + 60)
            found = second.get("cli-key")
            assert found is not None and found.value == {"answer": 42}
        finally:
            first.shutdown()
            second.shutdown()
    finally:
        code, stderr = _stop(process)
    assert code == 0, stderr
    assert "shutting down" in stderr
    peer_id = addresses[0].rsplit("/p2p/", 1)[1]

    restarted, new_addresses = _start_node(identity)
    try:
        assert new_addresses[0].rsplit("/p2p/", 1)[1] == peer_id
        client = DHT(initial_peers=new_addresses, client_mode=True, config=DHTConfig(request_timeout=2.0))
        try:
            assert client.store("after-restart", 1, get_dht_time() + 60)
            assert client.get("after-restart").value == 1
        finally:
            client.shutdown()
    finally:
        code, stderr = _stop(restarted)
    assert code == 0, stderr


def test_dht_command_reports_unreachable_initial_peers(tmp_path: Path) -> None:
    bogus = "/ip4/127.0.0.1/tcp/9/p2p/12D3KooWRTubuMzjFi8RXg36wb4KWg45hyDgxoB1RTFk4uZJfHXV"
    result = subprocess.run(
        [sys.executable, "-m", "peer.cli", "dht", "--host", "127.0.0.1", "--initial-peers", bogus],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 1
    assert "could not join the DHT" in result.stderr
    assert "127.0.0.1/tcp/9" in result.stderr


def test_help_explains_the_dht_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "peer.cli", "dht", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    assert "bootstrap" in result.stdout and "--initial-peers" in result.stdout


def test_dht_command_logs_its_sizes_and_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    process, addresses = _start_node(tmp_path / "node.key", "--stats-interval", "1")
    try:
        client = DHT(initial_peers=addresses, client_mode=True, config=DHTConfig(request_timeout=2.0))
        try:
            assert client.store("sized", 1, get_dht_time() + 60)
        finally:
            client.shutdown()
        assert process.stderr is not None
        logged: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("routing table" in line for line in logged):
            logged.append(process.stderr.readline())  # a stats line comes every second
    finally:
        code, stderr = _stop(process, signal.SIGINT)
    assert code == 0, stderr
    assert "shutting down" in stderr
    assert any("routing table: 0 peers; storage: 1 entries" in line for line in logged), logged  # a client
