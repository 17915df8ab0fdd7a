"""Experiment: how detectable are the cohort's synthetic lesions at all? A supervised reference.

Not a method of the app and not an unsupervised result: a small UNet segmenter is trained WITH
lesion masks, on lesion slices drawn by the cohort's own lesion generator on other
pseudo-subjects (cohorts built with other seeds: ``python -m anomaly.data build --seed N --only
val_lesion test``) plus healthy slices of data/cohort/train, then scored on data/cohort/test
through the shared post-processing, the top-1% slice score and a brain-fill reference fitted on
val_normal, as ``anomaly.evaluate`` does (brain masks from the real extractor). What it reaches
bounds what an unsupervised model can be asked to reach on these slices (T1, 128 x 128,
low-contrast lesions): it has seen the very kind of lesion the test holds, which no unsupervised
method may.

    for s in 1 2 3 4 5 6; do .venv/bin/python -m anomaly.data build --out /tmp/ceiling/s$s --seed $s \\
        --only val_lesion test; done
    PYTHONPATH=. .venv/bin/python benchmarks/experiments/supervised_ceiling.py /tmp/ceiling/s[1-6] \\
        --minutes 60 --out runs/ceiling60
(session 9 ran it first with seeds 1-3 for 30 minutes, then as above)
Results: docs/benchmark/what_was_tried.md.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from tqdm import tqdm

from anomaly import metrics
from anomaly.calibration import brain_fill, fit_fill_reference
from anomaly.data.prepared import PreparedSet, load_prepared
from anomaly.scoring import image_score_from_map, postprocess_residual


def lesion_training_set(roots: list[Path], healthy: PreparedSet, rng: np.random.Generator) -> PreparedSet:
    """Every lesion slice of the extra cohorts' lesion splits, plus as many healthy train slices."""
    parts = []
    for r in roots:
        for split in ("val_lesion", "test"):
            p = load_prepared(Path(r) / split)
            keep = np.nonzero((p.labels == 1) & p.lesions.reshape(len(p), -1).any(1))[0]
            parts.append(p.subset(keep))
    n_les = sum(len(p) for p in parts)
    parts.append(healthy.subset(np.sort(rng.choice(len(healthy), min(n_les, len(healthy)), replace=False))))
    return PreparedSet(np.concatenate([p.images for p in parts]), np.concatenate([p.masks for p in parts]),
                       np.concatenate([p.labels for p in parts]),
                       np.concatenate([p.lesions if p.lesions is not None else np.zeros_like(p.masks) for p in parts]))


def predict(net: torch.nn.Module, images: np.ndarray, masks: np.ndarray, batch: int = 32) -> np.ndarray:
    out = []
    net.eval()
    with torch.no_grad():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch], np.float32))[:, None]
            out.append(torch.sigmoid(net(x))[:, 0].numpy())
    return postprocess_residual(np.concatenate(out), masks)


def healthy_reference(net: torch.nn.Module, data: Path):
    """The brain-fill reference of the segmenter's slice scores on val_normal (as calibration fits it)."""
    vn = load_prepared(data / "val_normal", use_brainmasks=False)
    return fit_fill_reference(image_score_from_map(predict(net, vn.images, vn.masks), vn.masks), brain_fill(vn.masks))


def slice_scores(data: PreparedSet, maps: np.ndarray, ref) -> tuple[np.ndarray, np.ndarray]:
    """(raw top-1% scores, the same conditioned on brain fill)."""
    raw = image_score_from_map(maps, data.masks)
    return raw, ref.condition(raw, brain_fill(data.masks))


def figures(name: str, data: PreparedSet, maps: np.ndarray, ref, sizes: np.ndarray) -> dict:
    raw, scores = slice_scores(data, maps, ref)
    peak = maps.reshape(len(maps), -1).max(1)
    big = (data.labels == 0) | (sizes >= 10)
    row = {"split": name, "image_auroc": metrics.image_auroc(data.labels, scores),
           "image_auroc_raw_top1": metrics.image_auroc(data.labels, raw),
           "image_auroc_peak": metrics.image_auroc(data.labels, peak),
           "ge10mm_image_auroc_peak": metrics.image_auroc(data.labels[big], peak[big]),
           "pixel_ap": metrics.pixel_ap(data.lesions, maps, data.masks),
           "ge10mm_positives": int(((data.labels == 1) & (sizes >= 10)).sum()),
           "ge10mm_image_auroc": metrics.image_auroc(data.labels[big], scores[big]),
           "ge10mm_pixel_ap": metrics.pixel_ap(data.lesions[big & (data.labels == 1)], maps[big & (data.labels == 1)],
                                               data.masks[big & (data.labels == 1)])}
    print(json.dumps(row), flush=True)
    return row


def column_of(root: Path, data: PreparedSet, column: str) -> list[str]:
    import csv

    with open(root / "labels.csv") as f:
        value = {r["file"]: r[column] for r in csv.DictReader(f)}
    return [value[n.split(":")[0] + ".png"] for n in data.names]


def sizes_of(root: Path, data: PreparedSet) -> np.ndarray:
    return np.array([float(v or 0) for v in column_of(root, data, "size_mm")])


def by_kind(data: PreparedSet, maps: np.ndarray, ref, kinds: list[str]) -> dict:
    """Image AUROC (each kind's lesion slices vs all normal slices) and pixel AP per lesion kind."""
    _, scores = slice_scores(data, maps, ref)
    kinds = np.array(kinds)
    out = {}
    for k in sorted(set(kinds[data.labels == 1])):
        pos = (data.labels == 1) & (kinds == k)
        sel = (data.labels == 0) | pos
        out[k] = {"positives": int(pos.sum()), "image_auroc": metrics.image_auroc(data.labels[sel], scores[sel]),
                  "pixel_ap": metrics.pixel_ap(data.lesions[pos], maps[pos], data.masks[pos])}
    print(json.dumps(out), flush=True)
    return out


def build_segmenter() -> torch.nn.Module:
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=2, norm="batch")


def evaluate_saved(a: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    net = build_segmenter()
    net.load_state_dict(load_file(str(a.out / "segmenter.safetensors")))
    ref = healthy_reference(net, a.data)
    d = load_prepared(a.data / "test", use_brainmasks=False)
    maps = predict(net, d.images, d.masks)
    result = {"overall": figures("test", d, maps, ref, sizes_of(a.data / "test", d)),
              "by_kind": by_kind(d, maps, ref, column_of(a.data / "test", d, "kind"))}
    (a.out / "ceiling_by_kind.json").write_text(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cohorts", nargs="+", type=Path, help="extra cohorts (other seeds) with val_lesion/ and test/")
    p.add_argument("--data", type=Path, default=Path("data/cohort"))
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/ceiling"))
    p.add_argument("--eval-only", action="store_true", help="score OUT/segmenter.safetensors again, with a by-kind table")
    a = p.parse_args()
    if a.eval_only:
        evaluate_saved(a)
        return
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    train = lesion_training_set(a.cohorts, load_prepared(a.data / "train"), rng)
    print(f"training slices: {len(train)} ({int((train.labels == 1).sum())} with a lesion)", flush=True)
    net = build_segmenter()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    t0, step = time.time(), 0
    bar = tqdm(total=int(a.minutes * 60), desc="supervised ceiling (s)", unit="s")
    while time.time() - t0 < a.minutes * 60:
        net.train()
        idx = rng.choice(len(train), a.batch_size, replace=False)
        x = torch.from_numpy(train.images[idx].astype(np.float32))[:, None]
        y = torch.from_numpy(train.lesions[idx].astype(np.float32))[:, None]
        m = torch.from_numpy(train.masks[idx].astype(np.float32))[:, None]
        if rng.random() < 0.5:
            x, y, m = x.flip(-1), y.flip(-1), m.flip(-1)
        x = x * float(rng.uniform(0.9, 1.1)) + float(rng.uniform(-0.05, 0.05)) * m  # mild intensity jitter
        logit = net(x)
        bce = (F.binary_cross_entropy_with_logits(logit, y, reduction="none") * m).sum() / m.sum().clamp_min(1)
        prob = torch.sigmoid(logit) * m
        dice = 1 - (2 * (prob * y).sum() + 1) / (prob.sum() + y.sum() + 1)
        loss = bce + dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.n = int(time.time() - t0)
        bar.set_postfix(step=step, loss=f"{loss.item():.3f}")
    bar.close()
    a.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(a.out / "segmenter.safetensors"))
    ref = healthy_reference(net, a.data)
    rows = []
    for split in ("val_lesion", "test"):
        d = load_prepared(a.data / split, use_brainmasks=False)
        rows.append(figures(split, d, predict(net, d.images, d.masks), ref, sizes_of(a.data / split, d)))
    (a.out / "ceiling.json").write_text(json.dumps({"steps": step, "minutes": a.minutes, "cohorts": [str(c) for c in a.cohorts],
                                                    "training_slices": len(train), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
