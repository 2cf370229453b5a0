"""Seeding a run: a fresh peer starts from the organizer's checkpoint instead of a random init.

A manifest's `initial_state` (`{url, sha256}`) names a `model.state_dict()` saved with `torch.save`.
`load_initial_state(model, spec, data_dir)`:

1. downloads it once, with a progress bar like the dataset's, to a temporary file that is renamed
   into `<data_dir>/initial-state/<sha256>.pt` only when its sha256 matches (a bad or interrupted
   download never leaves a cache entry);
2. reads it with `torch.load(weights_only=True)`, after checking it is a torch zip file (so nothing
   in it can run code);
3. checks it is a flat `{name: tensor}` dict whose names, shapes and dtypes are exactly the model's,
   with finite values (`check_state_dict`; the site runs the same check on uploads);
4. loads it into the model.

Every failure is a `SeedError` that says what is wrong and whom to tell. The join flow loads the seed
only on a fresh peer (no local checkpoint), before it builds the optimizer; the swarm's own state,
when a peer serves one, still wins when the optimizer catches up.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from peer.errors import PeerError
from peer.runs.download import fetch_verified
from peer.runs.manifest import InitialStateSpec

_ZIP_MAGIC = b"PK\x03\x04"
_LISTED = 5  # names quoted in an error message


class SeedError(PeerError):
    """The run's initial state could not be fetched or read, or does not fit the model."""


def load_initial_state(
    model: torch.nn.Module, spec: InitialStateSpec, data_dir: Path, *, show_progress: bool = True
) -> Path:
    """Fetch, verify and load the run's initial state into `model` (see the module docstring);
    returns the cached file."""
    path = fetch_initial_state(spec, data_dir, show_progress=show_progress)
    state = check_state_dict(
        model.state_dict(), read_state_dict(path), source=f"the initial state {spec.url}"
    )
    model.load_state_dict(state)
    return path


def fetch_initial_state(spec: InitialStateSpec, data_dir: Path, *, show_progress: bool = True) -> Path:
    """A verified local copy of the checkpoint `spec` names, downloaded once and cached by sha256."""
    target = Path(data_dir).expanduser() / "initial-state" / f"{spec.sha256}.pt"
    return fetch_verified(
        spec.url, spec.sha256, target, what="initial state", error=SeedError, show_progress=show_progress
    )


def read_state_dict(path: Path) -> object:
    """`torch.load(path, weights_only=True)` of a torch zip file; SeedError for anything else."""
    with Path(path).open("rb") as file:
        if file.read(len(_ZIP_MAGIC)) != _ZIP_MAGIC:
            raise SeedError(
                f"{path} is not a torch checkpoint: expected the zip format of torch.save "
                "(torch.save(model.state_dict(), path))"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise SeedError(f"cannot read {path} as a weights-only torch checkpoint: {e}") from None


def check_state_dict(
    expected: Mapping[str, torch.Tensor], state: object, *, source: str = "the checkpoint"
) -> dict[str, torch.Tensor]:
    """`state` as a `{name: tensor}` dict when its names, shapes and dtypes are exactly `expected`'s
    (a model's `state_dict()`, possibly on the meta device) and its values are finite; otherwise a
    SeedError naming the first problems."""
    if not isinstance(state, Mapping):
        raise SeedError(
            f"{source} must be a dict of parameter name -> tensor, as torch.save(model.state_dict(), path) "
            f"writes; it holds a {type(state).__name__}"
        )
    for name, value in state.items():
        if not isinstance(name, str):
            raise SeedError(f"{source} has a key that is not a string: {name!r}")
        if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
            raise SeedError(f"{source}: {name!r} is a {type(value).__name__}, not a dense tensor")
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise SeedError(
            f"{source} does not match the run's model: {_names('missing', missing)}"
            f"{'; ' if missing and unexpected else ''}{_names('unexpected', unexpected)}"
        )
    for name, reference in expected.items():
        value = state[name]
        if value.shape != reference.shape:
            raise SeedError(
                f"{source}: {name!r} has shape {list(value.shape)}, the run's model expects "
                f"{list(reference.shape)}"
            )
        if value.dtype != reference.dtype:
            raise SeedError(f"{source}: {name!r} is {value.dtype}, the run's model expects {reference.dtype}")
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            raise SeedError(f"{source}: {name!r} holds NaN or infinite values")
    return dict(state)


def _names(kind: str, names: list[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(repr(name) for name in names[:_LISTED])
    more = f" and {len(names) - _LISTED} more" if len(names) > _LISTED else ""
    return f"{len(names)} {kind} tensor(s) ({shown}{more})"
