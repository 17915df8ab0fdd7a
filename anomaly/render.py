"""Rendering driven by a config (colormap, opacity, fill or contour), kept out of the models.

Maps are drawn in calibrated units (1.0 = the method's healthy pixel threshold) on one
shared scale [0, ``RenderConfig.vmax``] for every method, so colours compare across methods.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from anomaly.scan import PLANE_LABELS

PANEL = 256
CAPTION = 20  # a grid row's caption line above its panels
ROW = PANEL + 22  # a grid row's height: caption, panels and a gap


@dataclass
class RenderConfig:
    colormap: str = "inferno"
    alpha: float = 0.5
    mode: str = "fill"  # "fill" | "contour" | "both"
    vmax: float = 3.0  # calibrated units: 1.0 = healthy threshold
    threshold: float = 1.0  # overlay shows map >= threshold (calibrated units)
    contour_rgb: tuple[int, int, int] = (0, 255, 128)
    zoom: float = 1.0  # every panel shows the same 1/zoom of the slice (synchronised zoom)
    zoom_centre: tuple[float, float] | None = None  # (row, col) in the slice's pixels; None: its centre


def zoom_window(shape: tuple[int, int], zoom: float = 1.0, centre: tuple[float, float] | None = None
                ) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1): the part of a ``shape`` slice that a ``zoom`` x view centred on ``centre``
    shows, shifted (not shrunk) to stay inside the slice; the whole slice at zoom 1."""
    h, w = int(shape[0]), int(shape[1])
    z = float(zoom) if zoom and np.isfinite(zoom) else 1.0
    z = min(max(z, 1.0), 16.0)
    if z <= 1.0:
        return 0, h, 0, w
    ch, cw = max(1, round(h / z)), max(1, round(w / z))
    cr, cc = ((h - 1) / 2, (w - 1) / 2) if centre is None else (float(centre[0]), float(centre[1]))
    r0 = int(np.clip(round(cr - ch / 2), 0, h - ch))
    c0 = int(np.clip(round(cc - cw / 2), 0, w - cw))
    return r0, r0 + ch, c0, c0 + cw


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def grey_rgb(img_u8: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(img_u8, np.uint8)[..., None], 3, axis=2)


def heatmap_rgb(cal_map: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Calibrated map -> RGB uint8 on the shared scale [0, vmax]."""
    x = np.clip(np.nan_to_num(cal_map) / cfg.vmax, 0, 1)
    return (colormaps[cfg.colormap](x)[..., :3] * 255).astype(np.uint8)


def overlay_rgb(img_u8: np.ndarray, cal_map: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Heat map blended on the image where map >= threshold, and/or the region's contour."""
    base = grey_rgb(img_u8).astype(np.float32)
    region = np.nan_to_num(cal_map) >= cfg.threshold
    if cfg.mode in ("fill", "both"):
        hm = heatmap_rgb(cal_map, cfg).astype(np.float32)
        a = cfg.alpha * region[..., None]
        base = base * (1 - a) + hm * a
    out = np.clip(base, 0, 255).astype(np.uint8)
    if cfg.mode in ("contour", "both") and region.any():
        edge = region & ~ndimage.binary_erosion(region, iterations=1)
        # about one panel pixel wide: thickened only on large slices, which the panel shrinks (a
        # 90-pixel slice's 1-pixel edge is already 3 panel pixels; thickened, it hid a 20 mm lesion)
        grow = round(min(region.shape) / (2 * PANEL))
        if grow:
            edge = ndimage.binary_dilation(edge, iterations=grow)
        out[edge] = cfg.contour_rgb
    return out


def letterbox(h: int, w: int, aspect: float = 1.0, size: int = PANEL) -> tuple[int, int, int, int]:
    """(width, height, left, top) of an h x w image (rows ``aspect`` times its columns' size) drawn
    as large as fits, centred, in a size x size panel."""
    hh = h * aspect
    s = size / max(hh, w)
    nw, nh = max(1, round(w * s)), max(1, round(hh * s))
    return nw, nh, (size - nw) // 2, (size - nh) // 2


def fit_panel(rgb: np.ndarray, size: int = PANEL, aspect: float = 1.0) -> Image.Image:
    """Letterbox an RGB array into a size x size panel, honouring pixel aspect (row/col mm)."""
    nw, nh, left, top = letterbox(*rgb.shape[:2], aspect, size)
    panel = Image.new("RGB", (size, size), (0, 0, 0))
    panel.paste(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), (left, top))
    return panel


def panel_pixel(x: float, y: float, shape: tuple[int, int], aspect: float = 1.0, zoom: float = 1.0,
                centre: tuple[float, float] | None = None) -> tuple[int, int] | None:
    """The slice pixel (row, col) under a click at (x, y) on a ``compose_grid`` image of a ``shape``
    slice, whichever panel and row it falls on; None for a click outside every picture (a caption,
    the colour bar, the letterbox)."""
    x, y = float(x), float(y)
    if x < 0 or y < 0 or x >= 4 * PANEL:
        return None
    yb = y % ROW - CAPTION
    if yb < 0 or yb >= PANEL:
        return None
    r0, r1, c0, c1 = zoom_window(shape, zoom, centre)
    ch, cw = r1 - r0, c1 - c0
    nw, nh, left, top = letterbox(ch, cw, aspect)
    px, py = x % PANEL - left, yb - top
    if not (0 <= px < nw and 0 <= py < nh):
        return None
    return int(r0 + py / nh * ch), int(c0 + px / nw * cw)


def draw_orientation(panel: Image.Image, plane: str | None, top: int = 19) -> Image.Image:
    """Orientation letters at the panel's edges (radiological convention); the top letter ``top`` px
    down (below the 17-px title bar ``label_panel`` paints over each grid panel's top)."""
    if not plane or plane not in PLANE_LABELS:
        return panel
    top_txt, bottom, left, right = PLANE_LABELS[plane]
    d = ImageDraw.Draw(panel)
    f = _font(13)
    w, h = panel.size
    for txt, xy in ((top_txt, (w // 2 - 4, top)), (bottom, (w // 2 - 4, h - 16)), (left, (3, h // 2 - 7)), (right, (w - 11, h // 2 - 7))):
        # a dark outline: legible on bright scalp without hiding it behind a yellow blot
        d.text(xy, txt, fill=(255, 255, 0), font=f, stroke_width=2, stroke_fill=(0, 0, 0))
    return panel


def blend_rgb(img_u8: np.ndarray, scaled_map: np.ndarray, cfg: RenderConfig) -> np.ndarray:
    """Heat map blended on the image in proportion to the map's value, with no threshold: for maps
    that have no healthy-calibrated threshold (uncertainty, discrepancies, votes on a per-scan scale)."""
    base = grey_rgb(img_u8).astype(np.float32)
    hm = heatmap_rgb(scaled_map, cfg).astype(np.float32)
    a = cfg.alpha * np.clip(np.nan_to_num(scaled_map) / cfg.vmax, 0, 1)[..., None]
    return np.clip(base * (1 - a) + hm * a, 0, 255).astype(np.uint8)


def colorbar(cfg: RenderConfig, height: int = PANEL, width: int = 70, label: str = "x healthy threshold",
             threshold_line: bool = True) -> Image.Image:
    """Vertical colour bar of the shared calibrated scale, with ticks and (optionally) the threshold line."""
    bar = np.linspace(cfg.vmax, 0, height - 20)[:, None].repeat(14, 1)
    rgb = heatmap_rgb(bar, cfg)
    im = Image.new("RGB", (width, height), (20, 20, 20))
    im.paste(Image.fromarray(rgb), (4, 10))
    d = ImageDraw.Draw(im)
    f = _font(11)
    # round ticks: 0, 1, 2, 3 on the shared 0-3 scale, 0, 0.5, 1 on an extra map's 0-1 (not 0.3, 0.7)
    step = 1.0 if cfg.vmax > 1.5 else 0.5 if cfg.vmax > 0.6 else cfg.vmax / 2
    for v in np.arange(0, cfg.vmax + 1e-9, step):
        y = 10 + int((1 - v / cfg.vmax) * (height - 21))
        d.line([(18, y), (22, y)], fill=(230, 230, 230))
        d.text((24, y - 6), f"{v:.1f}", fill=(230, 230, 230), font=f)
    if threshold_line:
        yt = 10 + int((1 - cfg.threshold / cfg.vmax) * (height - 21))
        d.line([(2, yt), (20, yt)], fill=cfg.contour_rgb, width=2)
    return im


def label_panel(panel: Image.Image, text: str) -> Image.Image:
    d = ImageDraw.Draw(panel)
    d.rectangle([0, 0, panel.size[0], 16], fill=(0, 0, 0))
    d.text((4, 2), text, fill=(255, 255, 255), font=_font(12))
    return panel


@dataclass
class GridRow:
    """One method's row: input, pseudo-healthy (or None), calibrated map, and a caption.

    ``calibrated=False`` (an extra map on a per-scan scale, e.g. DDAD's discrepancies or an
    uncertainty): drawn on its own 0-1 scale (1.0 = its reference, e.g. its 99.5th percentile in
    the scan), its overlay blends the map without the healthy threshold, which it has not, and its
    map column is headed ``map_title``."""

    name: str
    image_u8: np.ndarray
    pseudo_healthy_u8: np.ndarray | None
    cal_map: np.ndarray
    caption: str = ""
    empty_note: str = "no reconstruction:\nfeature-space method"
    map_title: str = "residual map"
    calibrated: bool = True


def compose_grid(rows: list[GridRow], cfg: RenderConfig, plane: str | None = None, aspect: float = 1.0,
                 scale_note: str = "calibrated", slice_label: str = "", window_label: str = "") -> Image.Image:
    """Side-by-side grid, one row per method: input | pseudo-healthy | residual | overlay | bar.
    ``slice_label`` (the slice's position in mm, its DICOM instance) heads each input panel, and
    ``window_label`` (its display window, "L40 W80") sits in its bottom left corner."""
    n = max(1, len(rows))
    r0, r1, c0, c1 = zoom_window(rows[0].image_u8.shape[:2], cfg.zoom, cfg.zoom_centre) if rows else (0, 0, 0, 0)

    def panel(rgb: np.ndarray) -> Image.Image:  # every panel of every row: the same window of the slice
        return draw_orientation(fit_panel(np.ascontiguousarray(rgb[r0:r1, c0:c1]), aspect=aspect), plane)

    if cfg.zoom > 1.0 and rows:
        slice_label = f"{slice_label}  x{cfg.zoom:g}".strip()
    bar_w = 80
    cols = 4
    W = cols * PANEL + bar_w
    H = n * ROW + 4
    out = Image.new("RGB", (W, H), (12, 12, 12))
    d = ImageDraw.Draw(out)
    for r, row in enumerate(rows):
        y = r * ROW
        d.text((4, y + 3), f"{row.name}  {row.caption}", fill=(255, 255, 255), font=_font(13))
        y += CAPTION
        p_in = panel(grey_rgb(row.image_u8))
        if window_label:
            ImageDraw.Draw(p_in).text((3, PANEL - 15), window_label.replace(" ", "  "), fill=(255, 255, 0), font=_font(11), stroke_width=2,
                                      stroke_fill=(0, 0, 0))
        if row.pseudo_healthy_u8 is not None:
            p_ph = panel(grey_rgb(row.pseudo_healthy_u8))
            ph_label = "pseudo-healthy"
        else:
            p_ph = Image.new("RGB", (PANEL, PANEL), (30, 30, 30))
            ImageDraw.Draw(p_ph).text((10, PANEL // 2 - 14), row.empty_note, fill=(200, 200, 200), font=_font(12))
            ph_label = "pseudo-healthy"
        # an uncalibrated map runs from 0 to its own reference (1.0), not on the shared 0-3 scale
        rcfg = cfg if row.calibrated else replace(cfg, vmax=1.0)
        p_map = panel(heatmap_rgb(row.cal_map, rcfg))
        ov = overlay_rgb(row.image_u8, row.cal_map, cfg) if row.calibrated else blend_rgb(row.image_u8, row.cal_map, rcfg)
        p_ov = panel(ov)
        # the map panels name their method too: on a phone the grid scrolls sideways past the row caption
        tag = row.name.split(" · ")[0]
        tag = f" · {tag}" if tag and " " not in tag else ""
        titles = (f"input  {slice_label}" if slice_label else "input", ph_label, f"{row.map_title}{tag}",
                  ("overlay" if row.calibrated else "blend (no threshold)") + tag)
        for c, (p, t) in enumerate(zip((p_in, p_ph, p_map, p_ov), titles)):
            out.paste(label_panel(p, t), (c * PANEL, y))
        for c in range(1, cols):  # a rule between panels: each orientation letter reads as its own panel's
            d.line([(c * PANEL, y), (c * PANEL, y + PANEL - 1)], fill=(90, 90, 90), width=1)
        cb = colorbar(rcfg, PANEL, bar_w - 4, threshold_line=row.calibrated)
        out.paste(cb, (cols * PANEL + 2, y))
    if not all(r.calibrated for r in rows):  # extra rows are on their own scales (their captions say which)
        scale_note = "mixed scales"
    d.text((cols * PANEL + 2, H - 14), scale_note[:14], fill=(200, 200, 200), font=_font(10))
    return out
