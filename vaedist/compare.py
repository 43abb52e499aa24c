"""Compare training runs without W&B: one self-contained HTML report from run directories alone.

    python -m vaedist.compare runs/kl-batch runs/kl-one [-o report.html]
    python -m vaedist.compare runs/sweep-vae --sort val/psnr        # a sweep directory: all its points

Reads only what every run dir holds (config, metrics, latest images; `vaedist.rundir`) and, for a sweep
directory, its sweep.json, so it works on an air-gapped cluster and on runs trained with logging.wandb=false.
Built to stay readable for a whole sweep (30+ runs):
- the runs table, one row per run, ranked by a metric's best value (--sort; the direction of every metric
  vaedist logs is known, vaedist.goals), with the config keys that differ between the runs as columns;
- for a sweep, the ranked metric against each swept parameter, one plot per parameter (log axis where the
  values span a decade or more);
- every logged scalar against the step, the best --highlight runs in colour with a legend, the others grey;
- the reconstructions (and latent projection, prior samples, KL per dimension) side by side, best run first:
  full PNGs for the first --full-images runs, JPEG thumbnails after that, so the page stays a few MB.
One file: mail it, attach it to a ticket, open it offline.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
from PIL import Image  # noqa: E402

from vaedist.config import flatten  # noqa: E402
from vaedist.errors import UserError, run_cli  # noqa: E402
from vaedist.files import check_output_file, write_text_atomic  # noqa: E402
from vaedist.goals import Goal, best as best_of, goal as known_goal  # noqa: E402
from vaedist.rundir import IMAGE_KINDS, RunDir  # noqa: E402
from vaedist.sweep.state import is_sweep_dir, point_run_dirs, read_state  # noqa: E402

MAX_POINTS_PER_CURVE = 600  # a 4.6-inch plot shows no more; keeps the inline SVGs small for long runs
HIGHLIGHT = 5  # runs drawn in colour (with a legend entry) in the curves and parameter plots
FULL_IMAGES = 4  # runs whose pictures are embedded as the full PNG; the rest get JPEG thumbnails
THUMBNAIL_WIDTH = {"reconstructions": 530}  # px; half the 16-image grid, still 32 px per image
DEFAULT_THUMBNAIL_WIDTH = 260
THUMBNAIL_QUALITY = 85
# Keys that identify a run rather than describe an experiment: always different, never interesting.
IGNORED_CONFIG_KEYS = {"run.dir"}
DEFAULT_SORT = ("val/mse", "val/psnr", "val/ssim")  # the first one logged, when no --sort and no sweep metric
IMAGE_TITLES = {
    "reconstructions": "Reconstructions (validation images above their reconstructions)",
    "interpolations": "Interpolations (decoded along the line between two validation images' latent means)",
    "latent_pca": "Latent means, 2-D PCA",
    "prior_samples": "Decoded prior samples z ~ N(0, I) (fixed noise)",
    "kl_per_dim": "KL per latent dimension",
}
GREY = "#9a9a9a"


@dataclass
class RunRecord:
    label: str  # the run dir's name (made unique)
    path: Path
    config: dict[str, object]  # flattened: {"train.mode": "vae", ...}
    rows: list[dict]  # metrics.jsonl
    images: dict[str, Path] = field(default_factory=dict)  # kind -> its latest PNG
    status: str | None = None  # a sweep point's status (sweep.json)
    parameters: dict[str, object] = field(default_factory=dict)  # a sweep point's parameters

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one scalar over the run, in logging order."""
        steps, values = [], []
        for row in self.rows:
            value = row.get(key)
            if _is_number(value) and _is_number(row.get("step")):
                steps.append(float(row["step"]))
                values.append(float(value))
        return steps, values

    def final(self, key: str) -> float | None:
        for row in reversed(self.rows):
            if _is_number(row.get(key)):
                return float(row[key])
        return None

    def best(self, key: str, direction: Goal) -> float | None:
        values = [float(row[key]) for row in self.rows if _is_number(row.get(key))]
        return best_of(values, direction) if values else None

    def value(self, key: str) -> object:
        """A swept parameter's value: what the sweep passed, else the run's config."""
        return self.parameters[key] if key in self.parameters else self.config.get(key, MISSING)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- reading run dirs and sweep dirs -----------------------------------------------------------------


def load_run(path: str | Path) -> RunRecord:
    """Read one run dir; anything that makes it unusable is a one-line UserError naming it."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"run directory '{run.path}' does not exist (pass the run.dir of a training run)")
    if not run.config.is_file() and not run.metrics.is_file():
        raise UserError(
            f"'{run.path}' is not a vaedist run directory: it has neither {run.config.name} nor {run.metrics.name} "
            "(pass the run.dir of a training run, or a sweep directory)"
        )
    images = {kind: run.latest_image(kind) for kind in IMAGE_KINDS if run.latest_image(kind).is_file()}
    return RunRecord(label=run.path.resolve().name, path=run.path, config=flatten(run.read_config() or {}),
                     rows=run.read_metrics(), images=images)


@dataclass
class SweepInfo:
    """What sweep directories add: the swept parameters and the sweep's metric."""

    swept: list[str] = field(default_factory=list)
    metric: str | None = None
    goal: Goal | None = None
    names: list[str] = field(default_factory=list)


def load_runs(paths: list[str | Path]) -> tuple[list[RunRecord], SweepInfo]:
    """Run dirs as given; a sweep directory (holds sweep.json) stands for the run dirs of its started points."""
    runs, info = [], SweepInfo()
    for given in paths:
        if is_sweep_dir(given):
            state = read_state(given)
            info.names.append(state.name)
            info.swept += [k for k in state.swept if k not in info.swept]
            info.metric, info.goal = info.metric or state.metric, info.goal or state.goal
            by_dir = {p.run_dir: p for p in state.points}
            for run_dir in point_run_dirs(given, state):
                run = load_run(run_dir)
                point = by_dir[run_dir.name]
                run.status, run.parameters = point.status, dict(point.parameters)
                runs.append(run)
        else:
            runs.append(load_run(given))
    if not runs:
        raise UserError(f"no runs to compare: the sweep in {', '.join(map(str, paths))} has not started any point yet")
    return runs, info


def _unique_labels(runs: list[RunRecord]) -> None:
    """Two runs called 'final' under different parents: label them parent/final instead."""
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.label] = seen.get(run.label, 0) + 1
    for i, run in enumerate(runs):
        if seen[run.label] > 1:
            run.label = f"{run.path.resolve().parent.name}/{run.label}" if run.path.resolve().parent.name else f"{run.label} #{i + 1}"


# --- what the report says --------------------------------------------------------------------------


MISSING = object()


def config_differences(runs: list[RunRecord]) -> dict[str, list[object]]:
    """Dotted config keys whose value is not the same in every run -> the value per run (MISSING if absent)."""
    keys = sorted({k for run in runs for k in run.config} - IGNORED_CONFIG_KEYS)
    diffs = {}
    for key in keys:
        values = [run.config.get(key, MISSING) for run in runs]
        if any(v != values[0] for v in values[1:]):
            diffs[key] = values
    return diffs


def scalar_keys(runs: list[RunRecord]) -> list[str]:
    """Every numeric key logged by any run, val/* first, then train/*, then the rest (epoch and step excluded)."""
    keys = {k for run in runs for row in run.rows for k, v in row.items() if _is_number(v)} - {"step", "epoch"}

    def order(key: str) -> tuple[int, str]:
        return ({"val": 0, "train": 1}.get(key.split("/", 1)[0], 2), key)

    return sorted(keys, key=order)


@dataclass
class Ranking:
    key: str | None
    goal: Goal | None
    order: list[int]  # indices into runs, best first (runs without the metric last, in input order)
    best: list[float | None]  # per run, in input order

    def rank_of(self, index: int) -> int:
        return self.order.index(index) + 1


def rank_runs(runs: list[RunRecord], sort: str | None, direction: Goal | None, info: SweepInfo) -> Ranking:
    """Order runs by the best value of `sort` (or the sweep's metric, or val/mse): the order of every section."""
    logged = set(scalar_keys(runs))
    key = sort or info.metric or next((k for k in DEFAULT_SORT if k in logged), None)
    if key is None:
        return Ranking(None, None, list(range(len(runs))), [None] * len(runs))
    if sort and key not in logged:
        raise UserError(f"--sort {key}: no run logged it (logged: {', '.join(sorted(logged)) or 'nothing'})")
    direction = direction or (info.goal if key == info.metric else None) or known_goal(key)
    if direction is None:
        raise UserError(f"--sort {key}: which way is better is not known for this metric; add --goal minimize or --goal maximize")
    best = [run.best(key, direction) for run in runs]
    sign = 1 if direction == "minimize" else -1
    order = sorted(range(len(runs)), key=lambda i: (best[i] is None, sign * best[i] if best[i] is not None else 0, i))
    return Ranking(key, direction, order, best)


def _best_index(key: str, values: list[float | None], direction: Goal | None = None) -> int | None:
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    direction = direction or known_goal(key)
    if len(present) < 2 or direction is None:
        return None
    return (min(present) if direction == "minimize" else max(present))[1]


# --- plots -------------------------------------------------------------------------------------------


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", dpi=110)
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: not allowed inside HTML


def _svg_context(salt: str):
    # Several SVGs share one HTML document: text as <text> (no glyph <defs> repeated under the same ids)
    # and a per-figure salt for the clip-path ids matplotlib derives from a hash.
    return matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"vaedist-{salt}"})


def _colours(n: int) -> list:
    return [matplotlib.colormaps["tab10"](i % 10) for i in range(n)]


def curves_svg(runs: list[RunRecord], key: str, ranking: Ranking, highlight: int = HIGHLIGHT) -> str:
    """One metric of every run against the step: the best `highlight` runs in colour with a legend, the others
    thin and grey behind them (rasterised into one picture, so 30 runs cost no more than 3)."""
    with _svg_context(key):
        fig, ax = plt.subplots(figsize=(4.6, 3.0))
        shown = ranking.order[:highlight]
        others = [i for i in ranking.order[highlight:]]
        every_value: list[float] = []
        grey_drawn = 0
        for i in others:
            steps, values = runs[i].series(key)
            every_value += values
            if steps:
                stride = max(1, math.ceil(len(steps) / MAX_POINTS_PER_CURVE))
                # a marker where a run has few points: a one-evaluation run is a dot, not an invisible line
                ax.plot(steps[::stride], values[::stride], color=GREY, linewidth=0.7, alpha=0.5, rasterized=True,
                        marker="." if len(steps) < 30 else None, markersize=3,
                        label=f"{len(others)} other runs" if not grey_drawn else None, zorder=1)
                grey_drawn += 1
        for colour, i in zip(_colours(len(shown)), shown):
            steps, values = runs[i].series(key)
            every_value += values
            if steps:
                stride = max(1, math.ceil(len(steps) / MAX_POINTS_PER_CURVE))
                label = f"#{ranking.rank_of(i)} {runs[i].label}" if len(runs) > highlight else runs[i].label
                ax.plot(steps[::stride], values[::stride], color=colour, marker="o" if len(steps) < 30 else None,
                        markersize=3, linewidth=1.3, label=label, zorder=2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if every_value and min(every_value) > 0 and max(every_value) / min(every_value) > 100:
            ax.set_yscale("log")  # losses spanning decades
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best")
        return _svg(fig)


def _spans_decades(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10


def _log_axis(axis, values: list[float]) -> None:
    """Plain labels (0.0003, 0.001) at 1 and 3 x each power of ten over two decades or less, at the powers only
    beyond; none on the minor ticks. matplotlib's default labels the minor ticks of a short log axis in
    mathtext ("2x10^-4 3x10^-4 ...") at the default font size, where they run into each other."""
    decades = math.log10(max(values) / min(values))
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 3.0) if decades <= 2 else (1.0,), numticks=8))
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def parameter_axis(runs: list[RunRecord], parameter: str) -> str:
    """'log', 'linear' or 'categorical': how a parameter's values are laid out along the x axis."""
    values = [run.value(parameter) for run in runs if run.value(parameter) is not MISSING]
    if not values or not all(_is_number(v) for v in values):
        return "categorical"
    return "log" if _spans_decades([float(v) for v in values]) else "linear"


def parameter_svg(runs: list[RunRecord], parameter: str, ranking: Ranking, highlight: int = HIGHLIGHT) -> str | None:
    """The ranked metric's best value of every run against one parameter: a scatter (log x where the values span
    decades), or one column per value for a categorical parameter. None when no run has both."""
    pairs = [(runs[i].value(parameter), ranking.best[i], i) for i in range(len(runs))
             if ranking.best[i] is not None and runs[i].value(parameter) is not MISSING]
    if not pairs:
        return None
    with _svg_context(f"param-{parameter}"):
        fig, ax = plt.subplots(figsize=(3.6, 2.7))
        numeric = all(_is_number(v) for v, _, _ in pairs)
        if numeric:
            xs = [float(v) for v, _, _ in pairs]
            if _spans_decades(xs):
                ax.set_xscale("log")  # learning rates, lambda_mse, ...
                _log_axis(ax.xaxis, xs)
        else:
            categories = sorted({str(v) for v, _, _ in pairs})
            xs = [categories.index(str(v)) for v, _, _ in pairs]
            ax.set_xticks(range(len(categories)), categories, fontsize=7, rotation=30 if len(categories) > 4 else 0)
            ax.set_xlim(-0.6, len(categories) - 0.4)
        top = set(ranking.order[:highlight])
        colour_of = dict(zip(ranking.order[:highlight], _colours(highlight)))
        for x, (_, y, i) in zip(xs, pairs):
            if i in top:
                ax.scatter([x], [y], s=28, color=colour_of[i], zorder=3, edgecolors="black", linewidths=0.4)
                ax.annotate(f"#{ranking.rank_of(i)}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
            else:
                ax.scatter([x], [y], s=16, color=GREY, zorder=2)
        ax.set_xlabel(parameter, fontsize=8)
        ax.set_ylabel(f"best {ranking.key}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        return _svg(fig)


# --- pictures --------------------------------------------------------------------------------------


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _thumbnail_data_uri(path: Path, kind: str) -> str:
    """A JPEG thumbnail of a PNG: a tenth of its bytes, so that 30 runs' pictures stay a few MB."""
    width = THUMBNAIL_WIDTH.get(kind, DEFAULT_THUMBNAIL_WIDTH)
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=THUMBNAIL_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- HTML ------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; position: sticky; top: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #eaf6ea; }
tr.top td:first-child { border-left: 4px solid #4c9a4c; }
.missing { color: #999; font-style: italic; }
.plots { display: flex; flex-wrap: wrap; gap: 0.5em; }
.plots figure { margin: 0; }
.side { display: flex; flex-wrap: wrap; gap: 0.8em; align-items: flex-start; }
.side figure { margin: 0; }
.side img { max-width: 560px; image-rendering: pixelated; border: 1px solid #ddd; }
.side img.thumb { image-rendering: auto; }
figcaption { font-size: 0.8em; color: #555; }
details { margin: 0.5em 0 1.5em; }
.scroll { overflow-x: auto; }
"""


def _format_value(value: object) -> str:
    if value is MISSING:
        return '<span class="missing">(absent)</span>'
    if value is None:
        return '<span class="missing">-</span>'
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def _table(cls: str, header: list[str], rows: list[tuple[str, list[tuple[str, str]], str]]) -> str:
    """rows: (data-key, [(td class, cell html)], tr class)."""
    e = html.escape
    parts = [f'<div class="scroll"><table class="{cls}"><tr>' + "".join(f'<th data-col="{e(h)}">{e(h)}</th>' for h in header) + "</tr>"]
    for key, cells, tr_class in rows:
        tds = "".join(f'<td class="{c}">{body}</td>' if c else f"<td>{body}</td>" for c, body in cells)
        row_class = f' class="{tr_class}"' if tr_class else ""
        parts.append(f'<tr data-key="{e(key)}"{row_class}>{tds}</tr>')
    parts.append("</table></div>")
    return "".join(parts)


def _metric_cells(values: list[float | None], key: str, direction: Goal | None = None) -> list[tuple[str, str]]:
    best = _best_index(key, values, direction)
    return [("num best" if i == best else "num", _format_value(v)) for i, v in enumerate(values)]


def render_report(runs: list[RunRecord], title: str = "vaedist run comparison", info: SweepInfo | None = None,
                  sort: str | None = None, goal: Goal | None = None, highlight: int = HIGHLIGHT,
                  full_images: int = FULL_IMAGES) -> str:
    e = html.escape
    info = info or SweepInfo()
    ranking = rank_runs(runs, sort, goal, info)
    order = ranking.order
    keys = scalar_keys(runs)
    diffs = config_differences(runs)
    swept = [k for k in info.swept if any(run.value(k) is not MISSING for run in runs)]
    if not info.swept and len(runs) >= 3:  # plain run dirs: plot against whatever differs
        swept = list(diffs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by <code>python -m vaedist.compare</code>: "
        f"{len(runs)} runs" + (f", ranked by the best <code>{e(ranking.key)}</code> of each run "
                               f"({'lower' if ranking.goal == 'minimize' else 'higher'} is better)" if ranking.key else "") + ".</p>",
    ]

    # -- the runs table: one row per run, ranked --
    sort_key = ranking.key
    metric_keys = [k for k in keys if k.startswith("val/") and k != sort_key]
    header = ["#", "run"] + (["status"] if any(r.status for r in runs) else []) + list(diffs)
    if sort_key:
        header += [f"best {sort_key}", f"final {sort_key}"]
    header += [f"final {k}" for k in metric_keys] + ["step", "epoch", "directory"]
    columns: list[list[tuple[str, str]]] = []  # per column, per run in input order
    columns.append([("num", str(ranking.rank_of(i))) for i in range(len(runs))])
    columns.append([("", e(run.label)) for run in runs])
    if "status" in header:
        columns.append([("", e(run.status or "")) for run in runs])
    for key, values in diffs.items():
        columns.append([("", _format_value(v)) for v in values])
    if sort_key:
        columns.append(_metric_cells(ranking.best, sort_key, ranking.goal))
        columns.append(_metric_cells([run.final(sort_key) for run in runs], sort_key, ranking.goal))
    for key in metric_keys:
        columns.append(_metric_cells([run.final(key) for run in runs], key))
    columns.append([("num", _format_value(run.final("step"))) for run in runs])
    columns.append([("num", _format_value(run.final("epoch"))) for run in runs])
    columns.append([("", f"<code>{e(str(run.path))}</code>") for run in runs])
    rows = [(runs[i].label, [col[i] for col in columns], "top" if rank <= highlight and sort_key else "")
            for rank, i in enumerate(order, start=1)]
    parts.append('<h2 id="runs">Runs</h2>')
    if not diffs:
        parts.append("<p>The configs are identical (apart from the run directory).</p>")
    parts.append(_table("runs", header, rows))

    # -- the metric against each swept parameter --
    if sort_key and swept:
        figures = [(p, parameter_svg(runs, p, ranking, highlight)) for p in swept]
        figures = [(p, svg) for p, svg in figures if svg]
        if figures:
            parts.append(f'<h2 id="parameters">Best {e(sort_key)} against each {"swept parameter" if info.swept else "differing config key"}</h2>'
                         f'<p>One point per run; the best {highlight} in colour, labelled with their rank.</p><div class="plots">')
            parts += [f'<figure data-key="{e(p)}" data-kind="parameter" data-axis="{parameter_axis(runs, p)}">{svg}</figure>'
                      for p, svg in figures]
            parts.append("</div>")

    # -- curves --
    note = f"the best {highlight} runs in colour, the other {len(runs) - highlight} in grey" if len(runs) > highlight else "every run"
    parts.append(f'<h2 id="curves">Curves</h2><p>Every logged scalar against the step: {note}.</p><div class="plots">')
    for key in keys:
        parts.append(f'<figure data-key="{e(key)}" data-kind="curve">{curves_svg(runs, key, ranking, highlight)}</figure>')
    parts.append("</div>")

    # -- pictures, best run first --
    for kind in IMAGE_KINDS:
        parts.append(f'<h2 id="{kind}">{e(IMAGE_TITLES.get(kind, kind))}</h2>')
        if len(runs) > full_images:
            parts.append(f"<p>Best first; the first {full_images} at full size, the others as thumbnails "
                         f"(full PNGs: {e(str(RunDir('RUN_DIR').latest_image(kind)))}).</p>")
        parts.append('<div class="side">')
        for position, i in enumerate(order):
            run = runs[i]
            caption = f"#{ranking.rank_of(i)} {e(run.label)}" if sort_key else e(run.label)
            if kind in run.images:
                full = position < full_images
                src = _png_data_uri(run.images[kind]) if full else _thumbnail_data_uri(run.images[kind], kind)
                body = (f'<img alt="{e(kind)} of {e(run.label)}" data-run="{e(run.label)}" data-size="{"full" if full else "thumbnail"}"'
                        f'{"" if full else " class=thumb"} src="{src}">')
            else:
                body = '<p class="missing">(not logged)</p>'
            parts.append(f"<figure>{body}<figcaption>{caption}</figcaption></figure>")
        parts.append("</div>")

    # -- every last value, for the record --
    all_rows = [(runs[i].label, [("", e(runs[i].label))] + [col[i] for col in
                 [_metric_cells([run.final(k) for run in runs], k) for k in keys + ["step", "epoch"]]], "") for i in order]
    parts.append(f'<h2 id="metrics">Every logged scalar</h2><details{" open" if len(runs) <= 6 else ""}>'
                 "<summary>The last value each run logged (best in bold)</summary>")
    parts.append(_table("final-metrics", ["run"] + keys + ["step", "epoch"], all_rows))
    parts.append("</details></body></html>")
    return "\n".join(parts) + "\n"


def compare(paths: list[str | Path], output: str | Path, title: str = "vaedist run comparison", sort: str | None = None,
            goal: Goal | None = None, highlight: int = HIGHLIGHT, full_images: int = FULL_IMAGES) -> Path:
    """Write the HTML report for run dirs and sweep dirs `paths` to `output` (temporary name, then renamed)."""
    if not paths:
        raise UserError("give at least one run directory")
    output = check_output_file(output, "-o/--output")
    runs, info = load_runs(paths)
    _unique_labels(runs)
    write_text_atomic(output, render_report(runs, title, info, sort, goal, highlight, full_images))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vaedist.compare",
        description="Compare vaedist runs in one self-contained HTML file (no W&B needed).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run directories (run.dir of each training), or sweep directories (python -m vaedist.sweep --out)")
    parser.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--title", default="vaedist run comparison")
    parser.add_argument("--sort", metavar="METRIC", help="rank runs by this metric's best value (default: the sweep's metric, else val/mse)")
    parser.add_argument("--goal", choices=("minimize", "maximize"), help="direction for a --sort metric vaedist does not know")
    parser.add_argument("--highlight", type=int, default=HIGHLIGHT, metavar="K", help=f"runs in colour in the plots (default {HIGHLIGHT})")
    parser.add_argument("--full-images", type=int, default=FULL_IMAGES, metavar="K",
                        help=f"runs whose pictures are full PNGs; the rest get thumbnails (default {FULL_IMAGES})")
    args = parser.parse_args(argv)
    out = compare(args.run_dirs, args.output, args.title, args.sort, args.goal, max(1, args.highlight), max(0, args.full_images))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]), prog="vaedist.compare")
