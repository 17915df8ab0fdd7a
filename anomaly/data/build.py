"""Build the cohort: ``python -m anomaly.data build --out DIR [--subjects N] [--seed S]``.

Writes, deterministically for a seed, one data-set folder per split (see docs/data.md):

    train/            normal slices of pseudo-subjects of every real brain
    val_normal/       normal slices (calibration, early stopping)
    val_lesion/       synthetic-lesion slices + >= 40 % normal slices (tuning)
    test/             synthetic-lesion slices + >= 40 % normal slices
    unlabeled/        normal + lesion mixture from its own seed stream (DDAD); labels.csv
                      has an empty ``label`` and the truth in ``truth``; no masks/
    test_volumes/     whole pseudo-subject NIfTI volumes, some with a 3D lesion + mask
    test_heldout/     pseudo-subjects made ONLY from the held-out real brain (with lesions)
    train_loo/, val_normal_loo/   pseudo-subjects of every brain except the held-out one:
                      train these to report the held-out-anatomy figure on test_heldout
    test_domain_shift/  the real low-resolution ITK subject (never augmented), with
                      synthetic lesions on copies of some of its slices

Each split also has brainmasks/ (ground-truth brain masks of every written slice). All
lesions are synthetic, drawn on real healthy anatomy.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from anomaly.data.cohort import Job, lesion_api, run_job

SPLITS = ("train", "val_normal", "val_lesion", "test", "unlabeled", "test_volumes",
          "test_heldout", "train_loo", "val_normal_loo", "test_domain_shift")
_CODES = {s: i + 1 for i, s in enumerate(SPLITS)}
MAIN_VARIANTS = (("mni152", "stripped"), ("colin27", "skull"), ("colin27", "stripped"))
SIZE_RANGE = (3.0, 40.0)
COLUMNS = ("file", "label", "truth", "kind", "size_mm", "subject", "source", "skull", "slice", "lesion_px",
           "slice_extent_mm", "lesion_contrast")
STATEMENT = ("All lesions in this cohort are SYNTHETIC: drawn by anomaly.data.lesions on real healthy "
             "anatomy (MNI152 2009a, Colin27, one ITK subject). No slice shows real pathology.")


def _seeds(seed: int, split: str, n: int) -> list[int]:
    ss = np.random.SeedSequence([int(seed), _CODES[split]])
    return [int(c.generate_state(1)[0]) for c in ss.spawn(n)]


def _variants(heldout: str | None, family: str):
    if family == "main":
        return MAIN_VARIANTS
    if family == "heldout":
        return tuple(v for v in MAIN_VARIANTS if v[0] == heldout)
    return tuple(v for v in MAIN_VARIANTS if v[0] != heldout)  # 'loo'


class _LesionCycle:
    """Kinds cycle over LESION_KINDS; sizes log-uniform in SIZE_RANGE (per-split stream)."""

    def __init__(self, seed: int, split: str, kinds):
        self.rng = np.random.default_rng(np.random.SeedSequence([int(seed), _CODES[split], 99]))
        self.kinds = tuple(kinds)
        self.i = int(self.rng.integers(len(self.kinds)))

    def next(self) -> tuple[str, float]:
        k = self.kinds[self.i % len(self.kinds)]
        self.i += 1
        lo, hi = np.log(SIZE_RANGE[0]), np.log(SIZE_RANGE[1])
        return k, round(float(np.exp(self.rng.uniform(lo, hi))), 1)


def plan(out: Path, seed: int = 0, subjects: int = 36, heldout: str = "colin27", tiny: bool = False) -> list[Job]:
    """Every pseudo-subject job of the build (deterministic for the arguments)."""
    out = Path(out)
    _, kinds = lesion_api()
    sp = 3.0 if tiny else None  # tiny builds (tests) work on a coarse 3 mm grid
    jobs: list[Job] = []

    def healthy(split, n, family="main", start=0, **kw):
        vs = _variants(heldout, family)
        seeds = _seeds(seed, split, start + n)
        for i in range(start, start + n):
            src, var = vs[i % len(vs)]
            jobs.append(Job(split, f"{split}-{i:03d}", src, var, seeds[i], str(out / split), spacing=sp, **kw))

    def lesional(split, n, n_les, family="main", start=1000, **kw):
        vs = _variants(heldout, family)
        cyc = _LesionCycle(seed, split, kinds)
        seeds = _seeds(seed, split, start + n)
        for i in range(start, start + n):
            src, var = vs[i % len(vs)]
            les = [cyc.next() for _ in range(n_les)]
            jobs.append(Job(split, f"{split}-{i:03d}", src, var, seeds[i], str(out / split), lesions=les,
                            spacing=sp, **kw))

    if tiny:
        healthy("train", subjects, max_normal=6)
        healthy("val_normal", 1, max_normal=4)
        lesional("val_lesion", 1, 1, slices_per_lesion=2, max_normal=2)
        lesional("test", 2, 2, slices_per_lesion=2, max_normal=3)
        healthy("test", 1, max_normal=3)
        lesional("unlabeled", 1, 1, slices_per_lesion=2, max_normal=2, label_column="truth", write_masks=False)
        healthy("unlabeled", 1, max_normal=3, label_column="truth", write_masks=False)
        lesional("test_heldout", 1, 2, family="heldout", slices_per_lesion=2, max_normal=2)
        healthy("test_heldout", 1, family="heldout", max_normal=2)
        healthy("train_loo", 1, family="loo", start=subjects, max_normal=4)
        n_vol_les, n_itk_les, itk_normals = 1, 2, None
    else:
        healthy("train", subjects, normal_step=1)
        healthy("val_normal", max(3, subjects // 8), normal_step=2)
        # evaluation splits: normal slices level-matched to the lesion slices (cohort._level_matched),
        # most of them from the lesional subjects themselves (same anatomy and skull/stripped mix);
        # one fully healthy subject per variant adds whole-brain normals
        lm = dict(level_matched=True)
        lesional("val_lesion", 5, 4, slices_per_lesion=5, max_normal=12, **lm)
        healthy("val_lesion", len(MAIN_VARIANTS), max_normal=4, **lm)
        lesional("test", 11, 4, slices_per_lesion=5, max_normal=12, **lm)
        healthy("test", len(MAIN_VARIANTS), max_normal=5, **lm)
        lesional("unlabeled", 6, 4, slices_per_lesion=5, max_normal=15, label_column="truth", write_masks=False)
        healthy("unlabeled", 4, normal_step=1, label_column="truth", write_masks=False)
        lesional("test_heldout", 7, 4, family="heldout", slices_per_lesion=5, max_normal=12, **lm)
        healthy("test_heldout", 2, family="heldout", max_normal=6, **lm)
        n_vol_les, n_itk_les, itk_normals = 2, 18, None
    # train_loo / val_normal_loo: copies of train / val_normal pseudo-subjects of the kept
    # brains (done after the jobs) + fresh ones so each has as many subjects as its twin
    kept = _variants(heldout, "loo")
    n_train_kept = sum(1 for j in jobs if j.split == "train" and (j.source, j.variant) in kept)
    n_val_kept = sum(1 for j in jobs if j.split == "val_normal" and (j.source, j.variant) in kept)
    n_val = sum(1 for j in jobs if j.split == "val_normal")
    if not tiny:
        healthy("train_loo", subjects - n_train_kept, family="loo", start=subjects, normal_step=1)
        healthy("val_normal_loo", n_val - n_val_kept, family="loo", start=n_val, normal_step=2)
    # whole volumes: lesion volumes on MNI152 and Colin27-with-skull, then healthy ones
    vseeds = _seeds(seed, "test_volumes", 2 * n_vol_les)
    vol_kinds = [("tumour", 30.0), ("stroke", 25.0), ("haemorrhage", 20.0), ("wm_lesions", 15.0)]
    vol_vars = (("mni152", "stripped"), ("colin27", "skull"))
    for i in range(2 * n_vol_les):
        src, var = vol_vars[i % 2]
        les = [vol_kinds[i]] if i < n_vol_les else []
        jobs.append(Job("test_volumes", f"test_volumes-{i:03d}", src, var, vseeds[i], str(out / "test_volumes"),
                        lesions=les, volume=True, spacing=sp))
    # domain shift: the real ITK subject as is (no augmentation) + lesion copies
    iseeds = _seeds(seed, "test_domain_shift", n_itk_les + 1)
    d = str(out / "test_domain_shift")
    jobs.append(Job("test_domain_shift", "itk", "itk", "skull", iseeds[0], d, augment=False, normal_step=1,
                    max_normal=itk_normals, prefix="itk-real", spacing=sp))
    cyc = _LesionCycle(seed, "test_domain_shift", kinds)
    for i in range(n_itk_les):
        jobs.append(Job("test_domain_shift", "itk", "itk", "skull", iseeds[i + 1], d, augment=False,
                        lesions=[cyc.next()], slices_per_lesion=3, max_normal=0, prefix=f"itk-v{i:02d}",
                        spacing=sp))
    return jobs


def _code_hashes() -> dict:
    """sha256 (first 16 hex) of the modules that decide the files: a rebuild with the same seed
    reproduces the files byte for byte only when these match."""
    import hashlib

    here = Path(__file__).resolve().parent
    return {f: hashlib.sha256((here / f).read_bytes()).hexdigest()[:16]
            for f in ("lesions.py", "augment.py", "cohort.py", "build.py")}


def _worker_init(preloaded: dict | None = None) -> None:
    import torch

    from anomaly.data import augment

    torch.set_num_threads(1)
    if preloaded:
        augment.PRELOADED.update(preloaded)


def _cost(job: Job) -> float:
    """Rough relative cost, to start the longest jobs first."""
    if job.source == "itk":
        return 1.0 + 1.0 * len(job.lesions)
    return 2.5 + 2.6 * len(job.lesions) + (2.0 if job.volume else 0.0)


def _run_indexed(arg):
    i, job = arg
    return i, run_job(job)


def _ordered(row: dict) -> dict:
    out = {c: row[c] for c in COLUMNS if c in row}
    out.update({k: v for k, v in row.items() if k not in out})
    return out


def build(out: Path, seed: int = 0, subjects: int = 36, heldout: str = "colin27", tiny: bool = False,
          workers: int | None = None, progress: bool = True, only=None) -> dict:
    """Build the cohort into ``out``; returns the manifest (also written to out/manifest.json).

    ``only``: build just these splits (their files are identical to a full build's; the
    _loo splits need their twin train/val_normal in ``only`` to get the copied subjects).
    """
    from anomaly.data.folder import write_labels

    t0 = time.time()
    out = Path(out)
    if heldout not in ("colin27", "mni152"):
        raise ValueError("--heldout must be colin27 or mni152")
    out.mkdir(parents=True, exist_ok=True)
    for s in SPLITS if only is None else only:
        if (out / s).exists():
            shutil.rmtree(out / s)
    previous = {}
    if only is not None and (out / "manifest.json").exists():  # a partial rebuild keeps the other counts
        previous = json.loads((out / "manifest.json").read_text()).get("splits", {})
    for f in ("manifest.json", "build_timing.json"):
        (out / f).unlink(missing_ok=True)
    jobs = plan(out, seed, subjects, heldout, tiny)
    if only is not None:
        unknown = set(only) - set(SPLITS)
        if unknown:
            raise ValueError(f"unknown split(s) {sorted(unknown)}; choose from {SPLITS}")
        jobs = [j for j in jobs if j.split in only]
    if workers is None:
        workers = 1 if tiny else max(1, min(2, os.cpu_count() or 1))
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    bar = tqdm(total=len(jobs), desc="build cohort (pseudo-subjects)", disable=not progress, file=sys.stderr)
    if workers > 1:
        from anomaly.data.augment import load_source

        sp = 3.0 if tiny else None
        pre = {(n, sp): load_source(n, sp) for n in sorted({j.source for j in jobs})}
        order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init, initargs=(pre,)) as pool:
            for i, r in pool.imap_unordered(_run_indexed, [(i, jobs[i]) for i in order], chunksize=1):
                rows[jobs[i].split].extend(r)
                bar.update(1)
    else:
        for job in jobs:
            rows[job.split].extend(run_job(job))
            bar.update(1)
    bar.close()
    # train_loo / val_normal_loo: add copies of the twin split's kept-brain subjects
    kept = {src for src, _ in _variants(heldout, "loo")}
    for twin, loo in (("train", "train_loo"), ("val_normal", "val_normal_loo")):
        if only is not None and loo not in only:
            continue
        for r in rows[twin]:
            if r["source"] in kept:
                for sub in ("images", "brainmasks"):
                    (out / loo / sub).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(out / twin / sub / r["file"], out / loo / sub / r["file"])
                rows[loo].append(dict(r))
    manifest = {
        "statement": STATEMENT,
        "seed": seed,
        "subjects": subjects,
        "tiny": tiny,
        "heldout": heldout,
        "command": "python -m anomaly.data build " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["build"] else "",
        "sources": {
            "mni152": "ICBM152 2009a T1 template, skull-stripped, with GM/WM maps (assets/templates)",
            "colin27": "Colin27 T1 with skull and skull-stripped (assets/templates)",
            "itk": "one real subject, 2x2x3 mm, other scanner (assets/templates); domain-shift set only",
        },
        "families": {
            "main": "train, val_normal, val_lesion, test, unlabeled, test_volumes: pseudo-subjects of "
                    "MNI152 (stripped) and Colin27 (with skull and stripped)",
            "held_out_anatomy": f"train_loo, val_normal_loo: pseudo-subjects of every brain except {heldout}; "
                                f"test_heldout: pseudo-subjects made only from {heldout}",
            "domain_shift": "test_domain_shift: the real ITK subject, not augmented",
        },
        "working_spacing_mm": 3.0 if tiny else {"mni152": 1.5, "colin27": 1.5, "itk": 2.0},
        "code_sha256": _code_hashes(),
        "lesion_kinds": list(lesion_api()[1]),
        "lesion_sizes_mm": list(SIZE_RANGE),
        "splits": {k: v for k, v in previous.items() if k not in (only or ())},
    }
    for s in SPLITS:
        rs = sorted(rows[s], key=lambda r: r["file"])
        if not rs:
            continue
        write_labels(out / s, [_ordered(r) for r in rs])
        lab = [int(r["truth"] if s == "unlabeled" else r["label"]) for r in rs]
        kinds: dict[str, int] = {}
        for r, lb in zip(rs, lab):
            if lb:
                for k in str(r["kind"]).split("+"):
                    kinds[k] = kinds.get(k, 0) + 1
        srcs: dict[str, int] = {}
        for r in rs:
            key = f"{r['source']}_{'skull' if int(r['skull']) else 'stripped'}"
            srcs[key] = srcs.get(key, 0) + 1
        manifest["splits"][s] = {
            "files": len(rs),
            "lesion": int(sum(lab)),
            "normal": int(len(lab) - sum(lab)),
            "normal_fraction": round(1 - sum(lab) / len(lab), 3),
            "subjects": len({r["subject"] for r in rs}),
            "by_source": dict(sorted(srcs.items())),
            "lesion_kinds": dict(sorted(kinds.items())),
            "kind": "3D NIfTI volumes" if s == "test_volumes" else "2D 16-bit PNG slices",
        }
    manifest["splits"] = {k: manifest["splits"][k] for k in SPLITS if k in manifest["splits"]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    timing = {"wall_seconds": round(time.time() - t0, 1), "workers": workers, "jobs": len(jobs)}
    (out / "build_timing.json").write_text(json.dumps(timing, indent=2))
    manifest["wall_seconds"] = timing["wall_seconds"]
    return manifest


def job_table(jobs: list[Job]) -> list[dict]:
    return [asdict(j) for j in jobs]


# ----------------------------------------------------------------------------- examples


def _save_nifti_int16(path: Path, vol: np.ndarray, spacing: float, scale: float = 1000.0, mask: bool = False) -> Path:
    """(S, H, W) display-order volume -> compact int16/uint8 NIfTI (same convention as folder.write_image)."""
    import nibabel as nib

    from anomaly.scan import display_to_ras

    from anomaly.data.folder import centred_affine

    data = (np.asarray(vol) > 0).astype(np.uint8) if mask else np.clip(np.round(np.asarray(vol) * scale), 0, 32767).astype(np.int16)
    ras = display_to_ras(data)
    img = nib.Nifti1Image(ras, centred_affine(ras.shape, (spacing, spacing, spacing)))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))
    return path


def write_examples(out_dir: Path | str, seed: int = 0) -> list[Path]:
    """Small example files (real healthy anatomy; lesions synthetic and named so).

    PNG (1 mm, 16-bit): a healthy skull-stripped slice (MNI152), a healthy slice with skull
    (Colin27), a slice with a synthetic tumour (Colin27 with skull) and its mask.
    NIfTI (2 mm, int16): ``synthetic_tumour_t1.nii.gz`` (Colin27 with skull, a 30 mm
    synthetic tumour) + ``synthetic_tumour_t1_mask.nii.gz``, and ``healthy_t1.nii.gz``
    (the same brain without the lesion); ``synthetic_haemorrhage_t1.nii.gz`` (+ mask), the same
    brain with a haemorrhage-like lesion (bright on T1, the kind the methods find best).
    """
    from anomaly.data.augment import load_source
    from anomaly.data.cohort import add_lesion_local
    from anomaly.data.folder import _write

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    mni = load_source("mni152", 1.0)
    colin = load_source("colin27", 1.0)
    zm = int(np.argmax(mni.brain.reshape(len(mni.brain), -1).sum(1)))
    files.append(_write(out, "healthy_stripped_t1_axial", mni.images["stripped"][zm + 8], (1, 1, 1), None, False))
    zc = int(np.argmax(colin.brain.reshape(len(colin.brain), -1).sum(1)))
    files.append(_write(out, "healthy_with_skull_t1_axial", colin.images["skull"][zc + 6], (1, 1, 1), None, False))
    from anomaly.preprocess import informative_slices

    inf = np.flatnonzero(informative_slices(colin.brain))
    zr = (int(inf[len(inf) // 3]), int(inf[2 * len(inf) // 3]))
    v, m, info = add_lesion_local(colin.images["skull"], colin.brain, "tumour", 28.0, rng, colin.spacing, zrange=zr)
    z = int(info.centre[0])
    files.append(_write(out, "synthetic_tumour_t1_axial", v[z], (1, 1, 1), None, False))
    files.append(_write(out, "synthetic_tumour_t1_axial_mask", m[z], (1, 1, 1), None, True))
    c2 = load_source("colin27", 2.0)
    inf2 = np.flatnonzero(informative_slices(c2.brain))
    zr2 = (int(inf2[len(inf2) // 3]), int(inf2[2 * len(inf2) // 3]))
    v2, m2, _ = add_lesion_local(c2.images["skull"], c2.brain, "tumour", 30.0, rng, c2.spacing, zrange=zr2)
    files.append(_save_nifti_int16(out / "synthetic_tumour_t1.nii.gz", v2, 2.0))
    files.append(_save_nifti_int16(out / "synthetic_tumour_t1_mask.nii.gz", m2, 2.0, mask=True))
    files.append(_save_nifti_int16(out / "healthy_t1.nii.gz", c2.images["skull"], 2.0))
    # drawn after the others (their random draws, hence their files, stay as they were)
    v3, m3, info3 = add_lesion_local(c2.images["skull"], c2.brain, "haemorrhage", 24.0, rng, c2.spacing, zrange=zr2)
    files.append(_save_nifti_int16(out / "synthetic_haemorrhage_t1.nii.gz", v3, 2.0))
    files.append(_save_nifti_int16(out / "synthetic_haemorrhage_t1_mask.nii.gz", m3, 2.0, mask=True))
    readme = out / "README.md"
    readme.write_text(
        "# Example inputs\n\n"
        "Written by `python -m anomaly.data examples --out assets/examples` (seed "
        f"{seed}). Real healthy anatomy from `assets/templates` (see `assets/NOTICE.md`); every lesion is "
        "**synthetic** (drawn by `anomaly.data.lesions`) and such files have `synthetic` in their names.\n\n"
        "| file | what |\n|---|---|\n"
        "| `healthy_stripped_t1_axial.png` | MNI152 2009a, skull-stripped, axial, 1 mm, 16-bit |\n"
        "| `healthy_with_skull_t1_axial.png` | Colin27 with skull, axial, 1 mm, 16-bit |\n"
        f"| `synthetic_tumour_t1_axial.png` (+ `_mask.png`) | Colin27 with skull, synthetic tumour "
        f"({info.size_mm:.0f} mm), axial, 1 mm |\n"
        "| `synthetic_tumour_t1.nii.gz` (+ `_mask.nii.gz`) | Colin27 with skull, 2 mm, synthetic 30 mm tumour |\n"
        "| `healthy_t1.nii.gz` | the same Colin27 volume without the lesion, 2 mm |\n"
        f"| `synthetic_haemorrhage_t1.nii.gz` (+ `_mask.nii.gz`) | the same volume with a synthetic haemorrhage-like "
        f"lesion ({info3.size_mm:.0f} mm), 2 mm |\n"
    )
    files.append(readme)
    return files
