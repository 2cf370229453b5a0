"""`hivemind-peer join` as a volunteer runs it: real processes against a manifest file, no site."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORPUS = b"".join(
    path.read_bytes() for path in sorted((Path(__file__).resolve().parents[2] / "docs").glob("*.md"))
)
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def _peer(*args: str) -> list[str]:
    return [sys.executable, "-m", "peer.cli", *args]


def _manifest(tmp_path: Path, initial_peers: list[str], **overrides) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    document = {
        "slug": "tiny",
        "name": "Tiny",
        "protocol_version": 1,
        "recipe": {
            "name": "char-transformer",
            "config": {"d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32},
        },
        "dataset": {"url": str(corpus), "sha256": hashlib.sha256(CORPUS).hexdigest(), "format": "text"},
        "target_batch_size": 64,
        "optimizer": {"lr": 0.003},
        "averaging": {"min_matchmaking_time": 0.5, "averaging_timeout": 5},
        "initial_peers": initial_peers,
        "auth": {"mode": "open"},
    }
    document.update(overrides)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document))
    return path


def _join(
    manifest: Path | str, data_dir: Path, *extra: str, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        _peer("join", str(manifest), "--data-dir", str(data_dir), *extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"recipe": {"name": "gpt-17", "package": "gpt17-recipes"}}, "pip install gpt17-recipes"),
        ({"dataset": {"url": "/nonexistent", "sha256": "0" * 64}}, "cannot read the dataset"),
        ({"protocol_version": 7}, "manifest protocol 7"),
        ({"compression": {"gradients": "zip"}}, "unknown codec 'zip'; valid: none, float16"),
    ],
)
def test_bad_manifests_exit_2_with_a_reason(tmp_path: Path, change: dict, message: str) -> None:
    result = _join(_manifest(tmp_path, [], **change), tmp_path / "data")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_malformed_json_wrong_sha256_and_unreachable_site_exit_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = _join(broken, tmp_path / "data")
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    manifest = _manifest(tmp_path, [])
    document = json.loads(manifest.read_text())
    document["dataset"]["sha256"] = "1" * 64
    manifest.write_text(json.dumps(document))
    result = _join(manifest, tmp_path / "data")
    assert result.returncode == 2 and "expects" in result.stderr
    result = _join("http://127.0.0.1:9/runs/tiny", tmp_path / "data")
    assert result.returncode == 2 and "cannot reach the site" in result.stderr


def test_two_volunteers_train_together_and_resume(tmp_path: Path) -> None:
    bootstrap = subprocess.Popen(
        _peer("dht", "--host", "127.0.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert bootstrap.stdout is not None
        address = bootstrap.stdout.readline().split()[-1]
        manifest = _manifest(tmp_path, [address])
        peers = [
            subprocess.Popen(
                _peer("join", str(manifest), "--data-dir", str(tmp_path / name), "--max-steps", "40"),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            for name in ("alice", "bob")
        ]
        outputs = [peer.communicate(timeout=180) for peer in peers]
        for peer, (_, stderr) in zip(peers, outputs, strict=True):
            assert peer.returncode == 0, stderr
            assert "left the run after 40 steps" in stderr
            epoch = int(re.search(r"left the run after 40 steps at epoch (\d+)", stderr).group(1))
            assert epoch >= 5  # 2 peers x 40 steps x 16 samples / 64 per epoch = 20 epochs at most
            final_loss = float(re.findall(r"loss\s+([0-9.]+)", stderr)[-1])
            assert final_loss < 4.8  # an untrained model scores about ln(256) = 5.5
        assert (tmp_path / "alice" / "checkpoint.pt").exists()
        # a restart resumes from the checkpoint (and the swarm) instead of starting over
        again = _join(manifest, tmp_path / "alice", "--max-steps", "2", timeout=120)
        assert again.returncode == 0, again.stderr
        assert "resumed from" in again.stderr or "loaded the swarm's state" in again.stderr
    finally:
        bootstrap.send_signal(signal.SIGTERM)
        bootstrap.communicate(timeout=30)


def test_an_interrupt_leaves_cleanly_and_saves_a_checkpoint(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [])
    peer = subprocess.Popen(
        _peer("join", str(manifest), "--data-dir", str(tmp_path / "solo")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert peer.stderr is not None  # the CLI talks to the terminal on stderr
    welcome = []
    for line in peer.stderr:  # the Ctrl-C handler is installed right after the welcome
        welcome.append(line)
        if line.startswith("joined run"):
            break
    assert welcome and welcome[-1].startswith("joined run"), "".join(welcome)
    time.sleep(2)  # a few steps
    peer.send_signal(signal.SIGINT)
    _, rest = peer.communicate(timeout=60)
    stderr = "".join(welcome) + rest
    assert peer.returncode == 0, stderr
    assert "finishing the current step" in stderr and "left the run" in stderr
    assert (tmp_path / "solo" / "checkpoint.pt").exists()
