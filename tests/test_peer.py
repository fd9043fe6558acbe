"""The peer speller of issue #11: the real Phonetisaurus pipeline on a tiny lexicon (requirements/peer.txt)."""

from __future__ import annotations

import json

import pytest

from training import peer_phonetisaurus
from training.p2g_compare import peer_speed
from training.p2g_data import cmudict_splits, spellings_by_key

pytest.importorskip(
    "phonetisaurus", reason="needs requirements/peer.txt (make peer-p2g installs it; x86_64 Linux wheel only)"
)


@pytest.mark.slow
def test_tiny_lexicon_trains_decodes_and_scores(tmp_path):
    splits = cmudict_splits()
    train, test = splits["train"][::400], splits["test"][::220]  # 302 and 31 pairs from the contract split
    config = peer_phonetisaurus.Config()
    result = peer_phonetisaurus.evaluate(train, test, spellings_by_key(splits), tmp_path, config)
    assert (tmp_path / "model.fst").stat().st_size > 0 and not result["trained"]["reused"]
    assert set(result["test"]) == {"cer", "wer", "homophone_wer", "nbest_wer@1", "nbest_wer@3", "nbest_wer@5"}
    assert all(0 <= value <= 1 for value in result["test"].values()), result["test"]
    t = result["test"]
    assert t["homophone_wer"] <= t["wer"] and t["nbest_wer@5"] <= t["nbest_wer@3"] <= t["nbest_wer@1"]
    assert result["checks"]["nbest_first_equals_1best"] == 1.0
    assert result["speed_1best"]["pronunciations"] == len({p.key for p in test})
    assert json.loads((tmp_path / "train.json").read_text())["settings"]["train_pairs"] == len(train)
    again = peer_phonetisaurus.evaluate(train, test, spellings_by_key(splits), tmp_path, config)
    assert again["trained"]["reused"] and again["test"] == result["test"]  # a rerun reuses the model, same scores
    assert peer_speed(test, tmp_path) > 0  # the comparison times the peer again, in its own run
    with pytest.raises(SystemExit, match="make peer-p2g"):
        peer_speed(test, tmp_path / "untrained")


@pytest.mark.slow
def test_stress_reads_the_digits(tmp_path):
    """With stress, the tool learns and spells stressed pronunciations; metrics still key homophones without stress."""
    splits = cmudict_splits()
    train, test = splits["train"][::400], splits["test"][::220]
    config = peer_phonetisaurus.Config(stress=True)
    result = peer_phonetisaurus.evaluate(train, test, spellings_by_key(splits), tmp_path, config)
    first = (tmp_path / "train.lexicon").read_text().splitlines()[0]
    assert first == f"{' '.join(train[0].phonemes)}\t{' '.join(train[0].word)}" and any(c.isdigit() for c in first)
    assert (tmp_path / "test.1best.input").read_text().splitlines() == list(
        dict.fromkeys(" ".join(p.phonemes) for p in test)
    )
    assert result["speed_1best"]["pronunciations"] == len({" ".join(p.phonemes) for p in test})
    assert all(0 <= value <= 1 for value in result["test"].values()) and result["checks"]["unspelled_1best"] == 0
    assert peer_speed(test, tmp_path, stress=True) > 0  # timed on the stressed pronunciations it was trained on
    assert (tmp_path / "compare.1best.input").read_text().splitlines() == list(
        dict.fromkeys(" ".join(p.phonemes) for p in test)
    )
    with pytest.raises(SystemExit, match="make peer-p2g-stress"):
        peer_speed(test, tmp_path / "untrained", stress=True)
