"""What the end-to-end tests share: a manifest file, a bootstrap node, `hivemind-peer join` processes
(their terminal output goes to log files, never to an unread pipe), and evaluating the `checkpoint.pt`
a peer leaves in its data dir on the same held-out text."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from peer.runs import get_recipe
from peer.runs.join import run_seed

REPO = Path(__file__).resolve().parents[2]
_DOCS = b"".join(path.read_bytes() for path in sorted((REPO / "docs").glob("*.md")))
TRAIN_TEXT, HELD_OUT_TEXT = _DOCS[: len(_DOCS) * 9 // 10], _DOCS[len(_DOCS) * 9 // 10 :]
RECIPE_CONFIG = {"d_model": 32, "n_layers": 1, "n_heads": 2, "seq_len": 32}
# one torch thread per process: several peers share this machine's few cores
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
FAST_AVERAGING = {
    "target_group_size": 3,  # three peers form a group at once, without waiting for a fourth
    "min_matchmaking_time": 0.3,
    "averaging_timeout": 5,
    "progress_period": 0.2,
}


def peer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "peer.cli", *args]


def write_manifest(path: Path, initial_peers: list[str], **overrides) -> Path:
    """A char-transformer run on the training text, saved at `path` (the corpus beside it)."""
    corpus = path.parent / "corpus.txt"
    corpus.write_bytes(TRAIN_TEXT)
    document = {
        "slug": "tiny",
        "name": "Tiny",
        "protocol_version": 1,
        "recipe": {"name": "char-transformer", "config": RECIPE_CONFIG},
        "dataset": {"url": str(corpus), "sha256": hashlib.sha256(TRAIN_TEXT).hexdigest(), "format": "text"},
        "target_batch_size": 48,
        "optimizer": {"lr": 0.003},
        "averaging": FAST_AVERAGING,
        "initial_peers": initial_peers,
        "auth": {"mode": "open"},
        **overrides,
    }
    path.write_text(json.dumps(document))
    return path


@contextlib.contextmanager
def bootstrap_node(log: Path) -> Iterator[str]:
    """A `hivemind-peer dht` node; yields its multiaddr."""
    with log.open("w") as stderr:
        command = peer_command("dht", "--host", "127.0.0.1")
        node = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV)
    try:
        assert node.stdout is not None
        line = node.stdout.readline()
        assert line.startswith("--initial-peers"), f"the bootstrap node printed {line!r}; see {log}"
        yield line.split()[-1]
    finally:
        node.send_signal(signal.SIGTERM)
        node.communicate(timeout=30)


@dataclass
class Volunteer:
    """One `hivemind-peer join` process with its data dir and log file."""

    name: str
    data_dir: Path
    log: Path
    process: subprocess.Popen

    @classmethod
    def start(cls, manifest: Path | str, workdir: Path, name: str, *args: str, env: dict | None = None):
        data_dir, log = workdir / name, workdir / f"{name}.log"
        command = peer_command("join", str(manifest), "--data-dir", str(data_dir), *args)
        with log.open("a") as output:
            process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, text=True, env=env or ENV
            )
        return cls(name, data_dir, log, process)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The exit code; on a timeout the process is killed and the test fails with its log."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s:\n{self.output()[-3000:]}"
            ) from None

    def stop(self, timeout: float = 60) -> int:
        """Ctrl-C (it saves a checkpoint and leaves) and the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def checkpoint(self) -> dict:
        return torch.load(self.data_dir / "checkpoint.pt", map_location="cpu", weights_only=True)

    def left_at_epoch(self) -> int:
        match = re.search(r"left the run after \d+ steps at epoch (\d+)", self.output())
        assert match, f"{self.name} did not leave cleanly:\n{self.output()[-3000:]}"
        return int(match.group(1))


def wait_for(condition: Callable[[], bool], timeout: float, what: str, period: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(period)


def held_out_loss(params: list[torch.Tensor] | None, slug: str = "tiny", batches: int = 8) -> float:
    """The mean loss of a model with `params` (a checkpoint's, in `model.parameters()` order; None:
    the run's initial model) on the same fixed held-out batches."""
    recipe = get_recipe("char-transformer", RECIPE_CONFIG)
    torch.manual_seed(run_seed(slug))
    model = recipe.build_model()
    if params is not None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        assert len(trainable) == len(params)
        with torch.no_grad():
            for param, saved in zip(trainable, params, strict=True):
                param.copy_(saved)
    stream = recipe.batches(HELD_OUT_TEXT, 64, seed=1234)
    with torch.no_grad():
        return sum(recipe.loss(model, next(stream)).item() for _ in range(batches)) / batches
