"""`Scan`: an image volume that carries its geometry, like TorchIO's ScalarImage.

Display convention (radiological), fixed for the whole project:
``voxels`` has shape (S, H, W). For volumes in a known patient frame, axis 0 runs
inferior -> superior (axial slice index), rows run anterior -> posterior and columns
run from the patient's right to the patient's left (so the patient's right is on
the viewer's left, as on a radiology workstation). A 2D image is (1, H, W) as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PLANES = ("axial", "coronal", "sagittal")

# Orientation letters drawn at (top, bottom, left, right) of a displayed slice.
PLANE_LABELS = {
    "axial": ("A", "P", "R", "L"),
    "coronal": ("S", "I", "R", "L"),
    "sagittal": ("S", "I", "A", "P"),
}


@dataclass
class Scan:
    """Float32 voxels (S, H, W) with spacing (ds, dh, dw) in mm and provenance.

    ``description`` never holds patient identifiers; ``study_uid`` is only used to
    derive the salted study key and is never shown or exported.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "unknown"
    source: str = "unknown"  # 'nifti', 'dicom', 'png', ...
    orientation: str = "RAS->radiological axial"  # how voxels were put into display order
    description: str = ""
    series_description: str = ""
    is_volume: bool = True
    known_frame: bool = True  # whether the patient frame is known (False for photos/PNGs)
    spacing_known: bool = True  # whether ``spacing`` is the file's (False: an image file, 1 mm per pixel assumed)
    notes: list[str] = field(default_factory=list)  # e.g. "4D file: first volume used"
    study_uid: str | None = field(default=None, repr=False)
    content_hash: str | None = field(default=None, repr=False)
    window: tuple[float, float] | None = None  # (centre, width) from the file, if any
    meta: dict = field(default_factory=dict, repr=False)  # non-identifying DICOM/NIfTI facts
    # 4 x 4: display voxel (slice, row, column, 1) -> patient RAS+ mm (x to the patient's right,
    # y anterior, z superior); None where the file gives no patient frame (PNG, non-axial DICOM)
    affine: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        v = np.asarray(self.voxels, dtype=np.float32)
        if v.ndim == 2:
            v = v[None]
            self.is_volume = False
        self.voxels = v
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.voxels.shape)  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return self.voxels.shape[0]

    def n_slices_in(self, plane: str) -> int:
        return plane_size(self, plane)

    def slice(self, index: int, plane: str = "axial") -> np.ndarray:
        """A 2D slice in display orientation (see module docstring)."""
        plane = check_plane(plane)
        v = self.voxels
        if plane == "axial":
            return v[int(np.clip(index, 0, v.shape[0] - 1))]
        if plane == "coronal":
            return v[::-1, int(np.clip(index, 0, v.shape[1] - 1)), :]
        return v[::-1, :, int(np.clip(index, 0, v.shape[2] - 1))]

    def slice_spacing(self, plane: str = "axial") -> tuple[float, float]:
        """(row, column) pixel spacing in mm of a slice in ``plane``."""
        ds, dh, dw = self.spacing
        return {"axial": (dh, dw), "coronal": (ds, dw), "sagittal": (ds, dh)}[check_plane(plane)]

    def slice_position(self, index: int, plane: str = "axial") -> str | None:
        """Where the centre of slice ``index`` of ``plane`` lies in the patient frame, as a scanner
        writes it: "S 12.0 mm" (axial), "A 5.0 mm" (coronal), "L 30.0 mm" (sagittal); None without
        an affine. An axial DICOM slice is placed by its own ImagePositionPatient."""
        if self.affine is None or not self.is_volume:
            return None
        axis = {"axial": 0, "coronal": 1, "sagittal": 2}[check_plane(plane)]
        centre = np.array([(n - 1) / 2.0 for n in self.shape] + [1.0])
        centre[axis] = int(index)
        world = np.asarray(self.affine, np.float64) @ centre
        if plane == "axial":  # a DICOM series' own slice positions, where its spacing is not quite even
            ipp = self.meta.get("ImagePositionPatient") or []
            if len(ipp) == self.n_slices and ipp[0] is not None and ipp[int(index)] is not None:
                step = np.asarray(self.affine, np.float64)[:3, 0]
                moved = (np.asarray(ipp[int(index)], np.float64) - np.asarray(ipp[0], np.float64)) * [-1, -1, 1]
                world[:3] += moved - int(index) * step  # LPS -> RAS, less the even step the affine assumes
        coord = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
        v = float(world[coord])
        if not np.isfinite(v):
            return None
        pos, neg = {"axial": ("S", "I"), "coronal": ("A", "P"), "sagittal": ("R", "L")}[plane]
        return f"{pos if v >= 0 else neg} {abs(v):.1f} mm"

    def slice_label(self, index: int, plane: str = "axial") -> str:
        """What a workstation prints beside a slice: its position in mm and, for a DICOM axial
        series, its instance (or frame) number; empty when the file gives neither."""
        parts = [p for p in [self.slice_position(index, plane)] if p]
        if plane == "axial":
            for key, name in (("InstanceNumbers", "instance"), ("frames", "frame")):
                vals = self.meta.get(key) or []
                if len(vals) == self.n_slices and 0 <= int(index) < len(vals) and vals[int(index)] is not None:
                    parts.append(f"{name} {vals[int(index)]}")
                    break
        return " · ".join(parts)

    def __repr__(self) -> str:
        s = self.spacing
        kind = "volume" if self.is_volume else "2D image"
        return (
            f"Scan({kind}, shape={self.shape}, spacing=({s[0]:.2f}, {s[1]:.2f}, {s[2]:.2f}) mm, "
            f"modality={self.modality}, source={self.source}, orientation={self.orientation!r}"
            + (", patient frame known (affine)" if self.affine is not None else "")
            + (f", notes={self.notes}" if self.notes else "")
            + ")"
        )


def check_plane(plane: str) -> str:
    """``plane`` if it is one of ``PLANES``, else an ``InvalidRequestError`` naming them."""
    if plane not in PLANES:
        from anomaly.errors import InvalidRequestError

        raise InvalidRequestError(f"plane must be one of {', '.join(PLANES)}, got {plane!r}")
    return plane


def plane_size(scan: Scan, plane: str) -> int:
    """Number of slices of ``scan`` in ``plane``."""
    return scan.voxels.shape[{"axial": 0, "coronal": 1, "sagittal": 2}[check_plane(plane)]]


def plane_point_to_voxel(plane: str, index: int, row: float, col: float, shape: tuple[int, int, int]
                         ) -> tuple[float, float, float]:
    """The display voxel (slice, row, column) under pixel (``row``, ``col``) of slice ``index`` of
    ``plane`` (``Scan.slice``: coronal and sagittal slices run superior -> inferior down the rows)."""
    s = shape[0]
    if check_plane(plane) == "axial":
        return float(index), float(row), float(col)
    if plane == "coronal":
        return float(s - 1 - row), float(index), float(col)
    return float(s - 1 - row), float(col), float(index)


def voxel_to_plane_point(voxel: tuple[float, float, float], plane: str, shape: tuple[int, int, int]
                         ) -> tuple[int, float, float]:
    """(slice index, row, col) of a display voxel in ``plane``; the inverse of ``plane_point_to_voxel``."""
    z, h, w = (float(v) for v in voxel)
    s = shape[0]
    if check_plane(plane) == "axial":
        return int(round(z)), h, w
    if plane == "coronal":
        return int(round(h)), s - 1 - z, w
    return int(round(w)), s - 1 - z, h


def ras_to_display(data: np.ndarray) -> np.ndarray:
    """A 3D array in RAS+ voxel order (nibabel canonical) -> (S, H, W) display order.

    Axial slices inferior->superior; rows anterior->posterior; columns patient right->left.
    """
    a = np.asarray(data)
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0))[:, ::-1, ::-1])


def display_to_ras(vox: np.ndarray) -> np.ndarray:
    """Inverse of ``ras_to_display``."""
    return np.ascontiguousarray(np.transpose(np.asarray(vox)[:, ::-1, ::-1], (2, 1, 0)))
