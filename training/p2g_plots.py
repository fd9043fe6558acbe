"""Attention heatmaps: which phonemes the decoder looked at for each letter it wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from exports.metadata import speller_symbols
from training.p2g_data import BOS, EOS, Pair, Vocab
from training.plots import plt


@torch.inference_mode()
def greedy_with_attention(model, vocab: Vocab, pair: Pair, max_len: int) -> tuple[str, np.ndarray]:
    model.eval()
    state = model.initial_state(torch.tensor([vocab.encode_phonemes(pair.phonemes)]))
    h, c = state.pop("h"), state.pop("c")
    token, letters, rows = torch.tensor([vocab.graphemes.index(BOS)]), [], []
    for _ in range(max_len):
        logits, h, c, weights = model.decoder.step(token, h, c, **state)
        token = logits.argmax(1)
        rows.append(weights[0].numpy())
        if token.item() == vocab.graphemes.index(EOS):
            break
        letters.append(vocab.graphemes[token.item()])
    return "".join(letters), np.stack(rows)


def attention_heatmaps(model, vocab: Vocab, pairs: list[Pair], max_len: int, path: Path) -> None:
    fig, axes = plt.subplots(2, (len(pairs) + 1) // 2, figsize=(3.2 * ((len(pairs) + 1) // 2), 6.4), squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
        spelled, weights = greedy_with_attention(model, vocab, pair, max_len)
        ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        read = speller_symbols(pair.phonemes, vocab.stress)  # the symbols as the model read them
        ax.set_xticks(range(len(read)), read, rotation=90, fontsize=8)
        ax.set_yticks(range(len(weights)), [*spelled, EOS], fontsize=8)
        ax.set_title(f"{pair.word} -> {spelled}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
