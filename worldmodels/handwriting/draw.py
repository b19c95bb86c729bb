"""Drawing stroke-3 data as SVG or PNG: panels of drawings in a grid, one colour per stroke.

The geometry (where each stroke lands in the picture) is computed once; the SVG and the
PNG writers only paint it. Coordinates are image coordinates: y grows downwards.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worldmodels import atomic
from worldmodels.device import resolve_device
from worldmodels.errors import UserError, require_finite
from worldmodels.handwriting.model import sample
from worldmodels.handwriting.train import checkpoint_path, load_checkpoint, unpack_drawings

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
           "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
CELL = 96      # pixels per drawing
MARGIN = 8     # pixels around a drawing inside its cell
TITLE = 20     # pixels above each panel for its title
GAP = 16       # pixels between panels


def strokes(drawing: np.ndarray) -> list[np.ndarray]:
    """Absolute (x, y) polylines, one per stroke: a stroke ends at a point with pen_lift = 1."""
    xy = np.cumsum(drawing[:, :2].astype(np.float64), axis=0)
    ends = np.flatnonzero(drawing[:, 2] > 0.5) + 1
    return [part for part in np.split(xy, ends) if len(part)]


@dataclass
class Picture:
    width: int
    height: int
    titles: list[tuple[float, float, str]]               # x, y, text
    lines: list[tuple[list[tuple[float, float]], str]]   # pixel points, colour


def layout(panels: list[tuple[str, list[np.ndarray]]], columns: int = 0) -> Picture:
    """Panels side by side, each a grid of cells; every drawing is scaled to fit its cell."""
    n_max = max((len(d) for _, d in panels), default=1) or 1
    cols = columns or math.ceil(math.sqrt(n_max))
    rows = math.ceil(n_max / cols)
    panel_w = cols * CELL
    titles, lines = [], []
    for p, (title, drawings) in enumerate(panels):
        x0 = p * (panel_w + GAP)
        titles.append((x0 + 4, TITLE - 6, title))
        for i, drawing in enumerate(drawings):
            cx, cy = x0 + (i % cols) * CELL, TITLE + (i // cols) * CELL
            polylines = strokes(drawing)
            if not polylines:
                continue
            every = np.concatenate(polylines)
            lo, hi = every.min(0), every.max(0)
            size = max(float((hi - lo).max()), 1e-9)
            scale = (CELL - 2 * MARGIN) / size
            centre = (lo + hi) / 2
            for s, line in enumerate(polylines):
                px = (line - centre) * scale + (cx + CELL / 2, cy + CELL / 2)
                lines.append(([tuple(map(float, q)) for q in px], COLOURS[s % len(COLOURS)]))
    width = len(panels) * panel_w + (len(panels) - 1) * GAP
    return Picture(width, TITLE + rows * CELL, titles, lines)


def to_svg(picture: Picture) -> str:
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{picture.width}" '
           f'height="{picture.height}" viewBox="0 0 {picture.width} {picture.height}">',
           f'<rect width="{picture.width}" height="{picture.height}" fill="white"/>']
    for x, y, text in picture.titles:
        safe = text.replace("&", "&amp;").replace("<", "&lt;")
        out.append(f'<text x="{x:.1f}" y="{y:.1f}" font-family="sans-serif" '
                   f'font-size="12">{safe}</text>')
    for points, colour in picture.lines:
        if len(points) == 1:
            (x, y), = points
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.2" fill="{colour}"/>')
        else:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" '
                       'stroke-width="1.5" stroke-linecap="round" stroke-linejoin="round"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def to_png(picture: Picture, path: Path) -> None:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (picture.width, picture.height), "white")
    pen = ImageDraw.Draw(image)
    for x, y, text in picture.titles:
        pen.text((x, y - 10), text, fill="black")
    for points, colour in picture.lines:
        if len(points) == 1:
            (x, y), = points
            pen.ellipse((x - 1.2, y - 1.2, x + 1.2, y + 1.2), fill=colour)
        else:
            pen.line(points, fill=colour, width=2, joint="curve")
    image.save(path)


def save_picture(panels: list[tuple[str, list[np.ndarray]]], path: Path, columns: int = 0) -> None:
    """Write `panels` to `path`: SVG or PNG by its suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise UserError(f"{path}: output must end in .svg or .png")
    picture = layout(panels, columns)
    atomic.writable_dir(path.parent, "--out")
    with atomic.replacing(path) as tmp:
        if suffix == ".svg":
            tmp.write_text(to_svg(picture))
        else:
            to_png(picture, tmp)  # PIL picks the format from the suffix: the temp keeps it


def cli_sample(args: argparse.Namespace) -> int:
    if Path(args.out).suffix.lower() not in (".svg", ".png"):
        raise UserError(f"{args.out}: --out must end in .svg or .png")
    for b in args.bias:
        require_finite("--bias", b, at_least=0)
    require_finite("--temperature", args.temperature, above=0)
    model, payload = load_checkpoint(checkpoint_path(args.run))
    model.to(resolve_device(args.device))
    points = args.points or model.config.typical_points
    panels = [(f"samples, bias {b:g}", sample(model, args.n, points, bias=b,
                                             temperature=args.temperature, seed=args.seed))
              for b in args.bias]
    real = unpack_drawings(payload)[:args.n]
    if real:
        panels.append(("validation data", real))
    save_picture(panels, args.out)
    print(f"handwriting: {args.n} samples x {len(args.bias)} bias values "
          f"({points} points each) -> {args.out}")
    return 0
