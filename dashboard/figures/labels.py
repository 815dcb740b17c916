"""Point labels that do not overlap: each label gets a free place beside its point, or none.

Plotly draws a scatter point's text at a fixed offset from the marker and never moves it, so two
points close together print their names over each other. `place_labels` works out, in pixels of an
assumed plot area, where each label's box would fall at each candidate place around its anchor (a
point, or the box around a cluster of touching markers), and keeps the first place inside the plot
that covers no marker, no obstacle (error bars, lines) and no label placed before it. A label with
no such place gets None: the caller names it another way (a number and a legend entry, hover text).

A label is then drawn centred on its box's centre, in data coordinates. A real plot area at least as
large as the assumed one (the narrowest the dashboard draws the chart in) only moves the centres
apart while the boxes keep their size in pixels, so labels that are clear of each other here stay
clear there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

Box = tuple[float, float, float, float]  # left, bottom, right, top in px, y up

# Candidate places of a label around its anchor box, tried in this order: (side x, side y, shift y), where
# side -1/0/1 puts the label left of / centred on / right of the anchor (below / centred / above for
# y), and the shift moves a side label up or down by half its height.
PLACES = ((0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0), (1, 1, 0), (-1, 1, 0), (1, -1, 0), (-1, -1, 0),
          (1, 0, 1), (-1, 0, 1), (1, 0, -1), (-1, 0, -1))


@dataclass(frozen=True)
class Canvas:
    """Pixel geometry of the plot area and of the text in it."""

    width: float = 340.0   # plot area (inside the axes) of a half-page chart at a 1400 px wide page: ~385
    height: float = 250.0  # the trade-off chart sizes its plot area to 270 px
    char_px: float = 6.0   # mean character width at the label font size (10 px): generous, not tight
    line_px: float = 13.0
    marker_px: float = 12.0
    gap_px: float = 3.0    # between a label and its anchor, and kept free around every label

    def size(self, text: str) -> tuple[float, float]:
        """Width and height in px of a label (lines separated by <br>)."""
        lines = str(text).split("<br>")
        return max(len(line) for line in lines) * self.char_px, len(lines) * self.line_px

    def marker(self, x: float, y: float) -> Box:
        """The box of a marker at (x, y) in px."""
        half = self.marker_px / 2
        return x - half, y - half, x + half, y + half


def _overlap(a: Box, b: Box, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


def candidates(anchor: Box, text: str, canvas: Canvas) -> list[Box]:
    """The label's box at each of PLACES around `anchor`, in order."""
    w, h = canvas.size(text)
    left, bottom, right, top = anchor
    mid_x, mid_y, g = (left + right) / 2, (bottom + top) / 2, canvas.gap_px
    boxes = []
    for sx, sy, shift in PLACES:
        cx = mid_x if sx == 0 else (right + g + w / 2 if sx > 0 else left - g - w / 2)
        cy = mid_y if sy == 0 else (top + g + h / 2 if sy > 0 else bottom - g - h / 2)
        cy += shift * h / 2
        boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return boxes


def place_labels(anchors: Sequence[Box], texts: Sequence[str], canvas: Canvas = Canvas(), *,
                 order: Sequence[int] | None = None, markers: Sequence[tuple[Box, int]] = (),
                 obstacles: Sequence[Box] = (), taken: list[Box] | None = None) -> list[Box | None]:
    """The box of each label (px) at the first free place around its anchor; None where none is free
    (and for an empty text).

    markers: (box, index of the label whose anchor it is in); a label may cover only its own. Labels
    are placed in `order` (default: as given), so the important ones go first. `taken` holds boxes of
    labels placed by an earlier call (a second pass with shorter texts); new boxes are added to it.
    """
    if len(anchors) != len(texts):
        raise ValueError(f"place_labels needs one text per anchor, got {len(anchors)} anchors and {len(texts)} texts")
    placed: list[Box] = taken if taken is not None else []
    out: list[Box | None] = [None] * len(anchors)
    for i in (order if order is not None else range(len(anchors))):
        if not texts[i]:
            continue
        for box in candidates(anchors[i], texts[i], canvas):
            if (box[0] >= 0 and box[1] >= 0 and box[2] <= canvas.width and box[3] <= canvas.height
                    and not any(_overlap(box, m) for m, owner in markers if owner != i)
                    and not any(_overlap(box, o) for o in obstacles)
                    and not any(_overlap(box, p, canvas.gap_px) for p in placed)):
                out[i] = box
                placed.append(box)
                break
    return out
