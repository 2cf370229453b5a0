"""`hivemind-peer join`: the volunteer's whole session, from a run URL to training in the swarm.

    manifest -> recipe -> identity -> access token (when the run needs one) -> dataset -> DHT
    -> model (the run's seed; a fresh peer of a seeded run loads the manifest's initial state)
    -> local checkpoint, then the swarm's state -> train, publish progress

A restart resumes: the model and optimizer are checkpointed in the data dir every few epochs and on
exit, and a peer that finds the swarm ahead downloads its state. Errors in what the user gave (the
URL, the manifest, the recipe, the token) raise `JoinError` with a message that says what to do.

In a Mixture-of-Experts run (a recipe with an expert grid) the peer also hosts a share of the grid
(`peer.runs.experts.ExpertHost`, checkpointed in `<data dir>/experts`), and its model calls the
swarm's experts, its own in-process. `no_experts` trains without hosting; `experts_only` hosts
without training (no dataset, no model: `serve()` instead of `train()`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch

from peer.dht import DHT, DHTConfig
from peer.errors import AuthorizationError, IdentityError, PeerError
from peer.moe import MoEError
from peer.net.identity import Identity
from peer.net.tokens import AccessToken, TokenAuthorizer, load_authority_public_key
from peer.optim import Optimizer, PeerRecord, ProgressTracker, run_validators
from peer.runs.data import DatasetError, fetch_dataset
from peer.runs.experts import ExpertHost, HostingOptions
from peer.runs.manifest import ManifestError, RunManifest, load_manifest
from peer.runs.recipes import Recipe, RecipeConfigError, RecipeNotFoundError, get_recipe
from peer.runs.seed import SeedError, load_initial_state
from peer.runs.training import build_optimizer

logger = logging.getLogger(__name__)
TOKEN_REFRESH_MARGIN = 600.0  # refresh an access token this many seconds before it expires


class JoinError(PeerError):
    """Joining is impossible with what was given; the message says what to change."""


# errors in what the volunteer gave (exit code 2), as opposed to failures along the way (exit code 1)
USER_ERRORS = (
    JoinError,
    ManifestError,
    RecipeNotFoundError,
    RecipeConfigError,
    DatasetError,
    SeedError,
    IdentityError,
    AuthorizationError,
    ValueError,
)


@dataclass(frozen=True)
class JoinOptions:
    run_url: str
    token: str | None = None
    port: int = 0
    announce: str | None = None
    client_mode: bool = False
    device: str = "cpu"
    batch_size: int = 16
    max_steps: int | None = None
    identity: Path | None = None
    data_dir: Path | None = None
    no_experts: bool = False  # MoE runs: train, host no experts
    experts_only: bool = False  # MoE runs: host experts, do not train
    num_experts: int | None = None  # MoE runs: experts to host (None: an equal share of the grid)
    offload_optimizer: bool = False  # the optimizer's state in CPU memory (see peer.optim.master)

    def __post_init__(self) -> None:
        if self.no_experts and self.experts_only:
            raise ValueError("no_experts (--no-experts) and experts_only (--experts-only) exclude each other")
        if self.num_experts is not None and (self.num_experts < 1 or self.no_experts):
            raise ValueError("num_experts (--num-experts) must be at least 1, and goes without no_experts")


@dataclass
class Status:
    """What the terminal display shows; updated after every step."""

    epoch: int = 0
    local_steps: int = 0
    loss: float | None = None
    peers: int = 0
    swarm_samples_per_second: float = 0.0
    my_samples: int = 0
    eta: float = float("inf")
    hosted_experts: list[str] = field(default_factory=list)  # MoE runs: the experts this peer serves
    grid_size: int = 0  # MoE runs: experts in the run's grid
    expert_samples: int = 0  # rows this peer's experts have run forward, for the whole swarm
    waiting: str | None = None  # why the last step was skipped (e.g. no live experts yet)


def run_seed(slug: str) -> int:
    """Every fresh peer of a run initializes the model from the same seed."""
    return int.from_bytes(hashlib.sha256(f"hivemind-platform/run/{slug}".encode()).digest()[:8], "big")


class TokenSource:
    """Obtains and refreshes this peer's access token from the site with the volunteer's API key."""

    def __init__(self, manifest: RunManifest, api_key: str, identity: Identity):
        self.url = manifest.auth.token_url or ""
        self.api_key, self.identity, self.run = api_key, identity, manifest.slug
        self.token: AccessToken | None = None

    def fetch(self) -> AccessToken:
        try:
            response = httpx.post(
                self.url,
                json={"peer_public_key": str(self.identity.peer_id)},
                headers={"Authorization": f"Bearer {self.api_key}"},
                timeout=15.0,
            )
        except httpx.HTTPError as e:
            raise JoinError(f"cannot reach the site for an access token ({self.url}): {e}") from None
        if response.status_code in (401, 403):
            detail = _error_message(response)
            raise JoinError(
                f"the site refused an access token ({response.status_code}): {detail}. "
                "Check your API key (--token or HIVEMIND_TOKEN) and that you may join this run"
            )
        if response.status_code >= 400:
            raise JoinError(
                f"the site answered {response.status_code} for an access token: {_error_message(response)}"
            )
        try:
            self.token = AccessToken.from_text(response.json()["token"])
        except (ValueError, KeyError, TypeError) as e:
            raise JoinError(f"the site sent an unreadable access token: {e}") from None
        return self.token

    async def provide(self) -> bytes | None:
        if self.token is None or self.token.expires_at - time.time() < TOKEN_REFRESH_MARGIN:
            await asyncio.get_running_loop().run_in_executor(None, self.fetch)
        assert self.token is not None
        return self.token.to_bytes()


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


class Volunteer:
    """One `join` session (see the module docstring). `prepare()` then `train(on_step)`."""

    def __init__(self, options: JoinOptions):
        self.options = options
        self.manifest: RunManifest | None = None
        self.recipe: Recipe | None = None
        self.dht: DHT | None = None
        self.optimizer: Optimizer | None = None
        self.model: torch.nn.Module | None = None
        self.expert_host: ExpertHost | None = None
        self.corpus = b""
        self.username: str | None = None
        self.status = Status()
        self.stop_requested = False

    @property
    def data_dir(self) -> Path:
        assert self.manifest is not None
        return (self.options.data_dir or Path("~/.hivemind").expanduser() / self.manifest.slug).expanduser()

    def prepare(self) -> None:
        self.manifest = load_manifest(self.options.run_url)
        if self.manifest.status not in ("active", "running"):
            raise JoinError(
                f"run {self.manifest.slug!r} is {self.manifest.status}; it accepts no volunteers now"
            )
        self.recipe = get_recipe(
            self.manifest.recipe.name, self.manifest.recipe.config, self.manifest.recipe.package
        )
        self._check_expert_options()
        if self.manifest.dataset is None and not self.options.experts_only:
            raise JoinError(f"run {self.manifest.slug!r} names no dataset; ask its organizer to add one")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity_path = self.options.identity or self.data_dir / "identity.key"
        identity = Identity.load_or_create(identity_path)
        authorizer = self._authorizer(identity)
        if self.manifest.dataset is not None and not self.options.experts_only:
            self.corpus = fetch_dataset(self.manifest.dataset, self.data_dir).read_bytes()
        host = [] if self.options.client_mode else [f"/ip4/0.0.0.0/tcp/{self.options.port}"]
        self.dht = DHT(
            initial_peers=self.manifest.initial_peers,
            host_maddrs=host or ("/ip4/127.0.0.1/tcp/0",),
            client_mode=self.options.client_mode,
            identity_path=identity_path,
            authorizer=authorizer,
            record_validators=run_validators(self.manifest.slug),
            config=DHTConfig(announce_maddrs=(self.options.announce,) if self.options.announce else ()),
        )
        self._start_expert_host()
        if not self.options.experts_only:
            self._build_model_and_optimizer()
            assert self.model is not None
            server = self.expert_host.server if self.expert_host is not None else None
            self.recipe.attach_swarm(self.model, self.dht, server)

    def _check_expert_options(self) -> None:
        assert self.manifest is not None and self.recipe is not None
        if self.recipe.expert_uids():
            if self.options.experts_only and self.options.client_mode:
                raise JoinError("a peer in --client-mode accepts no connections, so it cannot host experts")
            return
        if self.options.experts_only or self.options.num_experts is not None:
            raise JoinError(
                f"run {self.manifest.slug!r} (recipe {self.recipe.name!r}) has no experts to host; "
                "leave out --experts-only and --num-experts"
            )

    def _start_expert_host(self) -> None:
        """Host a share of the run's experts: unless the run has none, or this peer may not host."""
        assert self.manifest is not None and self.recipe is not None and self.dht is not None
        if not self.recipe.expert_uids() or self.options.no_experts or self.options.client_mode:
            return
        options = HostingOptions(
            num_experts=self.options.num_experts,
            device=self.options.device,
            checkpoint_dir=self.data_dir / "experts",
        )
        self.expert_host = ExpertHost(self.dht, self.recipe, self.manifest.slug, options)
        self.expert_host.start()
        self._update_expert_status()

    def _authorizer(self, identity: Identity) -> TokenAuthorizer | None:
        assert self.manifest is not None
        if self.manifest.auth.mode != "token":
            self._register_for_credit(identity)
            return None
        if not self.options.token:
            raise JoinError(
                f"run {self.manifest.slug!r} needs an access token: create an API key on the run's site and "
                "pass it with --token or the HIVEMIND_TOKEN environment variable"
            )
        source = TokenSource(self.manifest, self.options.token, identity)
        token = source.fetch()
        self.username = token.username
        authority = load_authority_public_key(self.manifest.auth.authority_public_key or "")
        return TokenAuthorizer(authority, self.manifest.slug, source.provide)

    def _register_for_credit(self, identity: Identity) -> None:
        """On an open run, an API key is optional: with one, the site issues this peer a token, which
        tells its leaderboard whom to credit. Peers of open runs check no tokens, so a refusal only
        costs the credit."""
        assert self.manifest is not None
        if not (self.options.token and self.manifest.auth.token_url):
            return
        try:
            self.username = TokenSource(self.manifest, self.options.token, identity).fetch().username
            logger.info("contributions to run %r are credited to %s", self.manifest.slug, self.username)
        except JoinError as e:
            logger.warning("training anonymously (no credit on the site's leaderboard): %s", e)

    def _build_model_and_optimizer(self) -> None:
        assert self.manifest is not None and self.recipe is not None and self.dht is not None
        torch.manual_seed(run_seed(self.manifest.slug))
        self.model = self.recipe.build_model().to(self.options.device)
        checkpoint = self.data_dir / "checkpoint.pt"
        if self.manifest.initial_state is not None and not checkpoint.exists():
            # a fresh peer of a seeded run: before the optimizer, so its state averager copies the seed
            load_initial_state(self.model, self.manifest.initial_state, self.data_dir)
            logger.info("loaded the run's initial state (sha256 %s)", self.manifest.initial_state.sha256)
        self.optimizer = build_optimizer(
            self.manifest,
            self.model,
            self.dht,
            client_mode=self.options.client_mode,
            batch_size=self.options.batch_size,
            offload_optimizer=self.options.offload_optimizer,
        )
        if checkpoint.exists():
            try:
                self.optimizer.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
                logger.info("resumed from %s at epoch %d", checkpoint, self.optimizer.local_epoch)
            except (RuntimeError, KeyError, ValueError) as e:
                logger.warning("ignoring an unreadable checkpoint %s: %s", checkpoint, e)
        self.optimizer.catch_up()

    def save_checkpoint(self) -> None:
        if self.optimizer is None:
            return
        target = self.data_dir / "checkpoint.pt"
        temporary = target.with_suffix(".tmp")
        torch.save(self.optimizer.state_dict(), temporary)
        temporary.replace(target)  # never a half-written checkpoint

    def publish_peer_record(self) -> None:
        assert self.dht is not None and self.manifest is not None
        from peer import __version__
        from peer.utils.loop import run_coroutine

        record = PeerRecord(
            version=__version__,
            maddrs=self.dht.get_visible_maddrs()[:8],
            reachability="client" if self.options.client_mode else "direct",
            device=self.options.device,
            username=self.username,
        )
        tracker = (
            self.optimizer.tracker
            if self.optimizer is not None
            else ProgressTracker(self.dht, self.manifest.slug, self.manifest.target_batch_size)
        )
        run_coroutine(tracker.apublish_peer(record))

    def train(self, on_step: Callable[[Status], None] | None = None) -> None:
        assert (
            self.recipe is not None
            and self.model is not None
            and self.optimizer is not None
            and self.dht is not None
        )
        batches = self.recipe.batches(
            self.corpus,
            self.options.batch_size,
            seed=int.from_bytes(hashlib.sha256(self.dht.peer_id.to_bytes()).digest()[:8], "big"),
        )
        self.publish_peer_record()
        last_peer_record = time.monotonic()
        while not self.stop_requested:
            if self.options.max_steps is not None and self.status.local_steps >= self.options.max_steps:
                break
            inputs, targets = next(batches)
            batch = (inputs.to(self.options.device), targets.to(self.options.device))
            loss = self._compute_gradients(batch)
            if loss is None:
                continue
            epoch_ended = self.optimizer.step(batch_size=len(inputs), loss=loss)
            self._update_status(loss, len(inputs))
            if epoch_ended and self.optimizer.local_epoch % 5 == 0:
                self.save_checkpoint()
            if time.monotonic() - last_peer_record > 20:
                self.publish_peer_record()
                last_peer_record = time.monotonic()
            if on_step is not None:
                on_step(self.status)

    def _compute_gradients(self, batch: tuple[torch.Tensor, torch.Tensor]) -> float | None:
        """Forward and backward on `batch`; the loss, or None when the swarm's experts could not serve
        it (the step is skipped and its partial gradients are dropped)."""
        assert self.recipe is not None and self.model is not None
        try:
            loss = self.recipe.loss(self.model, batch)
            loss.backward()
        except MoEError as e:
            self.model.zero_grad(set_to_none=True)
            if self.status.waiting is None:
                logger.warning("skipping steps until the experts answer: %s", e)
            self.status.waiting = f"experts unavailable: {e}"
            time.sleep(1.0)
            return None
        self.status.waiting = None
        return float(loss.item())

    def serve(self, on_tick: Callable[[Status], None] | None = None, *, tick: float = 0.5) -> None:
        """Host experts without training (`experts_only`) until `stop_requested`."""
        assert self.expert_host is not None
        self.publish_peer_record()
        last_peer_record = time.monotonic()
        while not self.stop_requested:
            time.sleep(tick)
            if time.monotonic() - last_peer_record > 20:
                self.publish_peer_record()
                last_peer_record = time.monotonic()
            self._update_expert_status()
            if on_tick is not None:
                on_tick(self.status)

    def _update_expert_status(self) -> None:
        if self.expert_host is not None:
            self.status.hosted_experts = self.expert_host.uids
            self.status.grid_size = len(self.expert_host.grid)
            self.status.expert_samples = self.expert_host.samples_served()

    def _update_status(self, loss: float, batch_size: int) -> None:
        assert self.optimizer is not None
        status, progress = self.status, self.optimizer.global_progress
        status.local_steps += 1
        status.my_samples += batch_size
        status.loss = loss
        status.epoch = self.optimizer.local_epoch
        self._update_expert_status()
        if progress is not None:
            status.peers = progress.num_peers
            status.swarm_samples_per_second = progress.samples_per_second
            status.eta = progress.eta_next_epoch

    def shutdown(self) -> None:
        try:
            self.save_checkpoint()
        finally:
            try:
                if self.expert_host is not None:
                    self.expert_host.shutdown()  # saves the experts' checkpoints
            finally:
                if self.optimizer is not None:
                    self.optimizer.shutdown()
                if self.dht is not None:
                    self.dht.shutdown()
