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
    notes: list[str] = field(default_factory=list)  # e.g. "4D file: first volume used"
    study_uid: str | None = field(default=None, repr=False)
    content_hash: str | None = field(default=None, repr=False)
    window: tuple[float, float] | None = None  # (centre, width) from the file, if any
    meta: dict = field(default_factory=dict, repr=False)  # non-identifying DICOM/NIfTI facts

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

    def __repr__(self) -> str:
        s = self.spacing
        kind = "volume" if self.is_volume else "2D image"
        return (
            f"Scan({kind}, shape={self.shape}, spacing=({s[0]:.2f}, {s[1]:.2f}, {s[2]:.2f}) mm, "
            f"modality={self.modality}, source={self.source}, orientation={self.orientation!r}"
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


def ras_to_display(data: np.ndarray) -> np.ndarray:
    """A 3D array in RAS+ voxel order (nibabel canonical) -> (S, H, W) display order.

    Axial slices inferior->superior; rows anterior->posterior; columns patient right->left.
    """
    a = np.asarray(data)
    return np.ascontiguousarray(np.transpose(a, (2, 1, 0))[:, ::-1, ::-1])


def display_to_ras(vox: np.ndarray) -> np.ndarray:
    """Inverse of ``ras_to_display``."""
    return np.ascontiguousarray(np.transpose(np.asarray(vox)[:, ::-1, ::-1], (2, 1, 0)))
