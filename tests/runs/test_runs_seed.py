"""Seeding a run on the peer side: download, sha256, cache, checks against the model, and the join
flow's fresh peer that starts from the seed (while a resuming peer keeps its own checkpoint)."""

from __future__ import annotations

import datetime
import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from peer.runs import SeedError, check_state_dict, get_recipe, load_initial_state
from peer.runs.join import USER_ERRORS, JoinOptions, Volunteer
from peer.runs.manifest import InitialStateSpec
from peer.runs.seed import fetch_initial_state, read_state_dict

RECIPE = {"name": "char-transformer", "config": {"d_model": 8, "n_layers": 1, "n_heads": 1, "seq_len": 4}}
CORPUS = b"a small corpus for a small model, repeated. " * 20


def _model() -> torch.nn.Module:
    return get_recipe(RECIPE["name"], RECIPE["config"]).build_model()


@pytest.fixture
def seed(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    state = _model().state_dict()
    path = tmp_path / "seed.pt"
    torch.save(state, path)
    return path, state


def _spec(path: Path, sha256: str | None = None) -> InitialStateSpec:
    return InitialStateSpec(url=str(path), sha256=sha256 or hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_fetch_verifies_and_caches_by_sha256(tmp_path: Path, seed) -> None:
    path, _ = seed
    spec = _spec(path)
    cached = fetch_initial_state(spec, tmp_path / "data", show_progress=False)
    assert cached == tmp_path / "data" / "initial-state" / f"{spec.sha256}.pt"
    assert cached.read_bytes() == path.read_bytes()
    path.unlink()  # the cache answers from now on
    assert fetch_initial_state(spec, tmp_path / "data", show_progress=False) == cached
    with pytest.raises(SeedError, match="cannot read the initial state"):
        fetch_initial_state(_spec(path, "1" * 64), tmp_path / "other", show_progress=False)  # gone


def test_wrong_sha256_is_a_clear_error_and_leaves_no_file(tmp_path: Path, seed) -> None:
    path, _ = seed
    with pytest.raises(SeedError, match=r"has sha256 [0-9a-f]{64}, but the run expects 0{64}.*organizer"):
        fetch_initial_state(_spec(path, "0" * 64), tmp_path / "data", show_progress=False)
    assert list((tmp_path / "data" / "initial-state").iterdir()) == []


def test_download_over_http(tmp_path: Path, seed, http_root) -> None:
    path, state = seed
    root, base = http_root
    (root / "seed.pt").write_bytes(path.read_bytes())
    model = _model()
    spec = InitialStateSpec(url=f"{base}/seed.pt", sha256=_spec(path).sha256)
    load_initial_state(model, spec, tmp_path / "data", show_progress=False)
    assert _same(model.state_dict(), state)
    with pytest.raises(SeedError, match="HTTP 404"):
        fetch_initial_state(
            InitialStateSpec(url=f"{base}/missing.pt", sha256="2" * 64),
            tmp_path / "data",
            show_progress=False,
        )


def test_files_that_are_not_weights_only_checkpoints_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "text.pt"
    text.write_bytes(b"hello")
    with pytest.raises(SeedError, match="not a torch checkpoint"):
        read_state_dict(text)
    objects = tmp_path / "objects.pt"
    torch.save({"when": datetime.datetime(2024, 1, 1)}, objects)
    with pytest.raises(SeedError, match="weights-only"):
        read_state_dict(objects)
    truncated = tmp_path / "truncated.pt"
    torch.save({"w": torch.ones(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(SeedError, match="cannot read"):
        read_state_dict(truncated)


def test_check_state_dict_names_the_first_problems() -> None:
    expected = {f"layer{i}.weight": torch.zeros(2, 3) for i in range(8)}
    good = {name: torch.ones(2, 3) for name in expected}
    assert check_state_dict(expected, good) == good
    problems = [
        ([1, 2], "must be a dict of parameter name -> tensor"),
        ({**good, 3: torch.ones(1)}, "key that is not a string: 3"),
        ({**good, "layer0.weight": [1.0]}, "'layer0.weight' is a list, not a dense tensor"),
        ({**good, "layer0.weight": torch.ones(2, 3).to_sparse()}, "not a dense tensor"),
        (
            {},
            "8 missing tensor(s) ('layer0.weight', 'layer1.weight', 'layer2.weight', 'layer3.weight', "
            "'layer4.weight' and 3 more)",
        ),
        ({**good, "bias": torch.ones(1)}, "1 unexpected tensor(s) ('bias')"),
        (
            {**good, "layer1.weight": torch.ones(3, 2)},
            "'layer1.weight' has shape [3, 2], the run's model expects [2, 3]",
        ),
        ({**good, "layer1.weight": torch.ones(2, 3, dtype=torch.float16)}, "is torch.float16"),
        ({**good, "layer2.weight": torch.tensor([[1.0, 2.0, float("inf")]] * 2)}, "NaN or infinite"),
    ]
    for state, message in problems:
        with pytest.raises(SeedError) as error:
            check_state_dict(expected, state, source="the seed")
        assert message in str(error.value) and str(error.value).startswith("the seed"), str(error.value)
    meta = {name: torch.empty(2, 3, device="meta") for name in expected}  # the site checks against meta
    assert check_state_dict(meta, good) == good


def _manifest_file(tmp_path: Path, initial_state: InitialStateSpec | None) -> Path:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(CORPUS)
    document = {
        "slug": "seeded",
        "protocol_version": 1,
        "recipe": RECIPE,
        "dataset": {"url": str(corpus), "sha256": hashlib.sha256(CORPUS).hexdigest(), "format": "text"},
        "target_batch_size": 64,
        "initial_state": initial_state.model_dump() if initial_state else None,
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(document))
    return path


def _prepared(manifest: Path, data_dir: Path) -> Volunteer:
    volunteer = Volunteer(JoinOptions(run_url=str(manifest), data_dir=data_dir, client_mode=True))
    try:
        volunteer.prepare()
    except BaseException:
        volunteer.shutdown()
        raise
    return volunteer


def test_a_fresh_volunteer_starts_from_the_seed_and_a_resuming_one_from_its_checkpoint(
    tmp_path: Path, seed
) -> None:
    path, state = seed
    data_dir = tmp_path / "volunteer"
    volunteer = _prepared(_manifest_file(tmp_path, _spec(path)), data_dir)
    try:
        assert volunteer.model is not None and volunteer.optimizer is not None
        assert _same(volunteer.model.state_dict(), state)
        params = [p.detach() for p in volunteer.optimizer.params]
        with volunteer.optimizer.state_averager.get_tensors() as served:  # what newcomers would download
            assert all(torch.equal(a, b) for a, b in zip(served[: len(params)], params, strict=True))
        with torch.no_grad():
            for param in volunteer.model.parameters():
                param.add_(1.0)  # as if it trained
        trained = {name: tensor.clone() for name, tensor in volunteer.model.state_dict().items()}
    finally:
        volunteer.shutdown()  # writes its checkpoint
    # a restart keeps its own checkpoint: the seed is not even fetched (this one could not be)
    unreachable = InitialStateSpec(url=str(tmp_path / "gone.pt"), sha256="3" * 64)
    resumed = _prepared(_manifest_file(tmp_path, unreachable), data_dir)
    try:
        assert resumed.model is not None and _same(resumed.model.state_dict(), trained)
    finally:
        resumed.shutdown()
    # a fresh peer whose seed cannot be had stops with a user error
    with pytest.raises(SeedError, match="cannot read the initial state") as error:
        _prepared(_manifest_file(tmp_path, unreachable), tmp_path / "fresh")
    assert isinstance(error.value, USER_ERRORS)
