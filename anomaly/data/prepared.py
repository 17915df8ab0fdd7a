"""Load a data-set folder through the shared preprocessing, as model-ready arrays (cached)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from anomaly.data.folder import read_folder, read_image, read_matching_mask, read_pixel_spacing
from anomaly.errors import InvalidImageError
from anomaly.preprocess import MODEL_SIZE, PREPROCESS_VERSION, extractor_id, preprocess_slices


@dataclass
class PreparedSet:
    """Preprocessed slices of a folder: images/masks (N,S,S), labels (N,) -1 unknown, lesion masks."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    lesions: np.ndarray | None = None  # (N,S,S) bool lesion masks in model space, if any
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "PreparedSet":
        idx = np.asarray(idx)
        return PreparedSet(self.images[idx], self.masks[idx], self.labels[idx],
                           None if self.lesions is None else self.lesions[idx],
                           [self.names[i] for i in idx])


def _fingerprint(root: Path, brainmasks: bool = False) -> str:
    h = hashlib.sha256()
    for sub in ("images", "masks") + (("brainmasks",) if brainmasks else ()):
        d = root / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                st = p.stat()
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    lab = root / "labels.csv"
    if lab.exists():
        h.update(lab.read_bytes())
    return h.hexdigest()[:16]


def load_prepared(root: Path, size: int = MODEL_SIZE, only_valid: bool = True, cache: bool = True,
                  desc: str | None = None, use_brainmasks: bool = True,
                  only_files: set[str] | None = None) -> PreparedSet:
    """Every slice of ``root`` preprocessed (one image/volume at a time), valid slices only.

    Lesion masks are carried into model space with the same crop/resize as the image.
    Cached in ``root/.prepared-<fingerprint>.npz`` (rebuilt when files change).
    With ``use_brainmasks`` and a ``root/brainmasks/`` folder (same file names, written by the
    cohort builder), its ground-truth brain masks replace brain extraction: training data then
    does not depend on the extractor. Evaluation never uses them (it runs the real pipeline).
    ``only_files`` (file names as in ``PreparedSet.names`` before the ":"): preprocess those files
    only, uncached (e.g. a training folder's held-out files again, with the extractor's masks).
    """
    root = Path(root)
    use_bm = use_brainmasks and (root / "brainmasks").is_dir()
    ext = "gtmask" if use_bm else extractor_id()
    cache_path = root / f".prepared-v{PREPROCESS_VERSION}-{ext}-{_fingerprint(root, use_bm)}-{size}-{int(only_valid)}.npz"
    cache = cache and only_files is None
    if cache and cache_path.exists():
        z = np.load(cache_path, allow_pickle=False)
        les = z["lesions"] if z["has_lesions"] else None
        return PreparedSet(z["images"], z["masks"], z["labels"], les, json.loads(str(z["names"])))
    imgs, msks, labs, less, names = [], [], [], [], []
    any_lesion = False
    brain_dir = root / "brainmasks"
    items = [it for it in read_folder(root) if only_files is None or it.name in only_files]
    for item in tqdm(items, desc=desc or f"preprocess {root.name}", leave=False):
        try:
            a = read_image(item.image_path)
            bm = brain_dir / item.image_path.name
            gt = read_matching_mask(bm, a, item.image_path, "brain mask") if (use_bm and bm.exists()) else None
            prep = preprocess_slices(a, masks=gt, size=size, pixel_spacing=read_pixel_spacing(item.image_path))
        except InvalidImageError as e:  # blank or tiny: nothing to learn from, not a reason to stop
            tqdm.write(f"skipped {item.image_path.name}: {e}", file=sys.stderr)
            continue
        lesion_model = np.zeros_like(prep.masks)
        if item.mask_path is not None:
            any_lesion = True
            lesion_model = prep.to_model(read_matching_mask(item.mask_path, a, item.image_path))
        for i in range(len(a)):
            if only_valid and not prep.valid[i]:
                continue
            if item.mask_path is not None:
                lab = int(lesion_model[i].any())
            elif item.label is not None and (len(a) == 1 or item.label == 0):
                lab = item.label
            else:
                lab = -1
            imgs.append(prep.images[i]); msks.append(prep.masks[i]); labs.append(lab)
            less.append(lesion_model[i]); names.append(f"{item.name}:{i}")
    s = size
    ps = PreparedSet(
        np.stack(imgs) if imgs else np.zeros((0, s, s), np.float32),
        np.stack(msks) if msks else np.zeros((0, s, s), bool),
        np.asarray(labs, np.int64),
        np.stack(less) if (less and any_lesion) else None,
        names,
    )
    if cache:
        # written under a temporary name, then renamed: a process training beside this one never
        # reads a half-written cache
        tmp = cache_path.with_name(f"{cache_path.stem}.{os.getpid()}.tmp.npz")
        try:
            np.savez_compressed(tmp, images=ps.images, masks=ps.masks, labels=ps.labels,
                                lesions=ps.lesions if ps.lesions is not None else np.zeros(1, bool),
                                has_lesions=ps.lesions is not None, names=json.dumps(names))
            os.replace(tmp, cache_path)
        except OSError:
            tmp.unlink(missing_ok=True)
    return ps
