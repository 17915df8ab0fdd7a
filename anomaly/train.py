"""``python -m anomaly.train METHOD --data DIR``: train a method, calibrate it, write its card.

DIR is a folder in the data-set format. If it has ``train/`` and ``val_normal/`` sub-folders
(as ``python -m anomaly.data build`` writes), those are used, and ``val_lesion/`` if present
gives validation figures; otherwise DIR itself is the healthy training set and about 10% of
it, whole files drawn with a fixed seed (all files of one labels.csv ``subject`` on the same
side), is held back for calibration. Files labelled 1 and lesion slices are never trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

from anomaly import __version__
from anomaly.calibration import brain_fill, fit_calibration
from anomaly.checkpoints import load_card, save_checkpoint, write_card
from anomaly.data.prepared import PreparedSet, load_prepared
from anomaly.errors import AnomalyError, CheckpointError, DatasetError, TrainingInterrupted
from anomaly.methods.base import CHECKPOINT_ROOT, clear_cache, get_method, method_class
from anomaly.preprocess import MODEL_SIZE, NORM_CLIP, PreparedSlices
from anomaly.scoring import run_method
from anomaly.training import TrainConfig, device_label, resolve_device, set_threads

# On-demand (diffusion) methods are calibrated and validated on at most this many random slices of
# each validation split. It was 48 while diffusion cost ~0.2 s per slice; at the tuned one-step
# setting (session 8) it costs ~25 ms, so the cohort's splits (158-161 slices) are used whole and
# the cap only bounds very large validation folders of a user's own data.
ON_DEMAND_SUBSET = 500
MIN_CALIBRATION_SLICES = 20  # fewer healthy calibration slices: the card and stderr warn


def _as_prepared(ps: PreparedSet) -> PreparedSlices:
    n = len(ps)
    return PreparedSlices(ps.images, ps.masks, np.zeros((n, 4), np.int64), ps.images.shape[1:],
                          ps.masks, np.ones(n, bool))


def load_training_data(data: Path, train_split: str = "train", val_split: str = "val_normal"):
    """(train, val_normal, val_lesion or None) prepared sets, normal slices only for train/val.

    A folder without ``train/`` is a plain folder of healthy scans (10% held out for validation);
    so is a missing ``val_normal/``. A split named on purpose (not the default name) must exist:
    a typo is a ``DatasetError``, not a silent fall-back.

    Training slices use a folder's ground-truth ``brainmasks/`` where it has them (the training
    data then does not depend on the brain extractor); the validation sets never do: calibration
    and validation figures are fitted on the masks the app and ``evaluate`` will use, those of the
    brain extractor (``--val-data`` in ``evaluate`` then reproduces a card's calibration).
    """
    data = Path(data)
    for name, default in ((train_split, "train"), (val_split, "val_normal")):
        if name != default and not (data / name).is_dir():
            raise DatasetError(f"no split folder {name!r} in {data}")
    if (data / train_split).is_dir():
        train = load_prepared(data / train_split, desc="preprocess train")
        val = (load_prepared(data / val_split, desc="preprocess val", use_brainmasks=False)
               if (data / val_split).is_dir() else None)
        vl = data / "val_lesion"
        val_lesion = load_prepared(vl, desc="preprocess val_lesion", use_brainmasks=False) if vl.is_dir() else None
    else:
        allset = load_prepared(data, desc="preprocess")
        train, val, val_lesion = allset, None, None
        if (data / "val_lesion").is_dir():
            print(f"note: {data / 'val_lesion'} is not used: validation figures need the layout train/ + val_lesion/ "
                  "(README, 'Training and evaluation')", file=sys.stderr)
    folder = data / train_split if (data / train_split).is_dir() else data
    items = _folder_items(folder)
    train = _healthy_only(train, items)
    if len(train) == 0:
        raise DatasetError(f"no healthy slices to train on in {data}")
    if val is None:
        val, train = hold_out_files(train, subjects=_subjects_of(items))
        if (folder / "brainmasks").is_dir():  # the held-out files again, with the extractor's masks
            held = set(val.names)
            extracted = load_prepared(folder, desc="preprocess held-out", use_brainmasks=False,
                                      only_files={n.rsplit(":", 1)[0] for n in held})
            val = extracted.subset(np.array([i for i, n in enumerate(extracted.names) if n in held], np.int64))
            if len(val) == 0:
                raise DatasetError(f"none of the held-out slices of {folder} is usable with the brain extractor's masks")
    else:
        val = val.subset(np.nonzero(val.labels != 1)[0])
    if len(train) == 0:
        raise DatasetError(f"no healthy slices to train on in {data}")
    return train, val, val_lesion


def _folder_items(folder: Path) -> list:
    """The folder's items as ``read_folder`` lists them (labels, masks, extra columns of labels.csv);
    none when it does not follow the documented format (a plain folder of scans)."""
    from anomaly.data.folder import read_folder

    try:
        return read_folder(folder)
    except AnomalyError:
        return []


def _healthy_only(ps: PreparedSet, items: list) -> PreparedSet:
    """The slices a model of healthy anatomy may learn from: not those labelled anomalous (a lesion
    in their mask, or label 1 of a 2D image), nor any slice of a file labelled 1 in labels.csv that
    has no mask (where its lesion lies is unknown; with a mask, its lesion-free slices are healthy).
    ``items``: the folder's ``_folder_items``. Says on stderr how many it leaves out."""
    flagged = {it.name for it in items if it.label == 1 and it.mask_path is None}
    files = [n.rsplit(":", 1)[0] for n in ps.names] if ps.names else [""] * len(ps)
    keep = np.array([lab != 1 and f not in flagged for lab, f in zip(ps.labels, files)], bool)
    if (~keep).any():
        n_files = len({f for f, k in zip(files, keep) if not k})
        print(f"note: {int((~keep).sum())} slice(s) of {n_files} file(s) labelled anomalous (labels.csv or a lesion "
              "mask) are left out: models learn healthy anatomy only", file=sys.stderr)
    return ps.subset(np.nonzero(keep)[0])


def _subjects_of(items: list) -> dict[str, str]:
    """File name -> ``subject`` from the folder's labels.csv (``_folder_items``; files without one are
    left out; the column name is matched without regard to case)."""
    return {it.name: it.subject for it in items if it.subject}


def hold_out_files(ps: PreparedSet, fraction: float = 0.1, seed: int = 0,
                   subjects: dict[str, str] | None = None) -> tuple[PreparedSet, PreparedSet]:
    """(validation, training): whole files (a volume's slices stay together) drawn at random (fixed
    seed) until about ``fraction`` of the slices is held out, so calibration never sees a neighbour
    of a training slice. ``subjects`` (file name -> subject, from labels.csv) keeps all files of one
    subject on the same side. With one file (or subject) only, its slices are split (said on stderr)."""
    files = np.array([n.rsplit(":", 1)[0] for n in ps.names]) if ps.names else np.arange(len(ps)).astype(str)
    if subjects:
        files = np.array([f"subject {subjects[f]}" if f in subjects else f for f in files])
    uniq = np.unique(files)
    rng = np.random.default_rng(seed)
    if len(ps) < 2:
        raise DatasetError(f"{len(ps)} usable healthy slice(s): at least 2 are needed, one to train on and one "
                           "to calibrate with")
    if len(uniq) < 2:
        print(f"note: one {'subject' if subjects else 'file'} only: {max(1, len(ps) // 10)} of its {len(ps)} slices are held out for "
              "calibration (neighbours of training slices)", file=sys.stderr)
        idx = rng.permutation(len(ps))
        k = max(1, len(ps) // 10)
        return ps.subset(np.sort(idx[:k])), ps.subset(np.sort(idx[k:]))
    held, n_held = [], 0
    for f in rng.permutation(uniq):
        if n_held >= max(1, fraction * len(ps)) or len(held) == len(uniq) - 1:
            break
        held.append(f)
        n_held += int((files == f).sum())
    val = np.isin(files, held)
    if val.sum() > 1.5 * fraction * len(ps):
        print(f"note: {int(val.sum())} of {len(ps)} slices ({100 * val.mean():.0f}%) are held out for calibration: "
              f"whole {'subjects' if subjects else 'files'} are, and the ones drawn are large", file=sys.stderr)
    return ps.subset(np.nonzero(val)[0]), ps.subset(np.nonzero(~val)[0])


def validation_figures(method, val_lesion: PreparedSet | None, seed: int) -> dict:
    if val_lesion is None or len(val_lesion) == 0:
        return {}
    from sklearn.metrics import average_precision_score, roc_auc_score

    res = run_method(method, _as_prepared(val_lesion), seed=seed)
    out: dict = {"val_lesion_slices": len(val_lesion)}
    lab = val_lesion.labels
    known = lab >= 0
    if known.any() and len(set(lab[known])) == 2:
        out["val_lesion_image_auroc"] = float(roc_auc_score(lab[known], res.scores[known]))
    if val_lesion.lesions is not None:
        m = val_lesion.masks
        y = val_lesion.lesions[m]
        if y.any():
            out["val_lesion_pixel_ap"] = float(average_precision_score(y, res.anomaly_map[m]))
    return out


def train(method: str, data: Path, out: Path | None = None, cfg: TrainConfig | None = None,
          command: str | None = None, train_split: str = "train", val_split: str = "val_normal",
          calibrate_only: bool = False) -> dict:
    """Train, save weights + card, calibrate on val-normal; returns the card."""
    cfg = cfg or TrainConfig()
    cfg.data_dir = cfg.data_dir or str(data)
    cfg.device = resolve_device(cfg.device)
    set_threads()
    cls = method_class(method)
    out = Path(out) if out else CHECKPOINT_ROOT / cls.name
    if cfg.init_from:  # before the data are read: a wrong option costs no preprocessing
        _check_init_source(Path(cfg.init_from), cls, out, calibrate_only)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train_set, val_set, val_lesion = load_training_data(data, train_split, val_split)
    print(f"{cls.name}: {len(train_set)} training slices, {len(val_set)} healthy validation slices"
          + (f", {len(val_lesion)} lesion-validation slices" if val_lesion is not None else ""), file=sys.stderr)
    n_val = len(val_set)
    if getattr(cls, "on_demand", False):  # slow (diffusion): calibrate and validate on a stated subset
        rng = np.random.default_rng(cfg.seed)
        val_set = val_set.subset(np.sort(rng.permutation(len(val_set))[:ON_DEMAND_SUBSET]))
        if val_lesion is not None:
            val_lesion = val_lesion.subset(np.sort(rng.permutation(len(val_lesion))[:ON_DEMAND_SUBSET]))
    if calibrate_only:
        old = load_card(out)
        if not old.get("checkpoint_hash"):
            raise DatasetError(f"--calibrate-only: no trained checkpoint in {out}")
        card = {k: v for k, v in old.items() if k not in ("calibration", "validation", "calibration_warning")}
        write_card(out, card)
    else:
        saved_states = list((out / "work").rglob("state.safetensors")) if (out / "work").is_dir() else []
        resumed = bool(cfg.resume) and bool(saved_states)
        fingerprint = data_fingerprint(train_set, val_set)
        if resumed:
            _check_resumed_data(out, fingerprint, data)
        else:  # a fresh start: the record says where it starts, before a Ctrl-C can cut the run short
            if saved_states:  # removed, so that a later --resume cannot pick up the earlier run's weights
                print(f"note: {out / 'work'} holds the saved state of an earlier run: starting afresh over it "
                      "(--resume would have continued it)", file=sys.stderr)
                for st in saved_states:
                    st.unlink(missing_ok=True)
            _start_record(out, cfg, fingerprint)
        t_fit = time.time()
        from anomaly.training import INIT_USED

        INIT_USED.clear()
        tensors, extra = cls.fit(train_set, val_set, out, cfg)
        if cfg.init_from and not resumed and str(Path(cfg.init_from).resolve()) not in INIT_USED:
            raise CheckpointError(f"--init-from: {cls.name}'s training did not start any network from "
                                  f"{cfg.init_from} (its fit does not train through anomaly.training.TrainLoop; "
                                  f"such a method sets trains_networks = False); nothing was saved")
        init_source = _read_record(out)
        extra.setdefault("wall_time_s", round(time.time() - t_fit, 1))  # methods without a training loop
        card = save_checkpoint(out, tensors, {
            "method": cls.name,
            "title": cls.title,
            "paper": cls.paper,
            "citation": cls.citation,
            "input_size": [MODEL_SIZE, MODEL_SIZE],
            "normalisation": f"anomaly.preprocess: brain crop, resize {MODEL_SIZE}, (x - background) / ((p75 brain - background) / 0.85), clip [0, {NORM_CLIP}]",
            "training_data": _training_data_text(data, train_split, val_split, val_set),
            "data_fingerprint": fingerprint,
            "n_train_slices": len(train_set),
            "n_val_normal_slices": len(val_set),
            "command": command or f"python -m anomaly.train {cls.name} --data {data}",
            "seed": cfg.seed,
            "config": {k: v for k, v in vars(cfg).items()},
            "trained_on": device_label(cfg.device),
            # config.resume is what was asked; this says whether a saved state was there to continue
            "resumed_from_saved_state": resumed,
            **({"initialised_from": init_source} if init_source else {}),
            "project_version": __version__,
            **extra,
        })
    if getattr(cls, "on_demand", False):
        card["calibration_subset"] = (f"all {n_val} healthy validation slices ({val_split})" if len(val_set) == n_val else
                                      f"{len(val_set)} of {n_val} healthy validation slices of {val_split} (random, seed {cfg.seed})")
    clear_cache()
    m = get_method(cls.name, out)
    res = run_method(m, _as_prepared(val_set), seed=cfg.seed)
    card["calibration"] = fit_calibration(res.anomaly_map, val_set.masks, res.raw_scores,
                                          fill=brain_fill(val_set.masks)).to_dict()
    card["validation"] = {"ms_per_slice": res.ms_per_slice}
    if len(val_set) < MIN_CALIBRATION_SLICES:  # percentiles of a handful of slices say little
        card["calibration_warning"] = (f"calibrated on {len(val_set)} healthy slice(s) only: its percentiles and "
                                       f"thresholds are coarse (at least {MIN_CALIBRATION_SLICES} advised; add healthy scans)")
        print(f"warning: {cls.name}: {card['calibration_warning']}", file=sys.stderr)
    write_card(out, card)  # the validation figures are scored with this calibration (brain-fill conditioning)
    clear_cache()
    m = get_method(cls.name, out)
    card["validation"].update(validation_figures(m, val_lesion, cfg.seed))
    card["total_wall_time_s"] = round(time.time() - t0, 1)  # this command (wall_time_s: training over all runs)
    write_card(out, card)
    clear_cache()
    _recalibrate_consensus(cls.name, out.parent, data, cfg, train_split, val_split)
    return load_card(out)


def _recalibrate_consensus(trained: str, root: Path, data: Path, cfg: TrainConfig, train_split: str,
                           val_split: str) -> None:
    """A consensus beside a retrained member was calibrated on the member's old maps: re-calibrate
    it on the same data (it has no weights to train), else it would refuse to load."""
    from anomaly.methods.consensus import stale_members

    if trained == "consensus" or not (root / "consensus" / "card.json").is_file():
        return
    cons = load_card(root / "consensus")
    if trained not in cons.get("members", []) and not method_class(trained).on_demand:
        print(f"note: the consensus in {root} does not include {trained} (its members were fixed when it was "
              f"calibrated: {', '.join(cons.get('members', []))}); to add it: python -m anomaly.train consensus "
              f"--data {data} --out {root / 'consensus'}", file=sys.stderr)
    if not stale_members(cons, root):
        return
    print(f"{trained} is a member of the consensus in {root}: re-calibrating the consensus on {data}", file=sys.stderr)
    train("consensus", data, root / "consensus", TrainConfig(seed=cfg.seed, device="cpu"),
          command=f"python -m anomaly.train consensus --data {data} --out {root / 'consensus'}"
                  f" (run after {trained} was retrained)", train_split=train_split, val_split=val_split)


def data_fingerprint(*sets: PreparedSet) -> str:
    """A short hash of the training and validation slices as the model saw them (model frame,
    names and pixels): whether two cards were fitted on the same data, wherever the folder moved."""
    h = hashlib.sha256()
    for ps in sets:
        h.update("\n".join(ps.names).encode())
        h.update(np.ascontiguousarray(ps.images, np.float32).tobytes())
    return h.hexdigest()[:16]


def _training_data_text(data: Path, train_split: str, val_split: str, val_set: PreparedSet) -> str:
    """The card's ``training_data``: the split folders, or for a plain folder the files held out."""
    data = Path(data)
    if (data / val_split).is_dir():
        return f"{data} ({train_split} / {val_split})"
    where = f"{data / train_split} ({train_split}/)" if (data / train_split).is_dir() else f"{data} (plain folder)"
    held = sorted({n.rsplit(":", 1)[0] for n in val_set.names})
    shown = ", ".join(held[:20]) + (f", ... ({len(held)} files)" if len(held) > 20 else "")
    return f"{where}; held out for calibration: {len(val_set)} slices of {shown}"


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
        return v

    parse.__name__ = kind.__name__
    return parse


def _check_init_source(ckpt_dir: Path, cls, out: Path, calibrate_only: bool) -> None:
    """--init-from must name another folder's trained checkpoint of the same method, whose weights
    match its card, for a method that trains networks."""
    from anomaly.checkpoints import WEIGHTS, load_weights
    from anomaly.errors import InvalidRequestError

    if calibrate_only:
        raise InvalidRequestError("--init-from has no use with --calibrate-only (which keeps the trained weights)")
    if not cls.trains_networks:
        raise InvalidRequestError(f"--init-from: {cls.name} fits no network by gradient steps (nothing to start "
                                  "from a checkpoint); train it without --init-from")
    if ckpt_dir.resolve() == out.resolve():
        raise InvalidRequestError(f"--init-from {ckpt_dir} is also the output folder: fine-tuning would overwrite the "
                                  "checkpoint it starts from; give another --out (e.g. --out mine/METHOD)")
    if not (ckpt_dir / WEIGHTS).is_file():
        raise CheckpointError(f"--init-from {ckpt_dir}: no trained checkpoint ({WEIGHTS}) there")
    other = load_card(ckpt_dir).get("method")
    if other and other != cls.name:
        raise CheckpointError(f"--init-from {ckpt_dir}: that checkpoint is of the method '{other}', not '{cls.name}'")
    load_weights(ckpt_dir)  # readable, and the weights its card describes (typed errors otherwise)


INIT_RECORD = "initialised_from.json"  # in OUT/work: where a run began, kept for the runs that resume it
DATA_RECORD = "data.json"  # OUT/work/data.json: the data fingerprint a run started on


def _start_record(out: Path, cfg: TrainConfig, fingerprint: str | None = None) -> None:
    """At a fresh start: OUT/work/initialised_from.json names the checkpoint the networks start from
    (``--init-from``), or is removed (random weights; a fine-tune may have used the folder before);
    OUT/work/data.json keeps the data fingerprint the run starts on. Runs that resume this one keep both."""
    import json

    if fingerprint is not None:
        (out / "work").mkdir(parents=True, exist_ok=True)
        (out / "work" / DATA_RECORD).write_text(json.dumps({"data_fingerprint": fingerprint}))
    rec = out / "work" / INIT_RECORD
    if not cfg.init_from:
        rec.unlink(missing_ok=True)
        return
    src = Path(cfg.init_from)
    old = load_card(src)
    rec.parent.mkdir(parents=True, exist_ok=True)
    rec.write_text(json.dumps({"checkpoint": str(src.resolve()), "checkpoint_hash": old.get("checkpoint_hash"),
                               "method": old.get("method"), "train_steps": old.get("train_steps"),
                               "command": old.get("command")}, indent=1))


def _check_resumed_data(out: Path, fingerprint: str, data: Path) -> None:
    """--resume continues a run only on the data it started on (the card could not say otherwise)."""
    import json

    rec = out / "work" / DATA_RECORD
    if not rec.is_file():  # a run started before the record existed
        return
    try:
        started = json.loads(rec.read_text()).get("data_fingerprint")
    except (OSError, ValueError, AttributeError):
        return
    if started and started != fingerprint:
        raise DatasetError(f"--resume: the saved state in {out / 'work'} was trained on other data (fingerprint "
                           f"{started}; {data} gives {fingerprint}): resume with the data it started on, or train "
                           "afresh without --resume (or into another --out)")


def _read_record(out: Path) -> dict | None:
    """The card's ``initialised_from``: where this run, or the run it resumed, started (None: random weights)."""
    import json

    rec = out / "work" / INIT_RECORD
    return json.loads(rec.read_text()) if rec.is_file() else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anomaly.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", help="registered method name (e.g. zscore, ae)")
    p.add_argument("--data", required=True, type=Path, help="data-set folder (see README)")
    p.add_argument("--out", type=Path, default=None, help="checkpoint folder (default checkpoints/METHOD)")
    p.add_argument("--minutes", type=_positive(float), default=20.0, help="wall-time budget")
    p.add_argument("--steps", type=_positive(int), default=100_000, help="maximum optimiser steps (f-AnoGAN splits them between its GAN and its encoder; DDAD's ASR "
                        "head runs 30%% more after its ensembles; the card's train_steps say how many ran)")
    p.add_argument("--batch-size", type=_positive(int), default=32)
    p.add_argument("--lr", type=_positive(float), default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when available); inference stays on CPU")
    p.add_argument("--resume", action="store_true", help="continue from OUT/work/state.safetensors")
    p.add_argument("--init-from", type=Path, default=None,
                   help="a checkpoint folder of the same method (e.g. checkpoints/dae): its weights start the training "
                        "(fine-tuning bundled models on your own healthy scans, or training them longer)")
    p.add_argument("--calibrate-only", action="store_true", help="keep the trained weights; redo calibration and validation")
    p.add_argument("--train-split", default="train", help="sub-folder of DATA with healthy training slices")
    p.add_argument("--val-split", default="val_normal", help="sub-folder of DATA with healthy validation slices")
    a = p.parse_args(argv)
    cfg = TrainConfig(seed=a.seed, minutes=a.minutes, max_steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                      resume=a.resume, device=a.device, init_from=str(a.init_from) if a.init_from else None)
    cmd = "python -m anomaly.train " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        card = train(a.method, a.data, a.out, cfg, command=cmd, train_split=a.train_split, val_split=a.val_split,
                     calibrate_only=a.calibrate_only)
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 130
    except AnomalyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an --out that cannot be written (read-only, /proc, a full disk, ...), a file gone
        where = f": {e.filename}" if e.filename else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    v = card.get("validation", {})
    print(f"trained {card['method']}: checkpoint {card['checkpoint_hash']}, validation {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
