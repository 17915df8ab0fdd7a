"""DDAD: dual-distribution discrepancy with self-supervised refinement (Cai et al., MedIA 2023).

Two ensembles of K autoencoders: the NDM learns the healthy distribution only (``train``),
the UDM learns healthy + an unlabeled normal/lesion mixture (``DATA/unlabeled``, never the
test set). Where they disagree (inter-discrepancy |mean NDM - mean UDM|) is what the UDM
learned from the unlabeled anomalies and the NDM cannot reconstruct. The ASR stage
(``asr.py``) refines the intra/inter-discrepancy and reconstruction maps into the residual;
it is trained self-supervised on synthetic anomalies of healthy slices. Checkpoints without
an ASR head fall back to ``DEFAULT_SCORE``'s map (A_inter).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from anomaly.methods.base import AnomalyMethod, MethodOutput, flip_averaged, register
from anomaly.methods.ddad.model import DEFAULT_ARCH, DualEnsemble


def _asr():
    """The ASR module, imported when used: the package does not import it, so that
    ``python -m anomaly.methods.ddad.asr`` runs it without a second copy (runpy's warning)."""
    from anomaly.methods.ddad import asr

    return asr

# How the residual map is formed: "inter" = |mu_NDM - mu_UDM| (the paper's A_inter, default);
# "inter_norm" = A_inter / (A_intra + eps): the inter-discrepancy normalised by the NDM's own
# uncertainty (down-weights regions where healthy reconstructions already disagree).
DEFAULT_SCORE = {"map": "inter", "eps": 0.02}
# Left-right flip test-time averaging: every map is the mean of predict(x) and the flipped-back
# predict(flip(x)). Chosen on val_lesion (benchmarks/experiments/flip_tta.py: ASR-refined map,
# pixel AP 0.196 -> 0.275, image AUROC 0.50 -> 0.54); new checkpoints record it in their card's
# ``score``; cards without the key (calibrated without it) keep the single pass.
FLIP_TTA = True
# Share of the training budget (minutes and steps) given to the ASR stage after the ensembles
# (0 = no ASR; the residual is then DEFAULT_SCORE's map).
# ``ANOMALY_DDAD_ASR_SHARE`` overrides it (0: train the ensembles only, then add ASR later with
# ``python -m anomaly.methods.ddad.asr``, as the shipped checkpoint was made).
ASR_SHARE = 0.3
ASR_STEP_SHARE: float | None = None  # of cfg.max_steps, default ASR_SHARE (a step cap binds in tests and --steps runs)


def asr_share() -> float:
    """Share of the training budget given to ASR (``ANOMALY_DDAD_ASR_SHARE`` or ``ASR_SHARE``)."""
    return float(os.environ.get("ANOMALY_DDAD_ASR_SHARE", ASR_SHARE))


ASR_LR = 1e-3
UNLABELED_FRACTION = 0.5  # share of each UDM batch drawn from the unlabeled set (when present)
LOSS = "mse"  # the paper's AE reconstruction loss, inside the brain mask


def _unlabeled(cfg):
    """The unlabeled mixture under ``cfg.data_dir/unlabeled`` as a PreparedSet, or None."""
    root = getattr(cfg, "data_dir", None)
    if not root or not (Path(root) / "unlabeled").is_dir():
        return None
    from anomaly.data.prepared import load_prepared

    ps = load_prepared(Path(root) / "unlabeled", desc="preprocess unlabeled")
    return ps if len(ps) else None


@register
class DDAD(AnomalyMethod):
    name = "ddad"
    title = "DDAD (dual-distribution discrepancy, AE ensembles + ASR)"
    extra_map_titles = {"intra_discrepancy": "uncertainty (NDM spread)", "inter_discrepancy": "inter-discrepancy",
                        "reconstruction_residual": "NDM residual", "asr_refined": "ASR refined"}
    paper = ("Cai et al., Dual-distribution discrepancy with self-supervised refinement for anomaly "
             "detection in medical images, MedIA 2023")
    citation = ("Cai Y, Chen H, Yang X, Zhou Y, Cheng K-T. Dual-distribution discrepancy with "
                "self-supervised refinement for anomaly detection in medical images. "
                "Medical Image Analysis 86 (2023) 102794.")

    def load(self) -> None:
        from anomaly.checkpoints import load_weights

        weights = load_weights(self.checkpoint_dir)
        self.net = DualEnsemble(self.card.get("architecture", DEFAULT_ARCH))
        pre = _asr().ASR_PREFIX
        self.net.load_state_dict({k: v for k, v in weights.items() if not k.startswith(pre)})
        self.net.eval()
        self.refiner = None
        asr = {k[len(pre):]: v for k, v in weights.items() if k.startswith(pre)}
        if asr:
            arch = self.card.get("asr", {}).get("architecture")
            self.refiner = _asr().build_refiner(arch)
            self.refiner_inputs = _asr().refiner_input_names(arch)
            self.refiner.load_state_dict(asr)
            self.refiner.eval()
        self.score = {**DEFAULT_SCORE, **self.card.get("score", {})}

    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        if self.score.get("flip_tta", False):
            return flip_averaged(self._predict_once, images, masks, seed)
        return self._predict_once(images, masks, seed)

    @torch.no_grad()
    def _predict_once(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        x = torch.from_numpy(np.ascontiguousarray(images, np.float32))[:, None]
        out = self.net(x)
        m = np.asarray(masks, np.float32)
        mu_n = out["ndm_mean"][:, 0].numpy()
        mu_u = out["udm_mean"][:, 0].numpy()
        intra = out["intra"][:, 0].numpy() * m
        inter = np.abs(mu_n - mu_u) * m
        rec = np.abs(np.asarray(images, np.float32) - mu_n) * m
        extra = {"intra_discrepancy": intra, "inter_discrepancy": inter, "reconstruction_residual": rec}
        refined = None
        if self.refiner is not None:
            refined = (torch.sigmoid(self.refiner(_asr().refiner_inputs(x, out, self.refiner_inputs)))[:, 0].numpy() * m).astype(np.float32)
        if self.score["map"] == "asr" and refined is not None:
            residual = refined  # the refined map is the residual (not repeated as an extra map)
        elif self.score["map"] == "inter_norm":
            residual = inter / (intra + float(self.score["eps"]))
        else:
            residual = inter
        if refined is not None and residual is not refined:
            extra["asr_refined"] = refined
        return MethodOutput(
            pseudo_healthy=mu_n * m,
            residual=residual.astype(np.float32),
            extra_maps=extra,
        )

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        import torch.nn.functional as F

        from anomaly.training import TrainLoop, batches, seed_everything

        seed_everything(cfg.seed)
        arch = dict(DEFAULT_ARCH)
        net = DualEnsemble(arch, seed=cfg.seed)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        unl = _unlabeled(cfg)
        if unl is None:
            print("ddad: no unlabeled/ folder next to train/: the UDM is trained on train alone", file=sys.stderr)
        share = asr_share()
        step_share = share if ASR_STEP_SHARE is None else ASR_STEP_SHARE
        ens_cfg = replace(cfg, minutes=cfg.minutes * (1 - share)) if share else cfg
        loop = TrainLoop(ens_cfg, Path(out_dir) / "work", {"net": net}, {"opt": opt}, desc="ddad")
        b = cfg.batch_size

        def stream(j: int, images, masks, bs):
            rng = np.random.default_rng([cfg.seed, j, loop.step])
            return batches(images, masks, bs, rng, cfg.augment, cfg.device)

        gens = {}
        for j, n in enumerate(net.names("ndm")):
            gens[n] = [stream(j, train.images, train.masks, b)]
        for j, n in enumerate(net.names("udm")):
            if unl is None:
                gens[n] = [stream(100 + j, train.images, train.masks, b)]
            else:
                bu = max(1, int(round(b * UNLABELED_FRACTION)))
                gens[n] = [stream(100 + j, train.images, train.masks, max(1, b - bu)),
                           stream(200 + j, unl.images, unl.masks, bu)]
        net.train()
        for _ in loop:
            total = 0.0
            losses = {}
            for n, gs in gens.items():
                parts = [next(g) for g in gs]
                x = torch.cat([p[0] for p in parts])
                m = torch.cat([p[1] for p in parts])
                xi, mi = net.to_internal(x), net.to_internal(m.float())
                rec = net.member(n)(xi)
                loss = F.mse_loss(rec * mi, xi * mi)
                total = total + loss
                losses[n] = loss.item()
            opt.zero_grad()
            total.backward()
            opt.step()
            loop.log(loss=float(total.item()) / len(gens),
                     ndm=float(np.mean([v for k, v in losses.items() if k.startswith("ndm")])),
                     udm=float(np.mean([v for k, v in losses.items() if k.startswith("udm")])))
        net.eval()
        tensors = dict(net.state_dict())
        asr_info: dict = {"asr": "not trained (ASR share 0): add it with python -m anomaly.methods.ddad.asr"}
        if share:
            asr_cfg = replace(cfg, minutes=cfg.minutes * share, max_steps=max(1, round(cfg.max_steps * step_share)),
                              batch_size=min(cfg.batch_size, 16), lr=ASR_LR)
            refiner, asr_info = _asr().fit_refiner(net, train, asr_cfg, Path(out_dir) / "work_asr")
            tensors = _asr().checkpoint_tensors(net, refiner)
        last = loop.history[-1] if loop.history else {}
        card = {
            "architecture": arch,
            "score": {**DEFAULT_SCORE, "flip_tta": FLIP_TTA},
            "internal_resolution": (f"{arch['size']}x{arch['size']} (as in the paper): slices are area-downsampled for the "
                                    "autoencoders and the reconstructions / discrepancy maps bilinearly upsampled to "
                                    "the 128x128 model space"),
            "ensembles": {"ndm": f"{net.k} MONAI AutoEncoders on healthy train slices",
                          "udm": f"{net.k} MONAI AutoEncoders on healthy train + unlabeled slices"},
            "hyper_parameters": {"loss": LOSS, "optimizer": "Adam", "lr": cfg.lr, "batch_size": b,
                                 "unlabeled_fraction_per_udm_batch": UNLABELED_FRACTION if unl is not None else 0.0,
                                 "member_init_seeds": f"seed*1000 + j, j = 0..{2 * net.k - 1}"},
            "unlabeled_data": (str(Path(cfg.data_dir) / "unlabeled") if unl is not None else None),
            "n_unlabeled_slices": len(unl) if unl is not None else 0,
            "udm_note": (None if unl is not None else
                         "no unlabeled/ folder: the UDM was trained on the healthy train set alone, so the "
                         "inter-discrepancy only reflects ensemble disagreement"),
            **asr_info,
            "maps": {"residual": ("ASR-refined anomaly map (sigmoid of the refiner)" if share else
                                  "inter-discrepancy |mean NDM - mean UDM| (A_inter)"),
                     "pseudo_healthy": "mean NDM reconstruction x brain mask",
                     "intra_discrepancy": "std of the K NDM reconstructions",
                     "inter_discrepancy": "|mean NDM - mean UDM|",
                     "reconstruction_residual": "|x - mean NDM|"},
            "train_steps": loop.step,
            "final_loss": last.get("loss"),
            "final_loss_ndm": last.get("ndm"),
            "final_loss_udm": last.get("udm"),
            # the whole training, both stages (as every card's wall_time_s); each stage's own beside it
            "wall_time_s": loop.wall_time_s + float(asr_info.get("asr_wall_time_s") or 0.0),
            "ensembles_wall_time_s": loop.wall_time_s,
        }
        if share:
            card["score"] = {**card["score"], "map": "asr"}
            card["maps"]["asr_refined"] = "the refined map (= residual)"
        return tensors, card
