"""`make container-smoke`: run the image on 127.0.0.1, call it as a user would, check it, remove the container.

python -m deploy.smoke --image scenespell:latest [--data ../shared/data/intel48.npz]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from exports import EXPORTS_DIR
from exports.metadata import from_session
from exports.runtime import load_session

DEPLOY = Path(__file__).resolve().parent
CONTAINER = [str(DEPLOY / "container.sh")]


def engine() -> str:
    return subprocess.run([*CONTAINER, "engine"], check=True, capture_output=True, text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_photos(npz: Path, count: int = 6) -> tuple[list[bytes], list[str]]:
    """The first test photo of each class, as PNG (lossless: the pixels of the npz)."""
    data = np.load(npz, allow_pickle=False)
    images, labels, names = data["test_images"], data["test_labels"], data["class_names"]
    firsts = [int(np.flatnonzero(labels == k)[0]) for k in range(len(names))][:count]
    pngs = []
    for i in firsts:
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    return pngs, [str(names[labels[i]]) for i in firsts]


def host_probabilities(png: bytes) -> dict[str, float]:
    """What exports/cnn.onnx (the default classifier) says on this host, preprocessing as the contract says."""
    session = load_session(EXPORTS_DIR / "cnn.onnx")
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((48, 48), Image.BICUBIC), dtype=np.uint8)
    logits = session.run(["logits"], {"images": pixels[None]})[0][0].astype(np.float64)
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return dict(zip(from_session(session, "cnn.onnx")["class_names"], probabilities.tolist()))


def smoke(image: str, npz: Path, timeout: float = 120) -> None:
    tool = engine()
    name = f"scenespell-smoke-{os.getpid()}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    size = subprocess.run([tool, "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True)
    assert size.returncode == 0, f"no image {image}: run `make containerize` first\n{size.stderr}"
    print(f"image {image} ({tool}): {int(size.stdout) / 1e6:.0f} MB")
    subprocess.run(
        [*CONTAINER, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:3000", image],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,  # podman without systemd says it cannot schedule the periodic health check
    )
    try:
        start = time.monotonic()
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            running = subprocess.run([tool, "inspect", "--format", "{{.State.Running}}", name], capture_output=True)
            assert b"true" in running.stdout, "the container stopped:\n" + logs(tool, name)
            assert time.monotonic() - start < timeout, f"not ready after {timeout:.0f} s:\n" + logs(tool, name)
            time.sleep(0.5)
        print(f"ready: /readyz 200 after {time.monotonic() - start:.1f} s on {url}")

        status = exec_(tool, name, "cat", "/proc/1/status")
        uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
        user = exec_(tool, name, "id", "-un").strip()
        assert "0" not in uids, f"process 1 runs as root: Uid {uids}"
        print(f"non-root: process 1 runs as uid {uids[0]} ({user})")

        pngs, truths = test_photos(npz)
        labels, worst = [], 0.0
        for png in pngs:
            answer = httpx.post(f"{url}/classify", files={"image": ("photo.png", png, "image/png")}, timeout=30)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            host = host_probabilities(png)
            assert body["probabilities"].keys() == host.keys(), body
            worst = max(worst, *(abs(body["probabilities"][k] - p) for k, p in host.items()))
            labels.append(body["label"])
        assert worst < 1e-4, f"the container's probabilities differ from this host's ONNX Runtime by {worst}"
        print(f"/classify: {len(pngs)} Intel test photos -> {labels}")
        print(f"           true labels {truths}; same probabilities as cnn.onnx here (max diff {worst:.1e})")

        greedy = httpx.post(f"{url}/spell", json={"phonemes": "K AE1 T"}, timeout=30)
        assert greedy.status_code == 200, greedy.text
        assert greedy.json()["decoding"] == "greedy" and len(greedy.json()["spellings"]) == 1, greedy.text
        print(f"/spell greedy K AE1 T -> {greedy.json()['spellings']}")
        request = {"phonemes": "F OW1 N IY0 K S", "decoding": "nucleus", "n": 5, "top_p": 0.8, "seed": 7}
        nucleus = [httpx.post(f"{url}/spell", json=request, timeout=30) for _ in range(2)]
        assert all(r.status_code == 200 for r in nucleus), nucleus[0].text
        spellings = nucleus[0].json()["spellings"]
        assert len(spellings) == 5 and len(nucleus[0].json()["scores"]) == 5, nucleus[0].text
        assert nucleus[1].json()["spellings"] == spellings, "the same seed gave other samples"
        print(f"/spell nucleus F OW1 N IY0 K S, n 5, seed 7 -> {spellings} (the same on a second call)")

        health = json.loads(
            subprocess.run(
                [tool, "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        exec_(tool, name, *health["Test"][1:])  # ["CMD", "python", "-c", ...]
        print("health check: the image's HEALTHCHECK command passes inside the container")
    finally:
        subprocess.run([tool, "rm", "-f", name], capture_output=True)
        gone = subprocess.run([tool, "inspect", "--format", "{{.Name}}", name], capture_output=True)
        assert gone.returncode != 0, f"container {name} is still there"
        print(f"removed container {name}")


def exec_(tool: str, name: str, *command: str) -> str:
    result = subprocess.run([tool, "exec", name, *command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)} failed in the container:\n{result.stderr}"
    return result.stdout


def logs(tool: str, name: str) -> str:
    return subprocess.run([tool, "logs", name], capture_output=True, text=True).stdout[-3000:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="scenespell:latest")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/intel48.npz"), help="test photos from here")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found: set DATA=path/to/intel48.npz (the smoke test sends its photos)")
    try:
        smoke(args.image, args.data)
    except AssertionError as failure:
        sys.exit(f"error: {failure}")
    print("container smoke test passed")


if __name__ == "__main__":
    main()
