"""A small transformer text encoder over a fixed vocabulary, trained from scratch.

DPPP (research/methods.md §6) contrasts images with prompts through CLIP's frozen text
encoder. CLIP weights cannot be downloaded here, so the text side is this encoder trained
jointly with the image encoder on the synthetic generator's vocabulary (about 120 words).
Pseudo-words — embeddings produced from an image by a textual-inversion network — replace
slot tokens of a template before the transformer runs, as textual inversion does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class PromptTextEncoder(nn.Module):
    """Token ids B×L (0 = padding) → B×``out_dim`` (the first position's output, projected).

    ``word_dim`` is the width of token embeddings, and so of pseudo-words.
    """

    def __init__(self, vocab_size: int, *, word_dim: int = 128, depth: int = 2, heads: int = 4,
                 max_len: int = 48, out_dim: int = 128) -> None:
        super().__init__()
        if word_dim % heads:
            raise ValueError(f"text encoder width {word_dim} is not a multiple of its {heads} heads")
        self.word_dim = word_dim
        self.max_len = max_len
        self.tokens = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        self.start = nn.Parameter(torch.zeros(1, 1, word_dim))
        self.position = nn.Parameter(torch.randn(1, max_len + 1, word_dim) * 0.02)
        layer = nn.TransformerEncoderLayer(word_dim, heads, 2 * word_dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(word_dim)
        self.proj = nn.Linear(word_dim, out_dim, bias=False)

    def forward(self, ids: torch.Tensor, slots: Mapping[int, torch.Tensor] | None = None) -> torch.Tensor:
        """Encode ``ids``; ``slots`` maps a slot token id to B×word_dim pseudo-words that
        replace that token's embedding in each row."""
        b, length = ids.shape
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens exceeds the encoder's max_len={self.max_len}")
        x = self.tokens(ids)
        for token, words in (slots or {}).items():
            if words.shape != (b, self.word_dim):
                raise ValueError(f"pseudo-words for slot {token}: expected {(b, self.word_dim)}, "
                                 f"got {tuple(words.shape)}")
            x = torch.where((ids == token).unsqueeze(-1), words.to(x.dtype).unsqueeze(1), x)
        x = torch.cat([self.start.expand(b, -1, -1), x], dim=1) + self.position[:, : length + 1]
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=ids.device), ids == 0], dim=1)
        x = self.blocks(x, src_key_padding_mask=pad)
        return self.proj(self.norm(x[:, 0]))
