"""`moe-char-transformer`: the `char-transformer` language model with remote experts as its
feed-forward layers (a built-in recipe).

Every block is pre-norm self-attention followed by a `RemoteMixtureOfExperts`: each token goes to
the `k_best` best live experts of the block's grid, found in the DHT, and the block adds their gated
mixture. The model itself holds the dense parameters (embeddings, attention, norms, the gates and
the head), which `peer.Optimizer` trains and averages like any model. The experts' parameters live
on the peers that host them and are updated there, by the hosting server's optimizer, on every
backward call.

Config (all optional):

    d_model (128), n_layers (2), n_heads (4), seq_len (64), dropout (0.0)   as char-transformer
    expert_prefix ("ffn")    block i's experts are `<expert_prefix><i>.<c1>.<c2>...`, e.g. ffn0.3.1
    grid ([4, 4])            the expert grid of every block (1 to 4 dimensions)
    k_best (2), k_min (1)    experts per token, and the fewest that must answer
    expert_lr (0.001)        Adam learning rate of the experts on their hosting servers
    forward_timeout (10), backward_timeout (20), timeout_after_k_min (1.0)   seconds

Building the model touches no network: its mixtures have no DHT until `attach_swarm` gives them
one, so the site can build it (to save checkpoints of the dense parameters) without a swarm.
"""

from __future__ import annotations

import math

import pydantic
import torch
from torch import nn

from peer.dht import DHT
from peer.moe import MoEConfig, RemoteMixtureOfExperts, Server, generate_uids_from_pattern
from peer.runs.char_transformer import VOCAB_SIZE, CharTransformerRecipe
from peer.runs.recipes import ExpertSpec, register_recipe

EXPERT_CLASS = "ffn"  # hidden -> 4 * hidden -> GELU -> hidden, the transformer's feed-forward layer
MAX_GRID_EXPERTS = 4096  # per block: the DHT keeps at most this many subkeys under one grid prefix


class MoECharTransformerConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    d_model: int = pydantic.Field(128, ge=8, le=4096)
    n_layers: int = pydantic.Field(2, ge=1, le=64)
    n_heads: int = pydantic.Field(4, ge=1, le=64)
    seq_len: int = pydantic.Field(64, ge=2, le=8192)
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)
    expert_prefix: str = pydantic.Field("ffn", pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    grid: tuple[int, ...] = pydantic.Field((4, 4), min_length=1, max_length=4)
    k_best: int = pydantic.Field(2, ge=1, le=64)
    k_min: int = pydantic.Field(1, ge=0, le=64)
    expert_lr: float = pydantic.Field(1e-3, gt=0.0, le=1.0)
    forward_timeout: float = pydantic.Field(10.0, gt=0.0, le=600.0)
    backward_timeout: float = pydantic.Field(20.0, gt=0.0, le=600.0)
    timeout_after_k_min: float = pydantic.Field(1.0, ge=0.0, le=600.0)

    @pydantic.model_validator(mode="after")
    def _consistent(self) -> MoECharTransformerConfig:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        if any(size < 1 for size in self.grid):
            raise ValueError("every grid dimension must be at least 1")
        experts = math.prod(self.grid)
        if experts > MAX_GRID_EXPERTS:
            raise ValueError(f"grid has {experts} experts per block; at most {MAX_GRID_EXPERTS}")
        if self.k_best > experts:
            raise ValueError(f"k_best ({self.k_best}) exceeds the {experts} experts of the grid")
        if self.k_min > self.k_best:
            raise ValueError(f"k_min ({self.k_min}) exceeds k_best ({self.k_best})")
        return self

    def layer_prefix(self, layer: int) -> str:
        return f"{self.expert_prefix}{layer}"


class MoEBlock(nn.Module):
    """Pre-norm causal self-attention, then a mixture of remote feed-forward experts per token."""

    def __init__(self, config: MoECharTransformerConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attention = nn.MultiheadAttention(
            config.d_model, config.n_heads, dropout=config.dropout, batch_first=True
        )
        self.norm2 = nn.LayerNorm(config.d_model)
        self.experts = RemoteMixtureOfExperts(
            in_features=config.d_model,
            grid_size=config.grid,
            dht=None,
            uid_prefix=config.layer_prefix(layer),
            k_best=config.k_best,
            k_min=config.k_min,
            config=MoEConfig(
                forward_timeout=config.forward_timeout,
                backward_timeout=config.backward_timeout,
                timeout_after_k_min=config.timeout_after_k_min,
            ),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(hidden)
        attended, _ = self.attention(x, x, x, attn_mask=mask, need_weights=False, is_causal=True)
        hidden = hidden + self.dropout(attended)
        tokens = self.norm2(hidden).reshape(-1, hidden.shape[-1])
        mixed, _answered = self.experts(tokens)
        return hidden + self.dropout(mixed.view_as(hidden))


class MoECharTransformer(nn.Module):
    def __init__(self, config: MoECharTransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.position = nn.Parameter(torch.zeros(config.seq_len, config.d_model))
        self.blocks = nn.ModuleList(MoEBlock(config, layer) for layer in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        hidden = self.embed(tokens) + self.position[:length]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        for block in self.blocks:
            hidden = block(hidden, mask)
        return self.head(self.norm(hidden))

    def attach(self, dht: DHT, expert_server: Server | None = None) -> None:
        for module in self.modules():
            if isinstance(module, RemoteMixtureOfExperts):
                module.attach(dht, expert_server)


@register_recipe
class MoECharTransformerRecipe(CharTransformerRecipe):
    """Batches and loss as `char-transformer`; the model's feed-forward layers are remote experts."""

    name = "moe-char-transformer"
    Config = MoECharTransformerConfig  # type: ignore[assignment]  # a config of its own, not a subclass

    def build_model(self) -> nn.Module:
        return MoECharTransformer(self.config)  # type: ignore[arg-type]

    def expert_uids(self) -> list[str]:
        config: MoECharTransformerConfig = self.config  # type: ignore[assignment]
        coords = ".".join(f"[0:{size}]" for size in config.grid)
        return [
            uid
            for layer in range(config.n_layers)
            for uid in generate_uids_from_pattern(f"{config.layer_prefix(layer)}.{coords}")
        ]

    def expert_spec(self) -> ExpertSpec:
        config: MoECharTransformerConfig = self.config  # type: ignore[assignment]
        return ExpertSpec(EXPERT_CLASS, config.d_model, config.expert_lr)

    def attach_swarm(self, model: nn.Module, dht: DHT, expert_server: Server | None = None) -> None:
        if not isinstance(model, MoECharTransformer):
            raise TypeError(f"model must be a MoECharTransformer, not {type(model).__name__}")
        model.attach(dht, expert_server)
