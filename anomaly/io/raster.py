"""PNG / JPEG / TIFF -> ``Scan`` via Pillow.

8- and 16-bit grey images are kept as they are; RGB, RGBA and palette images become
grey by luminance (0.299 R + 0.587 G + 0.114 B; alpha ignored). A multi-page TIFF
whose pages share one size is read as a volume of slices. The patient frame of such
an image is unknown (``known_frame=False``), spacing is 1 pixel, modality 'unknown'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from anomaly.errors import CorruptFileError, FileTooLargeError, UnsupportedFileError
from anomaly.scan import Scan

_FORMATS = {"png": "PNG", "jpeg": "JPEG", "tiff": "TIFF"}
_GREY_MODES = {"1", "L", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"}
MAX_PAGES = 4096


def to_grey(im: Image.Image) -> np.ndarray:
    """One PIL frame -> 2D float32 grey array (luminance for colour)."""
    mode = im.mode
    if mode in _GREY_MODES:
        return np.asarray(im).astype(np.float32)
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0)).astype(np.float32)
    if mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        a = np.asarray(im)
    else:  # P, PA, CMYK, YCbCr, LAB, HSV, ...
        a = np.asarray(im.convert("RGB"))
    a = a[..., :3].astype(np.float32)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def _decode_error(name: str, label: str, e: Exception):
    msg = str(e).lower()
    if isinstance(e, Image.DecompressionBombError):
        return FileTooLargeError(f"{name}: the image has too many pixels to load safely")
    if "not supported" in msg or "unsupported" in msg or "not available" in msg:
        return UnsupportedFileError(f"{name}: this {label} variant is not supported ({type(e).__name__})")
    return CorruptFileError(f"{name}: the {label} image is truncated or corrupt ({type(e).__name__})")


def load_raster(path: Path, name: str, kind: str = "png", max_bytes: int = 512 * 1024 * 1024) -> Scan:
    """Read a PNG, JPEG or (multi-page) TIFF file (see module docstring)."""
    label = _FORMATS.get(kind, kind.upper())
    try:
        im = Image.open(path, formats=list(_FORMATS.values()))
    except Exception as e:  # noqa: BLE001 - UnidentifiedImageError, SyntaxError, ...
        raise CorruptFileError(f"{name}: not a readable {label} image ({type(e).__name__})") from None
    notes: list[str] = []
    with im:
        try:
            w, h = im.size
            n_pages = int(getattr(im, "n_frames", 1) or 1) if im.format == "TIFF" else 1
        except Exception as e:  # noqa: BLE001
            raise _decode_error(name, label, e) from None
        if w <= 0 or h <= 0:
            raise CorruptFileError(f"{name}: the {label} header declares an empty image")
        if n_pages > MAX_PAGES:
            raise FileTooLargeError(f"{name}: {n_pages} pages (more than {MAX_PAGES})")
        if w * h * n_pages * 4 > max_bytes:
            raise FileTooLargeError(
                f"{name}: {w}x{h} pixels x {n_pages} page(s) would need "
                f"{w * h * n_pages * 4 / 1e6:.1f} MB, above the limit"
            )
        fmt, mode = im.format, im.mode
        pages: list[np.ndarray] = []
        try:
            if n_pages == 1:
                frame = im
                if fmt == "JPEG":
                    try:
                        frame = ImageOps.exif_transpose(im) or im
                    except Exception:  # noqa: BLE001 - broken EXIF: keep the stored orientation
                        frame = im
                frame.load()
                pages.append(to_grey(frame))
            else:
                for i in range(n_pages):
                    im.seek(i)
                    im.load()
                    if im.size != (w, h):
                        notes.append(f"TIFF pages differ in size: only the first {len(pages)} page(s) used")
                        break
                    pages.append(to_grey(im))
        except (FileTooLargeError, UnsupportedFileError, CorruptFileError):
            raise
        except MemoryError:
            raise FileTooLargeError(f"{name}: the image is too large to decode") from None
        except Exception as e:  # noqa: BLE001 - truncated data, decoder errors
            raise _decode_error(name, label, e) from None
    vox = np.stack(pages).astype(np.float32)
    n = vox.shape[0]
    # an image file holds no pixel size: areas (mm², cm²) and extents (mm) are in pixels then
    notes.append("no pixel size in an image file: areas and extents are in pixels")
    if n > 1:
        notes.append(f"multi-page TIFF: {n} pages read as slices (orientation unknown)")
        description = f"{fmt} image stack, {n} pages {vox.shape[1]}x{vox.shape[2]} pixels"
    else:
        description = f"{fmt} image, {vox.shape[1]}x{vox.shape[2]} pixels"
    return Scan(
        voxels=vox,
        spacing=(1.0, 1.0, 1.0),
        spacing_known=False,
        modality="unknown",
        source=(fmt or label).lower(),
        orientation="as stored (image file: patient frame unknown)",
        description=description,
        is_volume=n > 1,
        known_frame=False,
        notes=notes,
        meta={"format": fmt, "mode": mode, "pages": n},
    )
