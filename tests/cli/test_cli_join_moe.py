"""`hivemind-peer join` on a Mixture-of-Experts run: an `--experts-only` process hosts the experts a
`--no-experts` process trains with; the flags' errors."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from typer.testing import CliRunner

from peer.cli import app
from peer.dht import DHT, owner_marker
from peer.net.identity import PeerID
from peer.optim import PeerRecord, run_validators

CORPUS = b"".join(
    path.read_bytes() for path in sorted((Path(__file__).resolve().parents[2] / "docs").glob("*.md"))
)
PEER = [sys.executable, "-m", "peer.cli"]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
RECIPE = {"d_model": 32, "n_heads": 2, "n_layers": 1, "seq_len": 32, "grid": [2, 2], "k_best": 2}


def _manifest(tmp_path: Path, name: str, initial_peers: list[str], recipe: dict | None = None) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    document = {
        "slug": "moe-cli",
        "protocol_version": 1,
        "recipe": recipe or {"name": "moe-char-transformer", "config": RECIPE},
        "dataset": {"url": str(corpus), "sha256": hashlib.sha256(CORPUS).hexdigest()},
        "target_batch_size": 64,
        "optimizer": {"lr": 0.003},
        "averaging": {"min_matchmaking_time": 0.5, "averaging_timeout": 2},
        "initial_peers": initial_peers,
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(document))
    return path


def _reader(stream, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def _wait_for(lines: queue.Queue[str], pattern: str, seen: list[str], timeout: float = 90) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} never appeared; output so far:\n{''.join(seen)}")


def _peer_record(address: str, peer_id: str, timeout: float = 60) -> PeerRecord | None:
    """The `<run>_peers` record of `peer_id`, read through the peer at `address` (polled: a loaded
    machine may answer late)."""
    reader = DHT(initial_peers=[address], client_mode=True, record_validators=run_validators("moe-cli"))
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = reader.get("moe-cli_peers", latest=True)
            item = found.value.get(owner_marker(PeerID.from_base58(peer_id))) if found is not None else None
            if item is not None:
                return PeerRecord.model_validate(item.value)
            if time.monotonic() > deadline:
                return None
            time.sleep(1.0)
    finally:
        reader.shutdown()


def test_an_experts_only_peer_hosts_the_experts_a_no_experts_peer_trains_with(tmp_path: Path) -> None:
    host_manifest = _manifest(tmp_path, "host", [])
    host = subprocess.Popen(
        [*PEER, "join", str(host_manifest), "--experts-only", "--data-dir", str(tmp_path / "host")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    reader = threading.Thread(target=_reader, args=(host.stderr, lines), daemon=True)
    reader.start()
    try:
        peer_id = _wait_for(lines, r"as peer (\w+)", seen).group(1)
        address = _wait_for(lines, r"reachable at (/ip4/127\.0\.0\.1/\S+)", seen).group(1)
        _wait_for(lines, r"hosting 4 of the run's 4 experts", seen)
        trainer_manifest = _manifest(tmp_path, "trainer", [address])
        options = [
            "--no-experts",
            "--max-steps",
            "8",
            "--batch-size",
            "8",
            "--data-dir",
            str(tmp_path / "trainer"),
        ]
        trainer = subprocess.run(
            [*PEER, "join", str(trainer_manifest), *options],
            capture_output=True,
            text=True,
            timeout=180,
            env=ENV,
        )
        assert trainer.returncode == 0, trainer.stderr
        assert "left the run after 8 steps" in trainer.stderr
        assert "hosting" not in trainer.stderr  # --no-experts: it serves nothing
        record = _peer_record(address, peer_id)  # the experts-only peer is listed in <run>_peers
        assert record is not None and record.reachability == "direct", "".join(seen)
    finally:
        host.send_signal(signal.SIGINT)
        try:
            host.wait(timeout=60)
        finally:
            if host.poll() is None:
                host.kill()
                host.wait()
            reader.join(timeout=10)
            assert host.stderr is not None
            host.stderr.close()
    while not lines.empty():
        seen.append(lines.get())
    output = "".join(seen)
    assert host.returncode == 0, output
    served = re.search(r"left the run after hosting 4 experts; they served (\d+) samples", output)
    assert served is not None and int(served.group(1)) > 0, output  # the trainer used the host's experts
    assert (tmp_path / "host" / "experts" / "ffn0.1.1" / "checkpoint.pt").exists()
    assert not (tmp_path / "host" / "checkpoint.pt").exists()  # it trained nothing: no model checkpoint


def test_expert_flags_give_clear_errors(tmp_path: Path) -> None:
    def join(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, ["join", *args, "--data-dir", str(tmp_path)])
        return result.exit_code, " ".join(result.output.split())  # rich wraps long lines

    moe = str(_manifest(tmp_path, "moe", []))
    code, output = join(moe, "--no-experts", "--experts-only")
    assert code == 2 and "exclude each other" in output
    dense_recipe = {"name": "char-transformer", "config": {"d_model": 16, "n_heads": 2, "n_layers": 1}}
    code, output = join(str(_manifest(tmp_path, "dense", [], dense_recipe)), "--experts-only")
    assert code == 2 and "has no experts to host" in output
    code, output = join(moe, "--experts-only", "--client-mode")
    assert code == 2 and "cannot host experts" in output
