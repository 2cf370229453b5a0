"""`char-transformer`: a small GPT-style language model over bytes (a built-in recipe).

Config (all optional): `d_model` (128), `n_layers` (2), `n_heads` (4), `seq_len` (64), `dropout` (0.0).
The vocabulary is the 256 byte values, so any text corpus works without a tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from peer.runs.recipes import Batch, Recipe, register_recipe

VOCAB_SIZE = 256


class CharTransformerConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    d_model: int = pydantic.Field(128, ge=8, le=4096)
    n_layers: int = pydantic.Field(2, ge=1, le=64)
    n_heads: int = pydantic.Field(4, ge=1, le=64)
    seq_len: int = pydantic.Field(64, ge=2, le=8192)
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)

    @pydantic.model_validator(mode="after")
    def _heads_divide(self) -> CharTransformerConfig:
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")
        return self


class CharTransformer(nn.Module):
    def __init__(self, config: CharTransformerConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.position = nn.Parameter(torch.zeros(config.seq_len, config.d_model))
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.n_heads,
            4 * config.d_model,
            config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, VOCAB_SIZE)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        hidden = self.embed(tokens) + self.position[:length]
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.blocks(hidden, mask=mask, is_causal=True)
        return self.head(self.norm(hidden))


@register_recipe
class CharTransformerRecipe(Recipe):
    name = "char-transformer"
    Config = CharTransformerConfig

    def build_model(self) -> nn.Module:
        return CharTransformer(self.config)  # type: ignore[arg-type]

    def batches(self, corpus: bytes, batch_size: int, seed: int) -> Iterator[Batch]:
        seq_len = self.config.seq_len  # type: ignore[attr-defined]
        if len(corpus) < seq_len + 2:
            raise ValueError(
                f"the corpus has {len(corpus)} bytes; char-transformer needs more than {seq_len + 1}"
            )
        data = torch.frombuffer(bytearray(corpus), dtype=torch.uint8).long()
        generator = torch.Generator().manual_seed(seed)
        offsets = torch.arange(seq_len + 1)
        while True:
            starts = torch.randint(0, len(data) - seq_len - 1, (batch_size, 1), generator=generator)
            windows = data[starts + offsets]
            yield windows[:, :-1], windows[:, 1:]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)
        return F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), targets.reshape(-1))
