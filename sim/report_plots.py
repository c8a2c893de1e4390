"""Helpers every plot of fleettwin shares: text any name can be drawn in, labels that never overlap, log axes
where values span decades.

Names come from users (pools, regions, tenants) and may be in any script. Matplotlib's default font (DejaVu
Sans) lacks CJK, for one, and draws boxes with a warning per missing glyph; ``drawable`` adds an installed
font that has the glyphs to the fallback list (matplotlib >= 3.6 falls back per glyph), and writes what no
installed font can draw as ``\\u`` escapes, so a plot is always legible and never warns.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import numpy as np

DEFAULT_FAMILY = "DejaVu Sans"
LABEL_OFFSETS = ((6, 4), (6, -12), (-6, 4), (-6, -12), (0, 10), (0, -18), (12, 14), (-12, -22))


@functools.lru_cache(maxsize=64)
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):
        return frozenset()


def _font_path(family: str) -> str | None:
    from matplotlib import font_manager

    for f in font_manager.fontManager.ttflist:
        if f.name == family:
            return f.fname
    return None


@functools.lru_cache(maxsize=256)
def _font_for(codepoint: int) -> str | None:
    """The family of an installed font that draws ``codepoint``, if any."""
    from matplotlib import font_manager

    for f in font_manager.fontManager.ttflist:
        if f.fname.lower().endswith((".ttf", ".otf", ".ttc")) and codepoint in _charmap(f.fname):
            return f.name
    return None


def drawable(texts: Iterable[str]) -> dict[str, str]:
    """Each text as it can be drawn: fonts for its characters are added to matplotlib's fallback list; a
    character no installed font has becomes ``\\uXXXX``. Returns original -> drawable."""
    import matplotlib

    texts = [str(t) for t in texts]
    base_path = _font_path(DEFAULT_FAMILY)
    base = _charmap(base_path) if base_path else frozenset()
    missing = sorted({ord(ch) for t in texts for ch in t if ord(ch) > 126 and ord(ch) not in base})
    families: list[str] = []
    unknown: set[int] = set()
    for cp in missing:
        family = _font_for(cp)
        if family is None:
            unknown.add(cp)
        elif family not in families:
            families.append(family)
    if families:
        current = list(matplotlib.rcParams["font.family"])
        matplotlib.rcParams["font.family"] = [*current, *(f for f in families if f not in current)]
    return {t: "".join(f"\\u{ord(ch):04x}" if ord(ch) in unknown else ch for ch in t) for t in texts}


def log_if_wide(ax, axis: str, values: Sequence[float], *, decades: float = 1.5) -> bool:
    """Put ``axis`` ("x" or "y") on a log scale when its positive values span more than ``decades``."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size < 2 or np.log10(v.max() / v.min()) <= decades:
        return False
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    return True


def place_labels(ax, points: Sequence[tuple[float, float, str, str]], *, fontsize: float = 7) -> int:
    """Annotate ``(x, y, text, colour)`` points without two labels overlapping or leaving the axes: each label
    tries a few offsets around its point and is left out when none is free. Returns how many were left
    out. Call after the axes' limits and scales are final."""
    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = []
    hidden = 0
    for x, y, text, colour in points:
        if not (np.isfinite(x) and np.isfinite(y)):
            hidden += 1
            continue
        for dx, dy in LABEL_OFFSETS:
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                fontsize=fontsize,
                color=colour,
                ha="left" if dx >= 0 else "right",
            )
            box = ann.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if inside and not any(box.overlaps(t) for t in taken):
                taken.append(box)
                break
            ann.remove()
        else:
            hidden += 1
    return hidden
