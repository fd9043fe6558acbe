"""The Intel scene data: load it from an npz like ../shared/data/intel48.npz or a Kaggle image folder.

Both sources give the same `SceneData`: uint8 NHWC images at 48x48 and int64 labels per split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ("buildings", "forest", "glacier", "mountain", "sea", "street")
IMAGE_SIZE = 48
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}

NPZ_LAYOUT = (
    "an npz with train_images/val_images/test_images (uint8 [N, 48, 48, 3]), "
    "train_labels/val_labels/test_labels (int [N]) and class_names"
)
FOLDER_LAYOUT = "a folder <root>/<class>/*.jpg with one sub-folder per class: " + ", ".join(CLASS_NAMES)


class DataError(Exception):
    """The data is missing or not in a layout we can read; the message says what is wrong."""


@dataclass(frozen=True)
class SceneData:
    images: dict[str, np.ndarray]  # split -> uint8 [N, 48, 48, 3]
    labels: dict[str, np.ndarray]  # split -> int64 [N]
    class_names: tuple[str, ...]
    source: str

    def fingerprint(self) -> str:
        """sha256 over every split's pixels and labels: equal for an npz and the folder it was made from."""
        digest = hashlib.sha256()
        for split in SPLITS:
            digest.update(np.ascontiguousarray(self.images[split]).tobytes())
            digest.update(self.labels[split].astype("<i8").tobytes())
        return digest.hexdigest()


def load_scenes(path: str | Path) -> SceneData:
    """Load an npz file or a Kaggle-style image folder, checking its layout."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder; expected {NPZ_LAYOUT}, or {FOLDER_LAYOUT}")
    if path.is_dir():
        return load_folder(path)
    return load_npz(path)


def load_npz(path: Path) -> SceneData:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises several types for a file that is not an npz
        raise DataError(f"{path}: not a readable npz ({error}); expected {NPZ_LAYOUT}") from error
    with archive:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in archive]
        if missing or "class_names" not in archive:
            raise DataError(f"{path}: missing {missing or ['class_names']}; expected {NPZ_LAYOUT}")
        images = {s: archive[f"{s}_images"] for s in SPLITS}
        labels = {s: archive[f"{s}_labels"].astype(np.int64) for s in SPLITS}
        class_names = tuple(str(name) for name in archive["class_names"])
    for split in SPLITS:
        shape, dtype = images[split].shape, images[split].dtype
        if shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or dtype != np.uint8 or len(labels[split]) != shape[0]:
            raise DataError(
                f"{path}: {split}_images is {dtype} {shape} with {len(labels[split])} labels; expected {NPZ_LAYOUT}"
            )
        if labels[split].size and not 0 <= labels[split].min() <= labels[split].max() < len(class_names):
            raise DataError(f"{path}: {split}_labels fall outside 0..{len(class_names) - 1}")
    return SceneData(images, labels, class_names, source=str(path))


def load_image(path: Path) -> np.ndarray:
    """One image file as the npz holds it: RGB, bicubic resize to 48x48, aspect ratio not kept."""
    with Image.open(path) as image:
        rgb = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _numeric_id(path: Path) -> tuple[int, str]:
    match = re.search(r"\d+", path.stem)
    return (int(match.group()) if match else -1, path.name)


def load_folder(root: Path) -> SceneData:
    """A folder of class sub-folders, split into train/val/test exactly as intel48.npz was."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    names = tuple(p.name for p in class_dirs)
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders; expected {FOLDER_LAYOUT}")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted((f for f in class_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_numeric_id)
        if not files:
            raise DataError(f"{class_dir}: no image files; expected {FOLDER_LAYOUT}")
        for file in files:
            try:
                images.append(load_image(file))
            except OSError as error:
                raise DataError(f"{file}: cannot decode image ({error})") from error
            labels.append(label)
    stacked, label_array = np.stack(images), np.asarray(labels, dtype=np.int64)
    splits = split_like_intel48(label_array)
    return SceneData(
        images={s: stacked[idx] for s, idx in splits.items()},
        labels={s: label_array[idx] for s, idx in splits.items()},
        class_names=names,
        source=str(root),
    )


def split_like_intel48(labels: np.ndarray, fraction: float = 0.10) -> dict[str, np.ndarray]:
    """Stratified val (rng 0) then test (rng 1) of the same size per class, the rest train; order kept."""
    val_rng, test_rng = np.random.default_rng(0), np.random.default_rng(1)
    val, test = [], []
    classes = np.unique(labels)
    for c in classes:
        members = np.flatnonzero(labels == c)
        count = round(fraction * len(members))
        val.append(val_rng.permutation(members)[:count])
    taken = np.concatenate(val)
    for c, val_part in zip(classes, val):
        rest = np.setdiff1d(np.flatnonzero(labels == c), taken)
        test.append(test_rng.permutation(rest)[: len(val_part)])
    val_idx, test_idx = np.sort(np.concatenate(val)), np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), np.concatenate([val_idx, test_idx]))
    return {"train": train_idx, "val": val_idx, "test": test_idx}
