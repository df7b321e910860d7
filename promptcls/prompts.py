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

from .template import PromptEncoderType, SoftInit, Template

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


def build_soft_prompt(embeddings: nn.Module, tokenizer, template: Template, seed: int,
                      label_token_ids: list[list[int]] | None = None) -> SoftPrompt:
    """The template's soft prompt, each slot started as the template's ``soft_init`` says (Lester et al. 2021).

    ``[SOFT:words]``: the words' embedding rows. Other slots: ``"vocab"``, rows of ordinary (non-special)
    vocabulary tokens sampled with ``seed``; ``"uniform"``, uniform values with the table's standard
    deviation; ``"label-words"``, the rows of the label words' tokens (``label_token_ids``, each word's
    tokens in class order, repeated tokens once), then sampled rows when a slot is longer.
    """
    from .verbalizer import word_token_ids

    table = embeddings.weight.detach()
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(table.shape[0]) if i not in special])
    label_ids = list(dict.fromkeys(t for word in (label_token_ids or []) for t in word))
    if template.soft_init == SoftInit.LABEL_WORDS and not label_ids:
        raise ValueError("soft_init='label-words' starts soft tokens from the label words, but there are none here "
                         "(label-word search has no verbalizer yet): use soft_init='vocab'")
    rows = []
    for slot, count in zip(template.soft_slots, soft_counts(template, tokenizer)):
        if slot.init is not None:
            rows.append(table[torch.tensor(word_token_ids(tokenizer, slot.init)).to(table.device)].float().cpu())
        elif template.soft_init == SoftInit.UNIFORM:
            spread = float(table.float().std()) * 3**0.5  # uniform(-a, a) has standard deviation a / sqrt(3)
            rows.append((torch.rand(count, table.shape[1], generator=generator) * 2 - 1) * spread)
        else:
            ids = torch.tensor(label_ids[:count] if template.soft_init == SoftInit.LABEL_WORDS else [], dtype=torch.long)
            sampled = ordinary[torch.randint(len(ordinary), (count - len(ids),), generator=generator)]
            rows.append(table[torch.cat([ids, sampled]).to(table.device)].float().cpu())
    # on the embeddings' device: a part that runs the model while it attaches (a prefix's probe) or a caller that
    # never moves the prompt model (label-word search) meets it there
    return SoftPrompt(torch.cat(rows), template.prompt_encoder).to(table.device)
