"""Seq2seq spellers: a BiLSTM encoder over phonemes, an LSTM decoder over characters, optional Bahdanau attention.

The decoder is written as one `step` so that training (teacher forcing), evaluation and the exported
ONNX decoder step run the same code. All decoding state is batch-first: h, c [B, H], memory [B, T, 2H].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = -1e9


@dataclass
class SpellerConfig:
    attention: bool = True
    embedding: int = 128
    hidden: int = 128
    dropout: float = 0.3
    encoder_layers: int = 1


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `length` steps and leave its padding in place: [B, T, D] -> [B, T, D]."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
    index = torch.where(steps < lengths.unsqueeze(1), lengths.unsqueeze(1) - 1 - steps, steps)
    return x.gather(1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))


class Encoder(nn.Module):
    """A BiLSTM of `encoder_layers` layers, each as two LSTMs; the backward one reads each sequence reversed
    within its own length, so results do not depend on padding (no packed sequences, which ONNX export handles
    poorly). Layers above the first read both directions of the layer below, with dropout between layers."""

    def __init__(self, n_phonemes: int, config: SpellerConfig):
        super().__init__()
        hidden = config.hidden
        self.embed = nn.Embedding(n_phonemes, config.embedding, padding_idx=0)
        self.forward_lstm = nn.LSTM(config.embedding, hidden, batch_first=True)
        self.backward_lstm = nn.LSTM(config.embedding, hidden, batch_first=True)
        self.upper = nn.ModuleList(  # layers 2 and up, each a (forward, backward) pair
            nn.ModuleList(nn.LSTM(2 * hidden, hidden, batch_first=True) for _ in range(2))
            for _ in range(config.encoder_layers - 1)
        )
        self.bridge_h = nn.Linear(2 * hidden, hidden)
        self.bridge_c = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(config.dropout)

    @staticmethod
    def bidirectional(forward_lstm, backward_lstm, x, lengths):
        forward_out, _ = forward_lstm(x)
        backward_out, _ = backward_lstm(reverse_within_length(x, lengths))
        return forward_out, reverse_within_length(backward_out, lengths)

    def forward(self, phonemes: torch.Tensor):
        """phonemes [B, T] (0 = padding) -> memory [B, T, 2H], mask [B, T] float, h0 and c0 [B, H]."""
        mask = phonemes != 0
        lengths = mask.sum(1)
        x = self.dropout(self.embed(phonemes))
        forward_out, backward_out = self.bidirectional(self.forward_lstm, self.backward_lstm, x, lengths)
        for forward_lstm, backward_lstm in self.upper:
            x = self.dropout(torch.cat([forward_out, backward_out], dim=2))
            forward_out, backward_out = self.bidirectional(forward_lstm, backward_lstm, x, lengths)
        last = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, forward_out.shape[2])
        final = torch.cat([forward_out.gather(1, last).squeeze(1), backward_out[:, 0]], dim=1)
        memory = torch.cat([forward_out, backward_out], dim=2) * mask.unsqueeze(2)
        return memory, mask.float(), torch.tanh(self.bridge_h(final)), torch.tanh(self.bridge_c(final))


class BahdanauAttention(nn.Module):
    """Additive attention: score_t = v . tanh(W_q query + W_k memory_t), padding masked out."""

    def __init__(self, query_size: int, memory_size: int, units: int):
        super().__init__()
        self.query = nn.Linear(query_size, units, bias=False)
        self.key = nn.Linear(memory_size, units)
        self.v = nn.Linear(units, 1, bias=False)

    def forward(self, query, keys, memory, mask):
        scores = self.v(torch.tanh(self.query(query).unsqueeze(1) + keys)).squeeze(2)
        weights = torch.softmax(scores.masked_fill(mask == 0, NEG_INF), dim=1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights


class Decoder(nn.Module):
    """An LSTM over characters; with attention, each step's context is fed to the LSTM and the output layer."""

    def __init__(self, n_graphemes: int, config: SpellerConfig):
        super().__init__()
        memory_size = 2 * config.hidden
        context = memory_size if config.attention else 0
        self.embed = nn.Embedding(n_graphemes, config.embedding, padding_idx=0)
        self.lstm = nn.LSTM(config.embedding + context, config.hidden, batch_first=True)
        self.attention = BahdanauAttention(config.hidden, memory_size, config.hidden) if config.attention else None
        self.out = nn.Linear(config.hidden + context, n_graphemes)
        self.dropout = nn.Dropout(config.dropout)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """The attention's key projection of the memory, computed once per word rather than per step."""
        return self.attention.key(memory)

    def advance(self, x, h, c, memory, keys, mask):
        """Read one embedded character x [B, E]: new h and c, the context [B, 2H] and weights [B, T] (or None)."""
        context = weights = None
        if self.attention is not None:
            context, weights = self.attention(h, keys, memory, mask)
            x = torch.cat([x, context], dim=1)
        _, (h, c) = self.lstm(x.unsqueeze(1), (h.unsqueeze(0), c.unsqueeze(0)))
        return h.squeeze(0), c.squeeze(0), context, weights

    def project(self, h, context):
        """Logits over characters from the decoder output (and the context it attended to)."""
        out = self.dropout(h)
        return self.out(out if context is None else torch.cat([out, context], dim=-1))

    def step(self, token, h, c, memory=None, keys=None, mask=None):
        """One character: token [B] -> logits [B, V], new h and c, attention weights [B, T] (or None)."""
        h, c, context, weights = self.advance(self.dropout(self.embed(token)), h, c, memory, keys, mask)
        return self.project(h, context), h, c, weights

    def teacher_forcing(self, inputs, h, c, memory=None, keys=None, mask=None):
        """The logits [B, L, V] of `step` applied along inputs [B, L], with fewer, larger operations."""
        x = self.dropout(self.embed(inputs))
        if self.attention is None:
            out, _ = self.lstm(x, (h.unsqueeze(0), c.unsqueeze(0)))
            return self.project(out, None)
        outputs, contexts = [], []
        for t in range(inputs.shape[1]):
            h, c, context, _ = self.advance(x[:, t], h, c, memory, keys, mask)
            outputs.append(h)
            contexts.append(context)
        return self.project(torch.stack(outputs, dim=1), torch.stack(contexts, dim=1))


class Speller(nn.Module):
    def __init__(self, n_phonemes: int, n_graphemes: int, config: SpellerConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(n_phonemes, config)
        self.decoder = Decoder(n_graphemes, config)

    def initial_state(self, phonemes: torch.Tensor) -> dict[str, torch.Tensor]:
        """The decoding state after the encoder, batch-first; the names are those of the ONNX graphs."""
        memory, mask, h, c = self.encoder(phonemes)
        if self.config.attention:
            return {"h": h, "c": c, "memory": memory, "keys": self.decoder.keys(memory), "mask": mask}
        return {"h": h, "c": c}

    def step(self, token, h, c, memory=None, keys=None, mask=None):
        """One character: token [B] -> logits [B, V] and the updated state (h and c)."""
        logits, h, c, _ = self.decoder.step(token, h, c, memory, keys, mask)
        return logits, {"h": h, "c": c}

    def forward(self, phonemes: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: targets [B, L] start with BOS; returns logits [B, L-1, V] for targets[:, 1:]."""
        return self.decoder.teacher_forcing(targets[:, :-1], **self.initial_state(phonemes))


def sequence_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    teacher: torch.Tensor | None = None,
    distill: float = 0.0,
) -> torch.Tensor:
    """The loss of teacher-forced logits [B, L-1, V] for targets [B, L] (BOS first, 0 = padding, masked):
    cross-entropy with the next character; with a teacher's log-probabilities [B, L-1, V], the share
    `distill` of it goes to KL(teacher || model) over the same positions instead (word-level distillation)."""
    gold = targets[:, 1:]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[2]), gold.reshape(-1), ignore_index=0, label_smoothing=label_smoothing
    )
    if teacher is None or distill == 0:
        return loss
    real = gold != 0
    soft = F.kl_div(F.log_softmax(logits[real], dim=1), teacher[real], log_target=True, reduction="batchmean")
    return (1 - distill) * loss + distill * soft
