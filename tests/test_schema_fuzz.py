"""Schemathesis against the real server's own OpenAPI document (/docs.json): requests generated from the
schema, valid and deliberately invalid, through all its phases (the schema's examples, boundary values,
random fuzzing), must never get a 5xx, and every answer must match the schema.

Schemathesis runs as its command-line tool: its pytest loader for a schema served by a fixture
(`schemathesis.pytest.from_fixture`) fails under pytest 9 (it sets `Function._nodeid`, which pytest 9 no
longer has). Every request it sends is read back from its HAR report and counted in the `tally`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXAMPLES = 300  # per operation and generation mode (valid, invalid) in the fuzzing phase: about 40 s here
PHONEMES = ["K AE1 T", "F OW1 N IY0 K S", "t uw1", " ".join(["S", "T", "R", "EH1", "NG", "K", "TH", "AH0"] * 8)]

# Every check runs but two, for reasons of the schema language, not of the service:
# - positive_data_acceptance expects a 2xx for any request the schema allows, but the schema cannot express the
#   rules that depend on other fields or on what is loaded (model names from /info, phonemes from the speller's
#   vocabulary, greedy allows only n = 1, beam needs n <= beam_size), and BentoML marks no request body required;
# - negative_data_rejection on /classify: an invalid `model` such as an empty list goes out as no form field at
#   all, which is a valid request.
# Real phonemes and model names are mixed into half the generated values, so that valid requests reach decoding.
CONFIG = """
[checks]
positive_data_acceptance.enabled = false

[dictionaries.phonemes]
values = {phonemes}
[dictionaries.spellers]
values = {spellers}
[dictionaries.classifiers]
values = {classifiers}

[[operations]]
include-path = "/spell"
parameters = {{ "body.phonemes" = {{ dictionary = "phonemes", probability = 0.5 }}, \
"body.model" = {{ dictionary = "spellers", probability = 0.5 }} }}

[[operations]]
include-path = "/classify"
checks.negative_data_rejection.enabled = false
parameters = {{ "body.model" = {{ dictionary = "classifiers", probability = 0.5 }} }}
"""


def test_openapi_schema_fuzz_never_5xx(server, tally, tmp_path):
    info = httpx.get(f"{server.url}/info").json()
    config, har = tmp_path / "schemathesis.toml", tmp_path / "schemathesis.har"
    config.write_text(CONFIG.format(phonemes=json.dumps(PHONEMES),
                                    spellers=json.dumps([s["name"] for s in info["spellers"]]),
                                    classifiers=json.dumps([c["name"] for c in info["classifiers"]])))  # fmt: skip
    command = [str(SCHEMATHESIS), "--config-file", str(config), "run", f"{server.url}/docs.json",
               "--max-examples", str(EXAMPLES), "--seed", "1", "--request-timeout", "60",
               "--report", "har", "--report-har-path", str(har)]  # fmt: skip
    environment = {**os.environ, "NO_COLOR": "1"}  # and its cache goes to tmp_path, not the checkout
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=tmp_path)
    output = result.stdout + result.stderr
    entries = json.loads(har.read_text())["log"]["entries"] if har.is_file() else []
    tally.record(*(entry["response"]["status"] or "no answer" for entry in entries))
    generated = re.search(r"(\d+) generated[^\n]*", output)
    tally.case(int(generated.group(1)) if generated else 0)
    tally.figure(f"schemathesis {generated.group(0) if generated else '(no count)'}, {len(entries):,} requests")
    assert result.returncode == 0, output[-6000:]
    assert entries and all(0 < entry["response"]["status"] < 500 for entry in entries)
    assert generated and int(generated.group(1)) >= EXAMPLES
