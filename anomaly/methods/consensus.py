"""Consensus of the calibrated single-pass methods: where do methods agree?"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from anomaly.methods.base import AnomalyMethod, MethodOutput, available_methods, get_method, method_class, register
from anomaly.scoring import postprocess_residual

VMAX = 3.0


@register
class Consensus(AnomalyMethod):
    """Residual = mean over member methods of their calibrated maps (clipped at 3x threshold);
    extra map ``votes`` = the share of members that flag each pixel (calibrated map >= 1; 1.0 = all).

    Members: every single-pass method with a calibrated checkpoint when the consensus was
    calibrated (listed in its card). Evaluated like any other method."""

    name = "consensus"
    title = "Consensus of calibrated methods"
    no_reconstruction_note = "no reconstruction:\nagreement map of\nthe calibrated methods"
    extra_map_scales = {"votes": "share of the member methods that flag the pixel (1.0 = all of them)"}
    summarises = True
    trains_networks = False
    paper = "Agreement of calibrated per-method maps (ensemble view; cf. Zimmerer et al., MOOD challenge, IEEE TMI 2022)"
    citation = "Zimmerer D, et al. MOOD 2020: A public benchmark for out-of-distribution detection and localization on medical images. IEEE TMI 41(10), 2022."

    def load(self) -> None:
        from anomaly.errors import CheckpointError

        self.members = list(self.card.get("members", []))
        if not self.members:
            raise CheckpointError("consensus card lists no member methods: run python -m anomaly.train consensus")
        stale = stale_members(self.card, self.checkpoint_dir.parent)
        if stale:  # its calibration (threshold, score quantiles) was fitted on the members' old maps
            raise CheckpointError(
                f"the consensus was calibrated with other {', '.join(stale)} checkpoint(s) than those in "
                f"{self.checkpoint_dir.parent}: re-calibrate it with python -m anomaly.train consensus --data DIR "
                f"--out {self.checkpoint_dir}, or untick it")

    def predict(self, images: np.ndarray, masks: np.ndarray, seed: int = 0) -> MethodOutput:
        cal_sum = np.zeros(images.shape, np.float32)
        votes = np.zeros(images.shape, np.float32)
        for name in self.members:
            m = get_method(name, self.checkpoint_dir.parent / name)
            out = m.predict(images, masks, seed=seed)
            cal = postprocess_residual(out.residual, masks) / m.calibration.pixel_threshold
            cal_sum += np.clip(cal, 0, VMAX)
            votes += cal >= 1.0
        return MethodOutput(pseudo_healthy=None, residual=cal_sum / len(self.members),
                            extra_maps={"votes": votes / len(self.members)})

    @classmethod
    def members_available(cls, root) -> list[str]:
        out = []
        for n in available_methods(root):
            c = method_class(n)
            if n == cls.name or c.on_demand:
                continue
            if get_method(n, root / n).calibration is not None:
                out.append(n)
        return out

    @classmethod
    def fit(cls, train, val, out_dir, cfg):
        root = out_dir.parent
        members = cls.members_available(root)
        if len(members) < 2:
            from anomaly.errors import CheckpointError

            raise CheckpointError(f"consensus needs at least two calibrated methods in {root}, found {members}")
        hashes = {n: get_method(n, root / n).checkpoint_hash for n in members}
        thresholds = {n: float(get_method(n, root / n).calibration.pixel_threshold) for n in members}
        return {"member_count": torch.tensor([len(members)])}, {"members": members, "member_hashes": hashes,
                                                               "member_thresholds": thresholds, "train_steps": 0}


def stale_members(card: dict, root) -> list[str]:
    """The members of a consensus ``card`` whose checkpoint under ``root`` is not the one it was
    calibrated with: missing, another hash, or (cards that record them) another pixel threshold, i.e.
    re-calibrated since, which changes the calibrated maps the consensus averages. Cards without
    ``member_hashes`` are not checked."""
    from anomaly.checkpoints import load_card
    from anomaly.errors import AnomalyError

    thresholds = card.get("member_thresholds") or {}
    out = []
    for name, h in (card.get("member_hashes") or {}).items():
        try:
            member = load_card(Path(root) / name)
        except AnomalyError:
            member = {}
        thr = (member.get("calibration") or {}).get("pixel_threshold")
        if member.get("checkpoint_hash") != h or (
                name in thresholds and (thr is None or not np.isclose(float(thr), float(thresholds[name]), rtol=1e-9))):
            out.append(name)
    return out


def from_member_results(method: Consensus, prepared, results: dict):
    """The consensus ``MethodResult`` from its members' results (same numbers as ``run_method``,
    without running the members twice)."""
    import time

    from anomaly.scoring import MethodResult, image_score_from_map, slice_scores

    t0 = time.perf_counter()
    n = len(method.members)
    cal_sum = np.zeros_like(results[method.members[0]].anomaly_map)
    votes = np.zeros_like(cal_sum)
    for name in method.members:
        r = results[name]
        cal = r.anomaly_map / r.calibration.pixel_threshold
        cal_sum += np.clip(cal, 0, VMAX)
        votes += cal >= 1.0
    maps = postprocess_residual(cal_sum / n, prepared.masks)
    raw = image_score_from_map(maps, prepared.masks)
    return MethodResult(
        method=method.name, pseudo_healthy=None, anomaly_map=maps, raw_scores=raw,
        scores=slice_scores(raw, prepared.masks, method.calibration), valid=np.asarray(prepared.valid, bool),
        ms_per_slice=sum(results[m].ms_per_slice for m in method.members)
        + 1000 * (time.perf_counter() - t0) / max(len(maps), 1),
        checkpoint_hash=method.checkpoint_hash, calibration=method.calibration, extra_maps={"votes": votes / n},
    )
