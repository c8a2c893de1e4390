"""Plot helpers: labels never overlap, axes go logarithmic where values span decades, any script can be
drawn."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fleettwin.sim.report_plots import drawable, log_if_wide, place_labels  # noqa: E402


def test_labels_never_overlap_and_the_rest_are_counted():
    fig, ax = plt.subplots(figsize=(4, 3))
    xs = [1.0, 1.01, 1.02, 1.03, 5.0] * 4
    ys = [1.0, 1.0, 1.01, 1.0, 3.0] * 4
    ax.scatter(xs, ys)
    ax.set_xlim(0, 6)
    ax.set_ylim(0, 4)
    hidden = place_labels(
        ax, [(x, y, f"replicas={i}, tp=4", "black") for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
    )
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) + hidden == len(xs) and hidden > 0
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    plt.close(fig)


def test_log_axes_only_where_values_span_decades():
    fig, ax = plt.subplots()
    assert log_if_wide(ax, "x", [0.5, 3.0, 800.0]) and ax.get_xscale() == "log"
    assert not log_if_wide(ax, "y", [1.0, 2.0, 9.0]) and ax.get_yscale() == "linear"
    plt.close(fig)


def test_unknown_glyphs_become_escapes_without_warnings():
    names = drawable(["chat", "聊天", "café"])
    assert names["chat"] == "chat" and names["café"] == "café"  # DejaVu has é
    fig, ax = plt.subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax.set_title(names["聊天"])
        fig.canvas.draw()
    plt.close(fig)
