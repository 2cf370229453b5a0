"""`serve-experts` as a real process: it prints what it serves, answers calls, reports throughput and
stops cleanly on SIGTERM with a checkpoint."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import torch
from typer.testing import CliRunner

from peer.moe import RemoteExpert
from peer.moe.checkpoints import checkpoint_path
from peer.moe.cli import app
from peer.net.p2p import P2P


def _reader(stream, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _wait_for(lines: queue.Queue[str], needle: str, seen: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} never appeared; output so far:\n{''.join(seen)}")


def test_serve_experts_serves_reports_and_stops_cleanly_on_sigterm(tmp_path) -> None:
    command = [
        sys.executable,
        "-c",
        "from peer.moe.cli import app; app()",
        "--num-experts",
        "2",
        "--expert-prefix",
        "cli",
        "--hidden-dim",
        "8",
        "--host",
        "127.0.0.1",
        "--checkpoint-dir",
        str(tmp_path),
        "--stats-interval",
        "0.2",
        "--max-batch-size",
        "32",
    ]
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str] = queue.Queue()
    thread = threading.Thread(target=_reader, args=(process.stdout, lines), daemon=True)
    thread.start()
    seen: list[str] = []
    try:
        maddr = _wait_for(lines, "listening on", seen).split("listening on", 1)[1].strip()
        assert any("cli.[0:2]" in line for line in seen)
        client = P2P.create(host_maddrs=[])
        try:
            expert = RemoteExpert("cli.1", maddr, client, forward_timeout=20, backward_timeout=20)
            assert expert.info.expert_cls == "ffn" and expert.info.max_batch_size == 32
            expert(torch.randn(4, 8)).sum().backward()
        finally:
            client.shutdown()
        _wait_for(lines, "total 4 forward, 4 backward", seen)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        thread.join(10)
        while not lines.empty():
            seen.append(lines.get())
        assert "stopped" in "".join(seen)
        assert checkpoint_path(tmp_path, "cli.1").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_serve_experts_refuses_bad_arguments() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["--expert-pattern", "ffn.[0:2]", "--num-experts", "3"])
    assert result.exit_code != 0 and "exactly one" in result.output
    result = runner.invoke(app, ["--num-experts", "2", "--expert-cls", "no_such_class"])
    assert result.exit_code != 0 and "unknown expert class" in result.output
