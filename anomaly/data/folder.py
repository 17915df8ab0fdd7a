"""The one on-disk data-set format (documented in README "Data-set format").

    DIR/images/NAME.png|.nii|.nii.gz    2D PNG (8/16-bit) or 2D/3D NIfTI
    DIR/masks/NAME.*                    optional lesion mask, same stem as the image
    DIR/labels.csv                      optional: file,label[,kind,size_mm,subject,...]

A 3D NIfTI is read in the project's display order (``anomaly.scan.ras_to_display``),
so each axial slice is one sample. A sample's label: from its mask if the file has one (any
lesion pixel -> 1, else 0), else from labels.csv (a volume's label 0 says all its slices are
normal), else unknown (None). labels.csv names each image by its file name (a name without
suffix also matches); a row for a file that is not in images/, a file listed twice, a label
other than 0, 1 or empty and a mask without an image of its name are ``DatasetError``s.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly.errors import DatasetError
from anomaly.scan import display_to_ras, ras_to_display

IMAGE_SUFFIXES = (".png", ".nii", ".nii.gz")


def _stem(p: Path) -> str:
    n = p.name
    for s in (".nii.gz", ".nii", ".png"):
        if n.lower().endswith(s):
            return n[: -len(s)]
    return p.stem


@dataclass
class Item:
    name: str
    image_path: Path
    mask_path: Path | None = None
    label: int | None = None
    extras: dict = field(default_factory=dict)

    @property
    def subject(self) -> str | None:
        """The labels.csv ``subject`` of this file (the column name in any case), None where it has none."""
        val = next((v for k, v in self.extras.items() if str(k).strip().lower() == "subject"), None)
        return (str(val).strip() or None) if val is not None else None


def read_image(path: Path) -> np.ndarray:
    """(N, H, W) float32: a PNG is (1, H, W); a NIfTI 2D/3D is (S, H, W) in display order."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".png"):
            with Image.open(path) as im:
                if im.mode in ("RGB", "RGBA", "P", "LA"):
                    im = im.convert("L")
                a = np.asarray(im).astype(np.float32)
            return a[None]
        import nibabel as nib

        img = nib.as_closest_canonical(nib.load(str(path)))
        a = np.asarray(img.dataobj, dtype=np.float32)
    except DatasetError:
        raise
    except Exception as e:
        raise DatasetError(f"cannot read {path}: {' '.join(str(e).split())}") from e  # one line
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim == 4 and a.shape[3] == 1:
        a = a[..., 0]
    if a.ndim != 3:
        hint = (f"; a 4D file holds {a.shape[3]} volumes: save the one meant as its own NIfTI (e.g. "
                f"nibabel.funcs.four_to_three)" if a.ndim == 4 else "")
        raise DatasetError(f"{path}: expected a 2D or 3D image, got shape {a.shape}{hint}")
    return ras_to_display(a).astype(np.float32)


def read_pixel_spacing(path: Path) -> tuple[float, float] | None:
    """(row, column) spacing in mm of the slices ``read_image`` gives (rows anterior->posterior,
    columns right->left, from the NIfTI header's voxel sizes); None for a PNG (no pixel size) or a
    header without usable sizes."""
    path = Path(path)
    if path.name.lower().endswith(".png"):
        return None
    try:
        import nibabel as nib

        img = nib.load(str(path))
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        # the voxel sizes along the RAS+ axes read_image reorients to, from the affine alone (the
        # canonical image itself would read a non-RAS volume's voxels a second time)
        ornt = nib.orientations.io_orientation(img.affine)
        ras = [1.0] * 3
        for axis, (to, _) in enumerate(ornt[: len(zooms)]):
            ras[int(to)] = zooms[axis]
    except Exception:  # read_image says what is wrong with the file
        return None
    if len(zooms) < 2 or not all(np.isfinite(z) and z > 0 for z in ras[:2]):
        return None
    return (ras[1], ras[0])


def read_mask(path: Path) -> np.ndarray:
    return read_image(path) > 0


_NOTED: set[tuple[str, tuple[str, ...]]] = set()


def _note_ignored(img_dir: Path, names: list[str]) -> None:
    """Say once (per folder and set of names) which entries of images/ are not read: a user who put
    DICOM files or a README there should know they were not used."""
    key = (str(img_dir), tuple(names))
    if not names or key in _NOTED:
        return
    _NOTED.add(key)
    shown = ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")
    print(f"note: {img_dir} also holds {shown}: not read (a data set's images are .png, .nii or .nii.gz; "
          "convert DICOM to NIfTI, or open it in the app)", file=sys.stderr)


def read_folder(root: Path) -> list[Item]:
    """Items of a data-set folder, validated; ``DatasetError`` names the offending file."""
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"data folder {root} does not exist")
    img_dir = root / "images"
    if not img_dir.is_dir():
        raise DatasetError(f"{root} has no images/ folder (see README, 'Data-set format')")
    images = sorted(p for p in img_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise DatasetError(f"{img_dir} holds no .png, .nii or .nii.gz images")
    _note_ignored(img_dir, sorted(p.name + ("/" if p.is_dir() else "") for p in img_dir.iterdir()
                                  if not p.name.startswith(".") and not p.name.lower().endswith(IMAGE_SUFFIXES)))
    masks = {}
    if (root / "masks").is_dir():
        masks = {_stem(p): p for p in (root / "masks").iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)}
    by_stem: dict[str, Path] = {}
    for p in images:
        if _stem(p) in by_stem:
            raise DatasetError(f"{img_dir} holds both {by_stem[_stem(p)].name} and {p.name}: one image per "
                               "name (masks and labels.csv rows are matched by it)")
        by_stem[_stem(p)] = p
    stray = sorted(m.name for st, m in masks.items() if st not in by_stem)
    if stray:
        raise DatasetError(f"{root / 'masks'}: {', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''} "
                           "has no image of the same name in images/ (a mask is matched to its image by name)")
    labels = _read_labels(root / "labels.csv", {p.name for p in images}, set(by_stem))
    items = []
    for p in images:
        stem = _stem(p)
        row = labels.get(p.name) or labels.get(stem) or {}
        label = _parse_label(row.get("label"), root / "labels.csv", p.name) if row else None
        extras = {k: v for k, v in row.items() if k not in ("file", "label")}
        items.append(Item(stem, p, masks.get(stem), label, extras))
    return items


def _parse_label(text: str | None, csv_path: Path, name: str) -> int | None:
    """labels.csv's label cell: empty -> None (unknown), else exactly 0 or 1."""
    t = (text or "").strip()
    if t == "":
        return None
    try:
        v = float(t)
    except ValueError:
        v = None
    if v not in (0.0, 1.0):
        raise DatasetError(f"{csv_path}: label of {name} must be 0 or 1 (or empty for unknown), got {t!r}")
    return int(v)


def _read_labels(csv_path: Path, names: set[str], stems: set[str]) -> dict[str, dict]:
    """labels.csv rows keyed by their ``file`` cell; every row must name an image of the folder once."""
    if not csv_path.exists():
        return {}
    rows: dict[str, dict] = {}
    seen: dict[str, int] = {}
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "file" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise DatasetError(f"{csv_path} must have the columns file,label")
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise DatasetError(f"{csv_path} line {line}: {len(reader.fieldnames)} columns expected "
                                   f"({','.join(reader.fieldnames)})")
            name = (row.get("file") or "").strip()
            if not name:
                raise DatasetError(f"{csv_path} line {line}: the file column is empty")
            key = name if name in names or name in stems else None
            if key is None:
                raise DatasetError(f"{csv_path} line {line}: {name} is not in images/ (file names with their "
                                   "suffix, e.g. case01.png or case01.nii.gz)")
            ident = key if key in stems else _stem(Path(key))
            if ident in seen:
                raise DatasetError(f"{csv_path}: {name} is listed twice (lines {seen[ident]} and {line})")
            seen[ident] = line
            rows[key] = row
    return rows


@dataclass
class Sample:
    """One 2D sample: a slice of an item."""

    item: Item
    index: int
    image: np.ndarray
    mask: np.ndarray | None
    label: int | None


def _shape_text(shape) -> str:
    s, h, w = shape
    return f"{w}x{h} pixels" + (f" x {s} slices" if s > 1 else "")


def read_matching_mask(mask_path: Path, image: np.ndarray, image_path: Path, what: str = "mask") -> np.ndarray:
    """``read_mask(mask_path)``, which must have the image's shape (``DatasetError`` naming both)."""
    mask = read_mask(mask_path)
    if mask.shape != image.shape:
        raise DatasetError(
            f"{what} {mask_path} is {_shape_text(mask.shape)} but image {image_path} is "
            f"{_shape_text(image.shape)}: they must match"
        )
    return mask


def item_samples(item: Item) -> list[Sample]:
    """All 2D samples of one item: label from the mask (any lesion pixel), else labels.csv
    (a volume's csv label only says 'normal' for all its slices), else unknown."""
    img = read_image(item.image_path)
    mask = None
    if item.mask_path is not None:
        mask = read_matching_mask(item.mask_path, img, item.image_path)
    out = []
    for i in range(img.shape[0]):
        m = mask[i] if mask is not None else None
        if m is not None:
            label = int(m.any())
        elif img.shape[0] == 1:
            label = item.label
        else:
            label = None if item.label is None else (0 if item.label == 0 else None)
        out.append(Sample(item, i, img[i], m, label))
    return out


def iter_samples(root: Path):
    """Yield every 2D ``Sample`` of a folder (one per PNG, one per slice of a volume)."""
    for item in read_folder(root):
        yield from item_samples(item)


# ----------------------------------------------------------------------------- writing


def write_image(root: Path, name: str, image: np.ndarray, spacing=(1.0, 1.0, 1.0), scale: float | None = None) -> Path:
    """2D -> 16-bit PNG (intensities x ``scale``, default so that the max is 60000); 3D (S,H,W) -> NIfTI."""
    d = Path(root) / "images"
    d.mkdir(parents=True, exist_ok=True)
    return _write(d, name, image, spacing, scale, is_mask=False)


def write_mask(root: Path, name: str, mask: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> Path:
    d = Path(root) / "masks"
    d.mkdir(parents=True, exist_ok=True)
    return _write(d, name, np.asarray(mask) > 0, spacing, None, is_mask=True)


def _write(d: Path, name: str, a: np.ndarray, spacing, scale, is_mask: bool) -> Path:
    a = np.asarray(a)
    if a.ndim == 2:
        if is_mask:
            out = (a > 0).astype(np.uint8) * 255
        else:
            s = scale if scale is not None else 60000.0 / max(float(a.max()), 1e-6)
            out = np.clip(np.round(a.astype(np.float64) * s), 0, 65535).astype(np.uint16)
        p = d / f"{name}.png"
        Image.fromarray(out).save(p)
        return p
    if a.ndim != 3:
        raise DatasetError(f"cannot write an array of shape {a.shape}")
    import nibabel as nib

    ds, dh, dw = spacing
    data = display_to_ras(a.astype(np.uint8) if is_mask else a.astype(np.float32))
    affine = centred_affine(data.shape, (dw, dh, ds))
    # RAS+ canonical: rows/cols were flipped for display, so the array here is RAS already
    p = d / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(p))
    return p


def centred_affine(ras_shape: tuple[int, int, int], zooms: tuple[float, float, float]) -> np.ndarray:
    """The RAS+ affine of a volume written here: voxel sizes ``zooms`` and the origin (0, 0, 0) at the
    volume's centre, so that positions read as offsets from it (R/L of the midline for a centred
    brain). Not scanner or MNI coordinates: the data the project writes have none to keep."""
    affine = np.diag([*map(float, zooms), 1.0])
    affine[:3, 3] = -(np.asarray(ras_shape[:3], np.float64) - 1) / 2 * np.asarray(zooms, np.float64)
    return affine


def write_labels(root: Path, rows: list[dict]) -> Path:
    """labels.csv with columns file,label then any extra keys (union, in first-seen order)."""
    cols = ["file", "label"]
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    p = Path(root) / "labels.csv"
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return p
