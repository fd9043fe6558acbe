"""A transformer speller: pre-norm encoder over phonemes, pre-norm decoder over characters.

The decoder runs in two ways that compute the same thing: over a whole target at once (training, with a
causal mask) and one character at a time (decoding, the exported decoder step) with a key/value cache of
fixed size `max_output_length + 1`, written at each row's `position`. The fixed size keeps every tensor of
the ONNX step graph free of growing or empty dimensions; all decoding state is batch-first, so the shared
numpy decoding (exports/decoding.py) can drop and reorder rows of it like any other state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

NEG_INF = -1e9


@dataclass
class TransformerConfig:
    d_model: int = 192
    heads: int = 4
    ffn: int = 768
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    max_input_length: int = 64
    max_output_length: int = 48


def attend(q, k, v, mask, heads: int):
    """Multi-head scaled dot-product attention: q [B, Q, D], k and v [B, K, D], mask [B or 1, Q or 1, K]
    (1 = may attend) -> [B, Q, D]."""
    b, nq, d = q.shape
    split = lambda x: x.reshape(b, x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(2, 3) / math.sqrt(d // heads)
    scores = scores.masked_fill(mask.unsqueeze(1) == 0, NEG_INF)
    out = torch.softmax(scores, dim=-1) @ split(v)
    return out.transpose(1, 2).reshape(b, nq, d)


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, memory, mask):
        return self.out(attend(self.q(x), self.k(memory), self.v(memory), mask, self.heads))


class FeedForward(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d))


class EncoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attention = Attention(c.d_model, c.heads)
        self.ffn = FeedForward(c.d_model, c.ffn, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, mask):
        h = self.norm1(x)
        x = x + self.dropout(self.attention(h, h, mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attention = Attention(c.d_model, c.heads)
        self.cross_attention = Attention(c.d_model, c.heads)
        self.ffn = FeedForward(c.d_model, c.ffn, c.dropout)
        self.dropout = nn.Dropout(c.dropout)
        self.heads = c.heads

    def finish(self, x, cross_k, cross_v, memory_mask):
        """Cross-attention over the encoder's (projected) memory, then the feed-forward block."""
        q = self.cross_attention.q(self.norm2(x))
        x = x + self.dropout(self.cross_attention.out(attend(q, cross_k, cross_v, memory_mask, self.heads)))
        return x + self.dropout(self.ffn(self.norm3(x)))


class TransformerSpeller(nn.Module):
    """phonemes [B, T] (0 = padding) -> characters. Same interface as the LSTM Speller: `initial_state`,
    `step`, `loss`; `state_names` and `step_outputs` name the decoding state and what a step updates."""

    def __init__(self, n_phonemes: int, n_graphemes: int, config: TransformerConfig):
        super().__init__()
        self.config = c = config
        self.scale = math.sqrt(c.d_model)
        self.phoneme_embed = nn.Embedding(n_phonemes, c.d_model, padding_idx=0)
        self.phoneme_position = nn.Embedding(c.max_input_length, c.d_model)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.d_model)
        self.grapheme_embed = nn.Embedding(n_graphemes, c.d_model, padding_idx=0)
        self.grapheme_position = nn.Embedding(c.max_output_length + 1, c.d_model)
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.decoder_norm = nn.LayerNorm(c.d_model)
        self.out = nn.Linear(c.d_model, n_graphemes)
        self.dropout = nn.Dropout(c.dropout)

    state_names = ("cross_k", "cross_v", "mask", "self_k", "self_v", "position")
    step_updates = ("self_k", "self_v", "position")

    def encode(self, phonemes):
        """-> per-layer cross-attention keys and values [B, L, T, D] and the mask [B, T] (float)."""
        mask = (phonemes != 0).float()
        positions = torch.arange(phonemes.shape[1], device=phonemes.device)
        x = self.dropout(self.phoneme_embed(phonemes) * self.scale + self.phoneme_position(positions))
        for layer in self.encoder_layers:
            x = layer(x, mask.unsqueeze(1))
        memory = self.encoder_norm(x)
        cross_k = torch.stack([layer.cross_attention.k(memory) for layer in self.decoder_layers], dim=1)
        cross_v = torch.stack([layer.cross_attention.v(memory) for layer in self.decoder_layers], dim=1)
        return cross_k, cross_v, mask

    def initial_state(self, phonemes: torch.Tensor) -> dict[str, torch.Tensor]:
        cross_k, cross_v, mask = self.encode(phonemes)
        b, c = phonemes.shape[0], self.config
        empty = cross_k.new_zeros(1, 1, 1, 1).expand(b, c.decoder_layers, c.max_output_length + 1, c.d_model)
        position = (phonemes[:, 0] * 0).long()
        return {"cross_k": cross_k, "cross_v": cross_v, "mask": mask,
                "self_k": empty.contiguous(), "self_v": empty.contiguous(), "position": position}  # fmt: skip

    def step(self, token, cross_k, cross_v, mask, self_k, self_v, position):
        """One character for each row: token [B] at `position` [B] -> logits [B, V] and the updated state."""
        slots = torch.arange(self_k.shape[2], device=token.device)
        write = (slots.unsqueeze(0) == position.unsqueeze(1)).float().view(-1, 1, slots.shape[0], 1)  # [B,1,S,1]
        visible = (slots.unsqueeze(0) <= position.unsqueeze(1)).float().unsqueeze(1)  # [B, 1, S]
        x = self.grapheme_embed(token).unsqueeze(1) * self.scale + self.grapheme_position(position).unsqueeze(1)
        keys, values = [], []
        for i, layer in enumerate(self.decoder_layers):
            h = layer.norm1(x)
            k = self_k[:, i] * (1 - write[:, 0]) + layer.self_attention.k(h) * write[:, 0]
            v = self_v[:, i] * (1 - write[:, 0]) + layer.self_attention.v(h) * write[:, 0]
            keys.append(k)
            values.append(v)
            x = x + layer.self_attention.out(attend(layer.self_attention.q(h), k, v, visible, layer.heads))
            x = layer.finish(x, cross_k[:, i], cross_v[:, i], mask.unsqueeze(1))
        logits = self.out(self.decoder_norm(x)).squeeze(1)
        return logits, {"self_k": torch.stack(keys, 1), "self_v": torch.stack(values, 1), "position": position + 1}

    def forward(self, phonemes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: targets [B, L] start with BOS; returns logits [B, L-1, V] for targets[:, 1:]."""
        cross_k, cross_v, mask = self.encode(phonemes)
        inputs = targets[:, :-1]
        length = inputs.shape[1]
        positions = torch.arange(length, device=inputs.device)
        x = self.dropout(self.grapheme_embed(inputs) * self.scale + self.grapheme_position(positions))
        causal = torch.tril(torch.ones(length, length, device=inputs.device)).unsqueeze(0)
        for i, layer in enumerate(self.decoder_layers):
            h = layer.norm1(x)
            x = x + layer.dropout(layer.self_attention(h, h, causal))
            x = layer.finish(x, cross_k[:, i], cross_v[:, i], mask.unsqueeze(1))
        return self.out(self.decoder_norm(x))
