"""P2G data split, the two reference spellers, the shared decoding, metrics and the speller exports."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from exports import EXPORTS_DIR, decoding
from exports.metadata import speller_symbols, strip_stress
from exports.runtime import SpellerGraphs, speller_prefixes
from training.p2g_compare import EVALUATION_BATCH, batch_free, decode_split, without_stress_rates
from training.p2g_data import Vocab, batches, cmudict_splits, spellings_by_key, split_of, tsv_splits
from training.p2g_metrics import error_rates, wer_at_k
from training.p2g_model import Speller, SpellerConfig, sequence_loss
from training.p2g_teacher import teacher_log_probs
from training.p2g_transformer import TransformerConfig, TransformerSpeller
from training.train_p2g import Config, bf16_supported, config_args, parse_args, run_name, train_epoch

SMALL_TRANSFORMER = TransformerConfig(d_model=32, heads=4, ffn=64, encoder_layers=2, decoder_layers=2, dropout=0.1)


@pytest.fixture(scope="module")
def splits():
    return cmudict_splits()


@pytest.fixture(scope="module")
def vocab(splits):
    return Vocab.from_pairs([p for pairs in splits.values() for p in pairs])


def test_contract_split(splits):
    assert {s: len(p) for s, p in splits.items()} == {"train": 120_607, "valid": 6_697, "test": 6_669}
    keys = {s: {p.key for p in pairs} for s, pairs in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["valid"] and not keys["valid"] & keys["test"]
    assert all(split_of(k) == "test" for k in list(keys["test"])[:100])
    assert all(not any(c.isdigit() for c in p.key) for p in splits["test"])


def test_tsv_lexicon(tmp_path):
    for split, text in {
        "train": "K AE1 T\tcat\nD AO1 G\tDog\n",
        "valid": "K AE1 T\tkat\n",
        "test": "B AH1 S\tbus\n",
    }.items():
        (tmp_path / split).write_text(text)
    loaded = tsv_splits(tmp_path)
    assert loaded["train"][1].phonemes == ("D", "AO1", "G") and loaded["train"][1].word == "dog"
    assert loaded["train"][1].key == "D AO G"
    (tmp_path / "test").write_text("no tab here\n")
    with pytest.raises(ValueError, match="test:1"):
        tsv_splits(tmp_path)


def test_stress_vocabulary(splits, vocab):
    """A speller reads stress only when asked: then each vowel has its stressed forms and a bare one."""
    cat = next(p for p in splits["train"] if p.word == "cat")
    assert cat.phonemes == ("K", "AE1", "T") and cat.key == "K AE T"
    assert cat.without_stress().phonemes == ("K", "AE", "T")
    assert speller_symbols(["k", "ae1", "T"], stress=False) == ["K", "AE", "T"]
    assert speller_symbols(["k", "ae1", "T"], stress=True) == ["K", "AE1", "T"]
    assert not vocab.stress and not any(s[-1].isdigit() for s in vocab.phonemes)
    assert vocab.encode_phonemes(cat.phonemes) == vocab.encode_phonemes(("k", "ae", "t"))
    stressed = Vocab.from_pairs([p for pairs in splits.values() for p in pairs], stress=True)
    assert {"AE", "AE0", "AE1", "AE2", "K"} <= set(stressed.phonemes) and "K1" not in stressed.phonemes
    assert len({tuple(stressed.encode_phonemes(s)) for s in [("AE1",), ("AE0",), ("AE",)]}) == 3
    assert stressed.encode_phonemes(cat.phonemes) != stressed.encode_phonemes(cat.without_stress().phonemes)


def test_stress_dropout(splits):
    """With stress_dropout, about that share of the training words comes bare; without it, none."""
    pairs = splits["train"][:2000]
    stressed = Vocab.from_pairs(pairs, stress=True)
    vowels = {strip_stress(s) for s in stressed.phonemes if s[-1].isdigit()}

    def bare_share(dropout):
        words = [[stressed.phonemes[i] for i in row if i]
                 for _, ids, _ in batches(pairs, stressed, 64, torch.Generator().manual_seed(0), dropout)
                 for row in ids.tolist()]  # fmt: skip
        return np.mean([any(s in vowels for s in word) for word in words])

    assert bare_share(0.0) == 0
    assert 0.2 < bare_share(0.25) < 0.3


@pytest.mark.parametrize(("attention", "expected"), [(True, 663_070), (False, 474_910)])
def test_parameter_counts(vocab, attention, expected):
    model = Speller(len(vocab.phonemes), len(vocab.graphemes), SpellerConfig(attention=attention))
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(("attention", "layers"), [(True, 1), (False, 1), (True, 2)])
def test_padding_changes_nothing_and_teacher_forcing_equals_steps(vocab, attention, layers):
    torch.manual_seed(0)
    config = SpellerConfig(attention=attention, encoder_layers=layers)
    model = Speller(len(vocab.phonemes), len(vocab.graphemes), config).eval()
    short = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    with torch.no_grad():
        alone, together = model.initial_state(short), model.initial_state(padded)
        assert torch.allclose(alone["h"][0], together["h"][0], atol=1e-6)
        if attention:
            assert torch.allclose(alone["memory"][0], together["memory"][0, :3], atol=1e-6)
        targets = torch.tensor([[1, 5, 6, 7, 2], [1, 9, 8, 2, 0]])
        forced = model(padded, targets)
        state = model.initial_state(padded)
        h, c = state.pop("h"), state.pop("c")
        for t in range(targets.shape[1] - 1):
            logits, h, c, _ = model.decoder.step(targets[:, t], h, c, **state)
            assert torch.allclose(forced[:, t], logits, atol=1e-5)


def test_transformer_padding_changes_nothing_and_teacher_forcing_equals_cached_steps(vocab):
    """The decoder step with its key/value cache computes what the whole-sequence decoder computes."""
    torch.manual_seed(0)
    model = TransformerSpeller(len(vocab.phonemes), len(vocab.graphemes), SMALL_TRANSFORMER).eval()
    padded = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]])
    targets = torch.tensor([[1, 5, 6, 7, 2], [1, 9, 8, 2, 0]])
    with torch.no_grad():
        assert torch.allclose(model(padded[:1, :3], targets[:1]), model(padded, targets)[:1], atol=1e-5)
        forced = model(padded, targets)
        state = model.initial_state(padded)
        for t in range(targets.shape[1] - 1):
            logits, updates = model.step(targets[:, t], **state)
            state |= updates
            assert torch.allclose(forced[:, t], logits, atol=1e-5)
        assert state["position"].tolist() == [targets.shape[1] - 1] * 2


def test_transformer_export_has_dynamic_batch_and_lengths(tmp_path, vocab):
    """The export code's transformer graphs give the PyTorch log-probabilities at other batch sizes and
    lengths, over several steps of the cache."""
    from training.export_p2g import EncoderGraph, step_graph
    from training.onnx_export import export

    torch.manual_seed(0)
    model = TransformerSpeller(len(vocab.phonemes), len(vocab.graphemes), SMALL_TRANSFORMER).eval()
    example = torch.tensor([[5, 6, 7], [8, 9, 0]])
    state = model.initial_state(example)
    names = list(state)
    module, outputs, axes = step_graph(model, names)
    axes |= {"phonemes": {0: "batch", 1: "time"}, "token": {0: "batch"}}
    meta = {"kind": "speller", "name": "t", "part": "", "phonemes": [], "graphemes": [], "special_tokens": {},
            "stress": False, "max_input_length": 64, "max_output_length": 48, "params": 0, "metrics": {},
            "data_sha256": "", "train_command": ""}  # fmt: skip
    export(EncoderGraph(model, names), (example,), tmp_path / "p2g-t.encoder.onnx", ["phonemes"], names, axes, meta)
    export(module, (torch.tensor([1, 1]), *state.values()), tmp_path / "p2g-t.decoder.onnx", ["token", *names],
           outputs, axes, meta)  # fmt: skip
    graphs = SpellerGraphs(tmp_path / "p2g-t")
    for batch, length in ((1, 1), (3, 7), (2, 12)):
        phonemes = torch.randint(3, 40, (batch, length))
        phonemes[0, length // 2 + 1 :] = 0
        onnx_state = graphs.initial_state(phonemes.numpy())
        with torch.no_grad():
            torch_state = model.initial_state(phonemes)
        tokens = np.full(batch, 1, dtype=np.int64)
        for _ in range(4):
            onnx_log_probs, onnx_state = graphs.step(tokens, onnx_state)
            with torch.no_grad():
                logits, updates = model.step(torch.from_numpy(tokens), **torch_state)
            torch_state |= updates
            assert np.abs(onnx_log_probs - torch.log_softmax(logits, 1).numpy()).max() < 1e-4
            tokens = onnx_log_probs.argmax(1)


def test_padding_is_masked_in_the_loss(vocab):
    torch.manual_seed(0)
    model = Speller(len(vocab.phonemes), len(vocab.graphemes), SpellerConfig()).eval()
    phonemes, targets = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 5, 6, 2]])
    with torch.no_grad():
        alone = sequence_loss(model(phonemes, targets), targets)
        padded_targets = torch.tensor([[1, 5, 6, 2, 0, 0]])
        padded = sequence_loss(model(torch.tensor([[5, 6, 7, 0]]), padded_targets), padded_targets)
    assert torch.allclose(alone, padded, atol=1e-6)


def test_distillation_term_vanishes_when_the_model_matches_its_teacher_and_ignores_padding():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 4, 9), torch.tensor([[1, 5, 6, 2, 0], [1, 7, 2, 0, 0]])
    teacher = torch.log_softmax(logits, dim=2).clone()
    teacher[targets[:, 1:] == 0] = torch.log_softmax(torch.randn(9), dim=0)  # rows of padding: never read
    plain = sequence_loss(logits, targets, 0.1)
    assert torch.allclose(sequence_loss(logits, targets, 0.1, teacher, distill=0.5), plain / 2, atol=1e-6)
    other = torch.log_softmax(torch.randn(2, 4, 9), dim=2)
    assert sequence_loss(logits, targets, 0.1, other, distill=0.5) > plain / 2 + 1e-3


@pytest.fixture(scope="module")
def attention_teacher(splits, vocab):
    """The committed reference `attention` speller's teacher-forced log-probabilities on 300 training words."""
    pairs = splits["train"][:300]
    return pairs, teacher_log_probs("attention", pairs, vocab, threads=2, batch=64)


def test_teacher_log_probs_are_aligned_with_the_gold_characters(attention_teacher, vocab):
    """One row per character after BOS; the rows are distributions, and the teacher (which learnt these
    training words) puts most of its mass on the gold character of each row: misalignment would not."""
    pairs, soft = attention_teacher
    gold_probs = []
    for pair, rows in zip(pairs, soft):
        assert rows.shape == (len(pair.word) + 1, len(vocab.graphemes)) and rows.dtype == torch.float16
        assert torch.allclose(rows.float().exp().sum(1), torch.ones(len(rows)), atol=1e-2)
        gold = torch.tensor(vocab.encode_word(pair.word)[1:])
        gold_probs.append(rows.float().exp()[torch.arange(len(rows)), gold])
    assert torch.cat(gold_probs).mean() > 0.8


def test_teacher_must_exist_and_share_the_vocabularies(splits, vocab):
    with pytest.raises(ValueError, match="no speller export named 'nope'"):
        teacher_log_probs("nope", splits["train"][:2], vocab, threads=1)
    other = Vocab(vocab.phonemes, (*vocab.graphemes, "#"))
    with pytest.raises(ValueError, match="other vocabularies"):
        teacher_log_probs("attention", splits["train"][:2], other, threads=1)


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no oneDNN bfloat16 (AVX-512 BF16 or AMX) for LSTMs")
def test_distilled_bf16_training_learns_and_keeps_fp32_weights(attention_teacher, vocab):
    pairs, soft = attention_teacher
    config = Config(hidden=64, embedding=64, batch_size=32, teacher="attention", distill=0.5, bf16=True)
    torch.manual_seed(0)
    model = Speller(len(vocab.phonemes), len(vocab.graphemes), SpellerConfig(embedding=64, hidden=64))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
    generator = torch.Generator().manual_seed(0)
    losses = [train_epoch(model, optimizer, None, pairs, vocab, config, generator, "test", soft) for _ in range(3)]
    assert losses[2] < losses[0] and all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.skipif(bf16_supported(), reason="this CPU runs bfloat16 LSTMs: nothing to refuse")
def test_bf16_training_is_refused_by_name_where_the_cpu_cannot_run_it(tmp_path):
    from training import train_p2g

    with pytest.raises(SystemExit, match=r"--bf16: this CPU .* drop --bf16"):
        train_p2g.main(["--bf16", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])


# A toy model for the decoding tests: the next token's log-probabilities depend on the step and a per-row offset.
VOCAB, BOS, EOS = 7, 1, 2


def toy_step(tokens, state):
    t = state["t"]
    logits = np.sin(np.arange(VOCAB)[None, :] * (t[:, None] + 1) + state["offset"][:, None]) * 3
    logits[:, [0, BOS]] = -1e9
    logits[:, EOS] += t[:, None][:, 0] - 3
    log_probs = (
        logits
        - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
        - logits.max(1, keepdims=True)
    )
    return log_probs, {**state, "t": t + 1}


def toy_state(rows=5):
    return {"t": np.zeros(rows), "offset": np.linspace(0, 2, rows)}


def test_greedy_is_argmax_at_every_step():
    sequences, scores = decoding.greedy(toy_step, toy_state(), BOS, EOS, max_len=20)
    for row, sequence in enumerate(sequences):
        state = {k: v[row : row + 1] for k, v in toy_state().items()}
        token, expected, total = np.array([BOS]), [], 0.0
        for _ in range(20):
            log_probs, state = toy_step(token, state)
            token = log_probs.argmax(1)
            total += log_probs[0, token[0]]
            if token[0] == EOS:
                break
            expected.append(int(token[0]))
        assert sequence == expected
        assert scores[row] == pytest.approx(total)


def test_length_cap():
    sequences, _ = decoding.greedy(toy_step, toy_state(), BOS, EOS, max_len=2)
    assert all(len(s) <= 2 for s in sequences)


def test_nucleus_with_tiny_top_p_is_greedy():
    greedy, _ = decoding.greedy(toy_step, toy_state(), BOS, EOS, 20)
    samples, _ = decoding.nucleus(toy_step, toy_state(), BOS, EOS, 20, n=4, top_p=1e-9, seed=3)
    assert all(all(s == g for s in word) for word, g in zip(samples, greedy))


def test_nucleus_same_seed_same_samples_and_shapes():
    a, score_a = decoding.nucleus(toy_step, toy_state(), BOS, EOS, 20, n=6, top_p=0.9, temperature=1.5, seed=11)
    b, score_b = decoding.nucleus(toy_step, toy_state(), BOS, EOS, 20, n=6, top_p=0.9, temperature=1.5, seed=11)
    c, _ = decoding.nucleus(toy_step, toy_state(), BOS, EOS, 20, n=6, top_p=0.9, temperature=1.5, seed=12)
    assert a == b and np.array_equal(score_a, score_b) and a != c
    assert len(a) == 5 and all(len(word) == 6 for word in a) and score_a.shape == (5, 6)


@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.75, 0.9, 0.99])
def test_nucleus_keeps_the_smallest_set_reaching_top_p(top_p):
    probs = np.array([0.05, 0.4, 0.1, 0.25, 0.2])
    order = np.argsort(-probs)
    size = int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)  # smallest k with mass >= top_p
    expected = set(order[:size].tolist())
    rng = np.random.default_rng(0)
    drawn = nucleus_draws = decoding.nucleus_sample(np.log(np.tile(probs, (4000, 1))), top_p, 1.0, rng)
    assert set(np.unique(nucleus_draws).tolist()) == expected
    kept = probs[order[:size]] / probs[order[:size]].sum()
    frequencies = np.array([(drawn == token).mean() for token in order[:size]])
    assert np.abs(frequencies - kept).max() < 0.03


def test_metrics():
    spellings = {"K AE T": {"cat", "kat"}, "D AO G": {"dog"}}
    rates = error_rates(["cat", "dog"], ["kat", "dog"], ["K AE T", "D AO G"], spellings)
    assert rates["wer"] == 0.5 and rates["homophone_wer"] == 0.0 and rates["cer"] == pytest.approx(1 / 6)
    assert wer_at_k(["cat", "dog"], [["kat", "cat"], ["dig", "dug"]], 1) == 1.0
    assert wer_at_k(["cat", "dog"], [["kat", "cat"], ["dig", "dug"]], 2) == 0.5


@pytest.mark.parametrize("layers", [1, 2])
def test_export_has_dynamic_batch_and_lengths(tmp_path, vocab, layers):
    """A fresh model exported to ONNX gives the PyTorch log-probabilities at other batch sizes and lengths."""
    from training.export_p2g import DecoderStepGraph, EncoderGraph
    from training.onnx_export import export

    torch.manual_seed(0)
    model = Speller(len(vocab.phonemes), len(vocab.graphemes), SpellerConfig(encoder_layers=layers)).eval()
    meta = {"kind": "speller", "name": "t", "part": "", "phonemes": [], "graphemes": [], "special_tokens": {},
            "stress": False, "max_input_length": 64, "max_output_length": 48, "params": 0, "metrics": {},
            "data_sha256": "", "train_command": ""}  # fmt: skip
    example = torch.tensor([[5, 6, 7], [8, 9, 0]])
    state = model.initial_state(example)
    names = list(state)
    axes = {n: {0: "batch", 1: "time"} for n in ("phonemes", "memory", "keys", "mask", "attention")}
    axes |= {n: {0: "batch"} for n in ("h", "c", "token", "log_probs", "h_next", "c_next")}
    export(EncoderGraph(model, names), (example,), tmp_path / "p2g-t.encoder.onnx", ["phonemes"], names, axes, meta)
    export(DecoderStepGraph(model), (torch.tensor([1, 1]), *state.values()), tmp_path / "p2g-t.decoder.onnx",
           ["token", *names], ["log_probs", "h_next", "c_next", "attention"], axes, meta)  # fmt: skip
    graphs = SpellerGraphs(tmp_path / "p2g-t")
    for batch, length in ((1, 1), (3, 7), (2, 12)):
        phonemes = torch.randint(3, 40, (batch, length))
        phonemes[0, length // 2 + 1 :] = 0 if length > 2 else phonemes[0, length // 2 + 1 :]
        onnx_state = graphs.initial_state(phonemes.numpy())
        tokens = np.full(batch, 1, dtype=np.int64)
        onnx_log_probs, _ = graphs.step(tokens, onnx_state)
        with torch.no_grad():
            torch_state = model.initial_state(phonemes)
            logits, *_ = model.decoder.step(torch.from_numpy(tokens), **torch_state)
        assert np.abs(onnx_log_probs - torch.log_softmax(logits, 1).numpy()).max() < 1e-4


def test_parity_forgives_a_spelling_only_where_it_parts_at_a_tie(splits, vocab):
    """export_p2g's parity: two spellings that part where the model gives both letters the same log-probability
    (to TIE_TOLERANCE) pass; parting where one letter is clearly likelier does not."""
    from training.export_p2g import parts_at_a_tie

    torch.manual_seed(0)
    model = Speller(len(vocab.phonemes), len(vocab.graphemes), SpellerConfig()).eval()
    pair = splits["test"][0]
    with torch.no_grad():
        model.decoder.out.weight.zero_()
        model.decoder.out.bias.zero_()  # every letter equally likely at every step: each parting is a tie
        assert parts_at_a_tie(model, vocab, pair, "ab", "ac") and parts_at_a_tie(model, vocab, pair, "ab", "abc")
        model.decoder.out.bias[vocab.graphemes.index("b")] = 1e-3  # 'b' likelier by 1e-3 in log-probability
        assert not parts_at_a_tie(model, vocab, pair, "ab", "ac")
        assert parts_at_a_tie(model, vocab, pair, "ba", "bc")  # parting after the 'b', where all is even again


ROOT = Path(__file__).resolve().parents[1]
COMMITTED_SPELLERS = list(speller_prefixes(EXPORTS_DIR))
STRESS_SPELLERS = [name for name in COMMITTED_SPELLERS if SpellerGraphs(EXPORTS_DIR / f"p2g-{name}").metadata["stress"]]


def test_reference_spellers_are_committed():
    assert {"attention", "vanilla"} <= set(COMMITTED_SPELLERS), COMMITTED_SPELLERS


def test_a_run_is_named_by_its_model_unless_given_a_name():
    reference, _ = parse_args(["--model", "vanilla"])
    assert run_name(reference) == "vanilla" and not any(a.startswith("--name") for a in config_args(reference))
    named, _ = parse_args(["--model", "attention", "--name", "attention-large", "--hidden", "256"])
    assert run_name(named) == "attention-large" and "--name=attention-large" in config_args(named)
    assert parse_args(config_args(named))[0] == named  # the recorded train command rebuilds the same config
    distilled, _ = parse_args(["--teacher", "attention-ensemble", "--distill", "0.5", "--bf16", "--epochs", "3"])
    assert distilled.bf16 and distilled.teacher == "attention-ensemble" and not parse_args([])[0].bf16
    assert parse_args(config_args(distilled))[0] == distilled


def greedy_test_decoding(name: str, pairs) -> tuple[list[str], dict]:
    """A speller's greedy spellings of pairs through ONNX Runtime, and its metadata: batched by length where the
    batch does not change a spelling (`batch_free`), else in the chunks the metrics were computed in."""
    graphs = SpellerGraphs(EXPORTS_DIR / f"p2g-{name}", threads=1)
    found, _ = decode_split(graphs, pairs, "greedy", EVALUATION_BATCH, by_length=batch_free(graphs.metadata))
    return [options[0] for options in found], graphs.metadata


def stress_free_rates(name: str, splits, spellings) -> tuple[dict, dict]:
    """A speller's greedy rates on the test split given without stress digits, and its metadata."""
    graphs = SpellerGraphs(EXPORTS_DIR / f"p2g-{name}", threads=1)
    return without_stress_rates(graphs, splits, spellings)["test_without_stress"], graphs.metadata


@pytest.fixture(scope="module")
def committed_decodings(splits):
    """The whole test split decoded by every committed speller (and by those reading stress digits, without
    them), two spellers at a time, one process and one ONNX Runtime thread each: on 2 cores that is faster
    than one process on 2 threads, whose intra-op pool gains little on an LSTM step. Tests take theirs in the
    order submitted, each as soon as it is done."""
    spellings = spellings_by_key(splits)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        yield {
            "test": {name: pool.submit(greedy_test_decoding, name, splits["test"]) for name in COMMITTED_SPELLERS},
            "without_stress": {
                name: pool.submit(stress_free_rates, name, splits, spellings) for name in STRESS_SPELLERS
            },
        }


@pytest.mark.parametrize("name", COMMITTED_SPELLERS)
def test_committed_speller_reproduces_its_test_metrics(name, splits, committed_decodings):
    """Greedy decoding of the whole test split through ONNX Runtime gives the CER and WER in the metadata."""
    pairs, (words, meta) = splits["test"], committed_decodings["test"][name].result()
    # a word whose two runtimes part at a tie (export_p2g's parity lists them) has PyTorch's spelling in the metrics
    parity = json.loads((ROOT / "results" / "p2g" / "parity.json").read_text()).get(name, {})
    ties = {tie["phonemes"]: tie for tie in parity.get("parting_at_a_tie", [])}
    for i, pair in enumerate(pairs):
        if (tie := ties.get(" ".join(pair.phonemes))) is not None:
            assert words[i] == tie["onnx_runtime"], pair
            words[i] = tie["pytorch"]
    rates = error_rates([p.word for p in pairs], words, [p.key for p in pairs], spellings_by_key(splits))
    for key in ("cer", "wer", "homophone_wer"):
        assert rates[key] == pytest.approx(meta["metrics"]["test"][key], abs=int8_tolerance(meta, key)), key


def int8_tolerance(meta: dict, key: str) -> float:
    """How far a metric may move from the one recorded: nothing for float graphs; for an int8 copy, what ONNX
    Runtime's int8 kernels change from one CPU to another (measured on one with AVX2 alone, no VNNI, whose u8s8
    products may saturate: CER within 0.0007, WER and homophone-aware WER within 0.004 of those recorded)."""
    if "quantized_from" not in meta:
        return 1e-9
    return 0.002 if key == "cer" else 0.008


@pytest.mark.parametrize("name", STRESS_SPELLERS)
def test_committed_stress_speller_reproduces_its_rates_without_stress_digits(name, committed_decodings):
    """A speller reading stress digits records its test rates given input without them (results/p2g/NAME/), and its
    export reproduces them: exactly where ONNX Runtime computed them (ensembles, int8 copies), within a few words of
    6,669 where PyTorch did (training), whose parity was checked on input with the digits only."""
    recorded = json.loads((ROOT / "results" / "p2g" / name / "metrics.json").read_text())
    rates, meta = committed_decodings["without_stress"][name].result()
    for key in ("cer", "wer", "homophone_wer"):
        tolerance = 1e-3 if "train_seconds" in recorded else int8_tolerance(meta, key)
        assert rates[key] == pytest.approx(recorded["test_without_stress"][key], abs=tolerance), key
    assert rates["cer"] > meta["metrics"]["test"]["cer"]  # stress is information


def test_reference_targets_reached():
    """Greedy attention: CER <= 0.16, WER <= 0.60; vanilla clearly worse; WER@3 below greedy WER."""
    attention = SpellerGraphs(EXPORTS_DIR / "p2g-attention").metadata["metrics"]["test"]
    vanilla = SpellerGraphs(EXPORTS_DIR / "p2g-vanilla").metadata["metrics"]["test"]
    assert attention["cer"] <= 0.16 and attention["wer"] <= 0.60, attention
    assert vanilla["cer"] > attention["cer"] + 0.02 and vanilla["wer"] > attention["wer"] + 0.02, vanilla
    assert attention["wer@3"] < attention["wer"], attention


def all_sequences(max_len):
    """Every sequence of the toy model up to max_len tokens (ended by EOS or the cap) with its log-probability."""
    found = []

    def grow(prefix, score):
        state = {"t": np.array([float(len(prefix))]), "offset": np.array([0.0])}
        log_probs, _ = toy_step(np.array([BOS]), state)
        for token in range(VOCAB):
            if token in (0, BOS):
                continue
            if token == EOS:
                found.append((tuple(prefix), score + log_probs[0, token], True))
            elif len(prefix) + 1 == max_len:
                found.append((tuple([*prefix, token]), score + log_probs[0, token], False))
            else:
                grow([*prefix, token], score + log_probs[0, token])

    grow([], 0.0)
    return found


def test_beam_of_one_is_greedy():
    greedy, greedy_scores = decoding.greedy(toy_step, toy_state(), BOS, EOS, 20)
    beams, beam_scores = decoding.beam_search(toy_step, toy_state(), BOS, EOS, 20, beam_size=1, alpha=0)
    assert [b[0] for b in beams] == greedy
    assert np.allclose([s[0] for s in beam_scores], greedy_scores)


def test_wide_beam_finds_the_most_probable_spellings():
    """With a beam as wide as the search space, the n-best list is the exact n most probable sequences (those
    cut by the length cap compete as they are)."""
    exact = sorted(all_sequences(4), key=lambda s: -s[1])[:5]
    state = {"t": np.zeros(1), "offset": np.zeros(1)}
    beams, scores = decoding.beam_search(toy_step, state, BOS, EOS, 4, beam_size=200, n_best=5, alpha=0)
    assert [tuple(b) for b in beams[0]] == [s[0] for s in exact]
    assert np.allclose(scores[0], [s[1] for s in exact])


def test_beam_n_best_are_distinct_and_ranked():
    beams, scores = decoding.beam_search(toy_step, toy_state(), BOS, EOS, 12, beam_size=6, n_best=4, alpha=0.6)
    for word, word_scores in zip(beams, scores):
        assert len(word) == 4 and len({tuple(s) for s in word}) == 4
        normalized = [decoding.length_normalized(s, len(b) + 1, 0.6) for s, b in zip(word_scores, word)]
        assert normalized == sorted(normalized, reverse=True)


def test_beam_reorders_only_the_state_a_step_changed(splits):
    """Beam search leaves in place the tensors a step passed through (the encoder's memory, the same in every
    hypothesis of a word): the same n-best lists and scores as when every tensor comes back as a new copy."""
    graphs = SpellerGraphs(EXPORTS_DIR / "p2g-attention", threads=2)
    meta = graphs.metadata
    ids = graphs.phoneme_ids([p.phonemes for p in splits["valid"][:48]])

    def copying_step(tokens, state):
        log_probs, stepped = graphs.step(tokens, state)
        return log_probs, {name: value.copy() for name, value in stepped.items()}

    bos, eos, cap = meta["special_tokens"]["bos"], meta["special_tokens"]["eos"], meta["max_output_length"]
    runs = [decoding.beam_search(step, graphs.initial_state(ids), bos, eos, cap, 8, 3)
            for step in (graphs.step, copying_step)]  # fmt: skip
    assert runs[0][0] == runs[1][0] and np.allclose(runs[0][1], runs[1][1])
    assert len({tuple(w[0]) for w in runs[0][0]}) > 20  # real, varied spellings


def test_an_ensemble_export_is_the_mean_probability_of_its_members(tmp_path, splits):
    """The ensemble graphs of two committed spellers against the same ensemble computed in numpy from the members'
    own graphs: equal log-probabilities at several batch sizes and lengths, and the same greedy spellings."""
    from training.ensemble_p2g import build

    members = [SpellerGraphs(EXPORTS_DIR / f"p2g-{name}") for name in ("attention", "vanilla")]
    ensemble = build("pair", [EXPORTS_DIR / "p2g-attention", EXPORTS_DIR / "p2g-vanilla"], tmp_path / "p2g-pair", "")
    meta = ensemble.metadata
    assert meta["params"] == sum(m.metadata["params"] for m in members)
    assert meta["config"]["members"] == ["attention", "vanilla"]

    def initial_state(ids):
        return {f"m{i}_{k}": v for i, m in enumerate(members) for k, v in m.initial_state(ids).items()}

    def step(tokens, state):
        outputs = [m.step(tokens, {k[3:]: v for k, v in state.items() if k.startswith(f"m{i}_")})
                   for i, m in enumerate(members)]  # fmt: skip
        log_probs = np.logaddexp(outputs[0][0], outputs[1][0]) - np.log(2)
        return log_probs, {f"m{i}_{k}": v for i, (_, s) in enumerate(outputs) for k, v in s.items()}

    rng = np.random.default_rng(0)
    for batch, length in ((1, 1), (3, 7), (2, 12)):
        ids = rng.integers(1, len(meta["phonemes"]), (batch, length))
        ids[0, length // 2 + 1 :] = 0
        tokens = np.full(batch, meta["special_tokens"]["bos"], dtype=np.int64)
        graph_log_probs, graph_state = ensemble.step(tokens, ensemble.initial_state(ids))
        numpy_log_probs, numpy_state = step(tokens, initial_state(ids))
        assert np.abs(graph_log_probs - numpy_log_probs).max() < 1e-5
        assert np.allclose(np.exp(graph_log_probs).sum(1), 1, atol=1e-5)
        assert all(np.abs(graph_state[k] - numpy_state[k]).max() < 1e-5 for k in numpy_state)
    ids = members[0].phoneme_ids([p.phonemes for p in splits["valid"][:200]])
    bos, eos, cap = meta["special_tokens"]["bos"], meta["special_tokens"]["eos"], meta["max_output_length"]
    from_graphs, _ = decoding.greedy(ensemble.step, ensemble.initial_state(ids), bos, eos, cap)
    from_numpy, _ = decoding.greedy(step, initial_state(ids), bos, eos, cap)
    assert from_graphs == from_numpy


def test_an_ensemble_refuses_members_of_other_vocabularies(tmp_path):
    import onnx

    from training.ensemble_p2g import build

    for part in ("encoder", "decoder"):
        model = onnx.load(str(EXPORTS_DIR / f"p2g-vanilla.{part}.onnx"))
        entry = next(e for e in model.metadata_props if e.key == "graphemes")
        entry.value = entry.value.replace('"z"', '"Z"')
        onnx.save(model, str(tmp_path / f"p2g-other.{part}.onnx"))
    with pytest.raises(ValueError, match="graphemes"):
        build("pair", [EXPORTS_DIR / "p2g-attention", tmp_path / "p2g-other"], tmp_path / "p2g-pair", "")


def test_results_table_shows_an_ensemble_by_its_members():
    from training.p2g_report import table

    test = {"cer": 0.1, "wer": 0.4, "homophone_wer": 0.3, "wer@1": 0.5, "wer@3": 0.35, "wer@5": 0.3}
    trained = {"name": "a", "params": 10, "test": test, "best_epoch": 3, "config": {"epochs": 5}, "train_seconds": 600}
    ensemble = {"name": "ab", "params": 20, "test": test, "members": ["a", "b"]}
    rows = table([trained, ensemble]).splitlines()
    assert rows[2].endswith("| 3/5 | 10 min |") and rows[4].endswith("| - | ensemble of a + b |"), rows
    bare = {"cer": 0.2, "wer": 0.6, "homophone_wer": 0.5}
    rows = table([trained | {"test_without_stress": bare}]).splitlines()
    assert len(rows) == 5
    assert rows[4].startswith("| a | | greedy, input without stress digits | 0.2000 | 0.6000 | 0.5000 |")


def test_length_batches_cover_every_word_once_shortest_first():
    lengths = [5, 1, 3, 3, 9, 2, 7]
    batches = decoding.length_batches(lengths, 3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert [lengths[i] for i in np.concatenate(batches)] == sorted(lengths)
    assert decoding.length_batches([], 4) == []


def test_comparison_decodes_in_length_batches_and_answers_in_order(splits):
    """The comparison sorts words by length for speed; each answer still belongs to its own word."""
    from training.p2g_compare import decode_split

    graphs = SpellerGraphs(EXPORTS_DIR / "p2g-attention", threads=2)
    pairs = splits["test"][:300]
    sorted_found, _ = decode_split(graphs, pairs, "greedy", batch=64)
    one_batch, _ = decode_split(graphs, pairs, "greedy", batch=len(pairs))
    assert sorted_found == one_batch
    singles = [decode_split(graphs, [pair], "greedy", batch=1)[0][0] for pair in pairs[:20]]
    assert singles == sorted_found[:20]
    beams, _ = decode_split(graphs, pairs[:40], "beam", batch=16, beam=6)
    assert all(1 <= len(options) <= 5 and len(set(options)) == len(options) for options in beams)
    assert sum(pair.word in options for pair, options in zip(pairs[:40], beams)) >= 20


def test_int8_copy_keeps_the_contract_and_spells_like_its_source(tmp_path, splits):
    """training.quantize_p2g on the reference attention export: int8 weights, the source's metadata renamed,
    graphs under half the size that still spell nearly every word as the source does."""
    import onnx

    from training.p2g_compare import decode_split
    from training.quantize_p2g import quantize

    source, out = EXPORTS_DIR / "p2g-attention", tmp_path / "p2g-attention-int8"
    metadata = quantize(source, out, "python -m training.quantize_p2g attention")
    assert metadata["name"] == "attention-int8" and metadata["quantized_from"]["name"] == "attention"
    for part in ("encoder", "decoder"):
        path = out.with_name(f"{out.name}.{part}.onnx")
        types = {init.data_type for init in onnx.load(str(path)).graph.initializer}
        assert onnx.TensorProto.INT8 in types, part
        assert path.stat().st_size < source.with_name(f"{source.name}.{part}.onnx").stat().st_size / 2, part
    copy, original = SpellerGraphs(out, threads=2), SpellerGraphs(source, threads=2)
    assert copy.metadata["name"] == "attention-int8" and copy.metadata["phonemes"] == original.metadata["phonemes"]
    pairs = splits["test"][:400]
    same = sum(a == b for a, b in zip(decode_split(copy, pairs, "greedy", 128)[0],
                                      decode_split(original, pairs, "greedy", 128)[0]))  # fmt: skip
    # measured: 383 of 400 on a CPU with AVX-512 VNNI, 366 on AVX2 alone (the ensemble's copy: 6,628 of 6,669)
    assert same >= 0.88 * len(pairs), same


def test_ensemble_refuses_missing_or_too_few_candidates_by_name(tmp_path):
    from training import ensemble_p2g

    with pytest.raises(SystemExit, match=r"not in .*: nosuch \(export them first"):
        ensemble_p2g.main(["--name", "x", "--candidates", "attention", "nosuch", "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="needs two or more candidates"):
        ensemble_p2g.main(["--name", "x", "--candidates", "attention", "attention", "--results", str(tmp_path)])


def test_comparison_in_parallel_measures_what_it_measures_alone_in_the_given_order(splits):
    """`p2g_compare --jobs 2` spreads spellers over processes (largest first); the rows come back in the
    order asked for, with the same spellings scored as one process scores them."""
    from training.p2g_compare import measure_all

    prefixes = [EXPORTS_DIR / "p2g-vanilla", EXPORTS_DIR / "p2g-attention"]  # the larger one second
    pairs, spellings = splits["test"][:150], spellings_by_key(splits)
    alone, parallel = (measure_all(prefixes, pairs, spellings, batch=64, jobs=jobs) for jobs in (1, 2))
    assert [(r["system"], r["decoding"]) for r in parallel] == [(r["system"], r["decoding"]) for r in alone]
    assert [r["system"] for r in parallel][::3] == ["vanilla", "attention"]
    quality = lambda row: {k: v for k, v in row.items() if k != "words_per_second"}  # noqa: E731
    assert [quality(r) for r in parallel] == [quality(r) for r in alone]
    assert all(r["words_per_second"] > 0 for r in parallel)
