"""Fitness per generation as a small SVG (no plotting library needed): the dream's best and
mean fitness from RUN/logs/evolve.csv, the CMA-ES mean scored in the real env from
RUN/logs/evolve_real.csv, and a dashed line where each iteration of iterate retrained M."""

from __future__ import annotations

from pathlib import Path

from worldmodels import atomic
from worldmodels.logger import read_csv
from worldmodels.run import RunPaths, load_run_config, snapshot_generation

WIDTH, HEIGHT, PAD = 640, 360, 50
SERIES = (("dream best", "#d62728"), ("dream mean", "#1f77b4"), ("real (CMA-ES mean)", "#2ca02c"))


def iteration_starts(paths: RunPaths) -> list[int]:
    """The generation after which each finished iteration's evolution began (iterate.csv):
    where the snapshot before it ended."""
    if not (paths.logs / "iterate.csv").exists() or not paths.config.exists():
        return []
    config = load_run_config(paths)
    return [snapshot_generation(paths, int(row["step"]) - 1, config.evolve, config.iterate)
            for row in read_csv(paths.logs / "iterate.csv")]


def fitness_svg(run: Path, out: Path | None = None) -> Path | None:
    """Write the plot (default RUN/fitness.svg); None if evolution has not logged yet."""
    paths = RunPaths(Path(run))
    if not (paths.logs / "evolve.csv").exists():
        return None
    rows = read_csv(paths.logs / "evolve.csv")
    real_csv = paths.logs / "evolve_real.csv"
    real = read_csv(real_csv) if real_csv.exists() else []
    lines = [[(r["step"], r["best"]) for r in rows], [(r["step"], r["mean"]) for r in rows],
             [(r["step"], r["real_mean"]) for r in real]]
    points = [p for line in lines for p in line]
    x0, x1 = 0.0, max(max(x for x, _ in points), 1.0)
    y0, y1 = min(0.0, min(y for _, y in points)), max(1.0, max(y for _, y in points))

    def xy(x: float, y: float) -> str:
        px = PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)
        py = HEIGHT - PAD - (y - y0) / (y1 - y0) * (HEIGHT - 2 * PAD)
        return f"{px:.1f},{py:.1f}"

    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<polyline points="{xy(x0, y1)} {xy(x0, y0)} {xy(x1, y0)}" fill="none" '
           'stroke="black"/>',
           f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" text-anchor="middle">generation</text>',
           f'<text x="{PAD - 5}" y="{PAD}" text-anchor="end">{y1:.0f}</text>',
           f'<text x="{PAD - 5}" y="{HEIGHT - PAD}" text-anchor="end">{y0:.0f}</text>',
           f'<text x="{WIDTH - PAD}" y="{HEIGHT - PAD + 15}" text-anchor="end">{x1:.0f}</text>']
    if y0 < 0 < y1:
        svg.append(f'<polyline points="{xy(x0, 0)} {xy(x1, 0)}" stroke="#bbb" '
                   'stroke-dasharray="4"/>')
    for i, gen in enumerate(iteration_starts(paths), 1):  # where M changed under C
        svg += [f'<polyline points="{xy(gen, y0)} {xy(gen, y1)}" stroke="#999" '
                'stroke-dasharray="2,3"/>',
                f'<text x="{xy(gen, y1).split(",")[0]}" y="{PAD - 6}" text-anchor="middle" '
                f'fill="#666">it {i}</text>']
    for i, ((name, color), line) in enumerate(zip(SERIES, lines, strict=True)):
        if line:
            pts = " ".join(xy(x, y) for x, y in line)
            svg.append(f'<polyline points="{pts}" fill="none" stroke="{color}" '
                       'stroke-width="2"/>')
            svg += [f'<circle cx="{p.split(",")[0]}" cy="{p.split(",")[1]}" r="3" '
                    f'fill="{color}"/>' for p in pts.split()] if name.startswith("real") else []
        svg.append(f'<text x="{PAD + 10}" y="{PAD + 15 * i}" fill="{color}">{name}</text>')
    svg.append("</svg>\n")
    out = Path(out) if out is not None else paths.root / "fitness.svg"
    atomic.write_text(out, "\n".join(svg))
    return out
