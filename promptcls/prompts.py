"""Soft prompts: the learnable token embeddings of a template, with an optional P-tuning encoder.

One module per template. Without an encoder the rows of ``embedding`` are the soft tokens
(prompt tuning, Lester et al. 2021). With ``"lstm"`` or ``"mlp"`` they pass through a small
re-parameterisation network (P-tuning, Liu et al. 2021). Unlike P-tuning's original encoder,
ours is residual with a zero-initialised output layer, so before training the prompt equals
its initialisation: ``[SOFT:it was]`` scores exactly like the hard words ``it was``.
"""

from __future__ import annotations

import torch
from torch import nn

from .template import PromptEncoderType, Template

__all__ = ["SoftPrompt", "soft_counts", "build_soft_prompt"]


class SoftPrompt(nn.Module):
    """``n`` learnable embeddings of width ``E``; ``forward()`` returns them, shape (n, E)."""

    def __init__(self, init: torch.Tensor, encoder: str | PromptEncoderType = "none", hidden_size: int | None = None):
        super().__init__()
        if init.ndim != 2:
            raise ValueError(f"init must be (n_tokens, embedding_dim), got shape {tuple(init.shape)}")
        self.encoder_type = PromptEncoderType(encoder)
        self.embedding = nn.Parameter(init.detach().clone().float())
        dim = init.shape[1]
        hidden = hidden_size or dim
        self.lstm: nn.LSTM | None = None
        self.mlp: nn.Sequential | None = None
        if self.encoder_type == PromptEncoderType.LSTM:
            self.lstm = nn.LSTM(dim, hidden // 2 or 1, num_layers=2, bidirectional=True, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(2 * (hidden // 2 or 1), hidden), nn.ReLU(), nn.Linear(hidden, dim))
        elif self.encoder_type == PromptEncoderType.MLP:
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        if self.mlp is not None:
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    @property
    def n_tokens(self) -> int:
        return self.embedding.shape[0]

    def forward(self) -> torch.Tensor:
        x = self.embedding  # (n, E)
        if self.mlp is None:
            return x
        h = self.lstm(x[None])[0][0] if self.lstm is not None else x  # (n, 2*hidden/2) or (n, E)
        return x + self.mlp(h)  # (n, E)


def soft_counts(template: Template, tokenizer) -> tuple[int, ...]:
    """Tokens per soft slot: ``[SOFT*n]`` is n, ``[SOFT:words]`` the words' tokens (as after a space)."""
    from .verbalizer import word_token_ids

    return tuple(s.count if s.count is not None else len(word_token_ids(tokenizer, s.init)) for s in template.soft_slots)


def build_soft_prompt(embeddings: nn.Module, tokenizer, template: Template, seed: int) -> SoftPrompt:
    """The template's soft prompt, started from input-embedding rows: those of ``[SOFT:words]``, or rows
    of ordinary (non-special) vocabulary tokens sampled with ``seed`` (Lester et al. 2021)."""
    from .verbalizer import word_token_ids

    table = embeddings.weight.detach()
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(table.shape[0]) if i not in special])
    rows = []
    for slot, count in zip(template.soft_slots, soft_counts(template, tokenizer)):
        if slot.init is not None:
            ids = torch.tensor(word_token_ids(tokenizer, slot.init))
        else:
            ids = ordinary[torch.randint(len(ordinary), (count,), generator=generator)]
        rows.append(table[ids.to(table.device)].float().cpu())
    return SoftPrompt(torch.cat(rows), template.prompt_encoder)
