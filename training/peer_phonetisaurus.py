"""The peer speller of issue #11: Phonetisaurus, a joint-sequence WFST model, trained and scored on our split.

python -m training.peer_phonetisaurus             # trains once into runs/peer/phonetisaurus/, scores the test split
python -m training.peer_phonetisaurus --retrain   # trains again even if a model of the same settings exists
python -m training.peer_phonetisaurus --stress true  # reads stress digits: runs/peer/phonetisaurus-stress/, ...

Phoneme-to-grapheme direction: the input side (Phonetisaurus' seq1) is the pronunciation without stress
digits (with them: --stress true), the output side (seq2) the letters. Training is the tool's own recipe,
run step by step with its bundled binaries (pip install -r requirements/peer.txt): phonetisaurus-align
(many-to-many EM alignment, 1-2 phonemes to 1-4 letters), estimate-ngram (a joint 8-gram, modified
Kneser-Ney) and phonetisaurus-arpa2wfst; decoding is phonetisaurus-g2pfst, 1-best and n-best. Metrics are
training.p2g_metrics, as for the neural spellers. Writes results/p2g/NAME/metrics.json (NAME phonetisaurus,
or phonetisaurus-stress) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from training.p2g_data import Pair, load_splits, spellings_by_key
from training.p2g_metrics import error_rates, wer_at_k


@dataclass(frozen=True)
class Config:
    seq1_max: int = 2  # phonemes per alignment chunk
    seq2_max: int = 4  # letters per alignment chunk
    seq1_del: bool = False  # never a letter chunk aligned to no phoneme (the input side has no epsilons)
    seq2_del: bool = True  # a phoneme chunk may spell no letter
    order: int = 8  # joint n-gram order
    nbest: int = 5  # n-best list length for WER@k
    stress: bool = False  # read stress digits (AE1, AE0) as distinct phonemes


def tool_environment() -> dict[str, str]:
    """os.environ with the package's bundled binaries and shared libraries first on the search paths."""
    try:
        import phonetisaurus
    except ImportError:
        raise SystemExit(
            "error: phonetisaurus is not installed: .venv/bin/python -m pip install -r requirements/peer.txt"
        ) from None
    root = Path(phonetisaurus.__file__).parent
    machine = platform.machine()
    bin_dir, lib_dir = root / "bin" / machine, root / "lib" / machine
    if not (bin_dir / "phonetisaurus-g2pfst").is_file():
        raise SystemExit(f"error: the phonetisaurus package bundles no binaries for {machine} ({bin_dir})")
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["LD_LIBRARY_PATH"] = f"{lib_dir}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}".rstrip(os.pathsep)
    return env


def run(command: list[str], env: dict[str, str], log: Path) -> tuple[str, dict]:
    """Runs one tool to the end; returns its stdout, and its wall and CPU seconds (user + system, all children)."""
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with log.open("w") as stderr:
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"error: {shlex.join(command)} failed ({result.returncode}); see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result.stdout, {"command": shlex.join(command), "wall_seconds": wall, "cpu_seconds": cpu}


def pronunciation(pair: Pair, stress: bool) -> str:
    """The tool's input for a pair: its phonemes joined by spaces, stress digits kept only with `stress`."""
    return " ".join(pair.phonemes) if stress else pair.key


def write_lexicon(pairs: list[Pair], path: Path, stress: bool) -> str:
    """One `phonemes<TAB>l e t t e r s` line per pair (space-delimited on both sides); returns its sha1."""
    text = "".join(f"{pronunciation(pair, stress)}\t{' '.join(pair.word)}\n" for pair in pairs)
    path.write_text(text)
    return hashlib.sha1(text.encode()).hexdigest()


def train(pairs: list[Pair], work: Path, config: Config, env: dict[str, str], retrain: bool = False) -> dict:
    """Aligns, estimates the joint n-gram and compiles it to work/model.fst, unless one of these settings exists."""
    work.mkdir(parents=True, exist_ok=True)
    lexicon, corpus = work / "train.lexicon", work / "train.corpus"
    arpa, model = work / "model.arpa", work / "model.fst"
    sha1 = write_lexicon(pairs, lexicon, config.stress)
    settings = {**asdict(config), "lexicon_sha1": sha1, "train_pairs": len(pairs)}
    settings.pop("nbest")
    record = work / "train.json"
    if not retrain and model.is_file() and record.is_file():
        previous = json.loads(record.read_text())
        if previous["settings"] == settings:
            return previous | {"reused": True}
    steps = {}
    _, steps["align"] = run(
        [
            "phonetisaurus-align",
            f"--input={lexicon}",
            f"--ofile={corpus}",
            "--s1_char_delim= ",
            "--s2_char_delim= ",
            f"--seq1_max={config.seq1_max}",
            f"--seq2_max={config.seq2_max}",
            f"--seq1_del={str(config.seq1_del).lower()}",
            f"--seq2_del={str(config.seq2_del).lower()}",
        ],
        env,
        work / "align.log",
    )
    _, steps["ngram"] = run(
        ["estimate-ngram", "-o", str(config.order), "-t", str(corpus), "-wl", str(arpa)], env, work / "ngram.log"
    )
    _, steps["compile"] = run(
        ["phonetisaurus-arpa2wfst", f"--lm={arpa}", f"--ofile={model}"], env, work / "compile.log"
    )
    trained = {
        "settings": settings,
        "steps": steps,
        "wall_seconds": sum(s["wall_seconds"] for s in steps.values()),
        "cpu_seconds": sum(s["cpu_seconds"] for s in steps.values()),
        "model_bytes": model.stat().st_size,
    }
    record.write_text(json.dumps(trained, indent=2) + "\n")
    return trained | {"reused": False}


def parse(output: str) -> dict[str, list[str]]:
    """g2pfst lines `phonemes<TAB>score<TAB>l e t t e r s`, best first, to {key: [spelling, ...]}."""
    spellings: dict[str, list[str]] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) == 3:
            spellings.setdefault(" ".join(fields[0].split()), []).append("".join(fields[2].split()))
    return spellings


def decode(keys: list[str], model: Path, work: Path, env: dict[str, str], nbest: int, name: str):
    """Spells every key in one g2pfst process; returns {key: [spelling, ...]} and the process's timing."""
    words = work / f"{name}.input"
    words.write_text("".join(f"{key}\n" for key in keys))
    command = ["phonetisaurus-g2pfst", f"--model={model}", f"--wordlist={words}", "--gsep= ", f"--nbest={nbest}"]
    output, timing = run(command, env, work / f"{name}.log")
    (work / f"{name}.output").write_text(output)
    return parse(output), timing | {"inputs": len(keys)}


def distinct(spellings: list[str]) -> list[str]:
    return list(dict.fromkeys(spellings))


def evaluate(
    train_pairs: list[Pair],
    test_pairs: list[Pair],
    spellings: dict[str, set[str]],
    work: Path,
    config: Config,
    retrain: bool = False,
) -> dict:
    """Trains (or reuses) the model and scores test_pairs: 1-best error rates, n-best WER@k, decoding speed."""
    env = tool_environment()
    trained = train(train_pairs, work, config, env, retrain)
    model = work / "model.fst"
    # each pronunciation once (homophones share it)
    inputs = [pronunciation(pair, config.stress) for pair in test_pairs]
    keys = list(dict.fromkeys(inputs))
    _, startup = decode(keys[:1], model, work, env, 1, "startup")
    best, timing = decode(keys, model, work, env, 1, "test.1best")
    listed, nbest_timing = decode(keys, model, work, env, config.nbest, f"test.{config.nbest}best")
    words = [p.word for p in test_pairs]
    predictions = [best.get(key, [""])[0] for key in inputs]
    options = [distinct(listed.get(key, [])) for key in inputs]
    test = error_rates(words, predictions, [p.key for p in test_pairs], spellings)
    test |= {f"nbest_wer@{k}": wer_at_k(words, options, k) for k in (1, 3, 5) if k <= config.nbest}
    n = len(keys)
    speed = {
        "pronunciations": n,
        "wall_seconds": timing["wall_seconds"],
        "cpu_seconds": timing["cpu_seconds"],
        "words_per_second_cpu": n / timing["cpu_seconds"],
        "words_per_second_wall": n / timing["wall_seconds"],
        "includes_process_startup": True,
        "startup_cpu_seconds": startup["cpu_seconds"],
        "words_per_second_cpu_without_startup": n / max(timing["cpu_seconds"] - startup["cpu_seconds"], 1e-9),
    }
    checks = {
        "unspelled_1best": sum(key not in best for key in keys),
        "nbest_lists_shorter_than_n": sum(len(distinct(listed.get(key, []))) < config.nbest for key in keys),
        "nbest_first_equals_1best": sum(listed.get(key, [""])[0] == best.get(key, [""])[0] for key in keys) / n,
    }
    return {
        "trained": trained,
        "test": test,
        "speed_1best": speed,
        "decode_nbest": nbest_timing,
        "decode_1best": timing,
        "checks": checks,
    }


def summary(metrics: dict) -> str:
    t, s, tr = metrics["test"], metrics["speed_1best"], metrics["train"]
    nbest = "  ".join(f"{k} {v:.4f}" for k, v in t.items() if k.startswith("nbest_wer@") and not k.endswith("@1"))
    return (
        f"{metrics['name']} test: CER {t['cer']:.4f}  WER {t['wer']:.4f}  homophone WER {t['homophone_wer']:.4f}  "
        f"{nbest}  1-best {s['words_per_second_cpu']:,.0f} words/s per CPU-second "
        f"({s['words_per_second_wall']:,.0f} wall, with process start)  "
        f"train {tr['wall_seconds'] / 60:.1f} min wall, {tr['cpu_seconds'] / 60:.1f} min CPU"
        + ("  (model reused)" if tr["reused"] else "")
    )


def boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def parse_args(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    for key, value in asdict(defaults).items():
        kind = boolean if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{key.replace('_', '-')}", type=kind, default=value, help=f"default {value}")
    parser.add_argument("--data", default="cmudict", help="'cmudict' or a folder with train, valid, test TSVs")
    parser.add_argument("--work", help="lexicon, corpus, ARPA, model, logs (default runs/peer/NAME)")
    parser.add_argument("--results", help="where metrics.json goes (default results/p2g/NAME)")
    parser.add_argument("--retrain", action="store_true", help="train even if a model of these settings exists")
    args = parser.parse_args(argv)
    config = Config(**{k: getattr(args, k) for k in asdict(defaults)})
    args.name = "phonetisaurus-stress" if config.stress else "phonetisaurus"
    args.work = args.work or f"runs/peer/{args.name}"
    args.results = args.results or f"results/p2g/{args.name}"
    return config, args


def main(argv: list[str] | None = None) -> None:
    config, args = parse_args(argv)
    try:
        splits = load_splits(args.data)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    result = evaluate(
        splits["train"], splits["test"], spellings_by_key(splits), Path(args.work), config, retrain=args.retrain
    )
    from importlib.metadata import version

    trained = result.pop("trained")
    metrics = {
        "name": args.name,
        "kind": "peer",
        "tool": f"phonetisaurus {version('phonetisaurus')} (PyPI, bundled binaries)",
        "config": asdict(config) | {"data": args.data},
        "pairs": {s: len(p) for s, p in splits.items()},
        "train": {
            "wall_seconds": trained["wall_seconds"],
            "cpu_seconds": trained["cpu_seconds"],
            "reused": trained["reused"],
            "model_bytes": trained["model_bytes"],
            "steps": trained["steps"],
        },
        "words_per_second": result["speed_1best"]["words_per_second_cpu"],
        "words_per_second_basis": "1-best, whole test split in one g2pfst process (startup and model load included), "
        "per CPU-second of that single-threaded process",
        **result,
        "machine": {"cores": os.cpu_count(), "load_average_at_end": os.getloadavg()},
        "train_command": "python -m training.peer_phonetisaurus "
        + shlex.join(f"--{k.replace('_', '-')}={v}" for k, v in asdict(config).items())
        + f" --data={args.data}",
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(summary(metrics))


if __name__ == "__main__":
    main()
