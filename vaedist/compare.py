"""Compare training runs without W&B: one self-contained HTML report from run directories alone.

    python -m vaedist.compare runs/kl-batch runs/kl-one [-o report.html]

Reads only what every run dir holds (config, metrics, latest images; `vaedist.rundir`), so it works on an
air-gapped cluster and on runs trained with logging.wandb=false. The report has: the config keys that
differ between the runs, a table of final metrics, overlaid curves of every logged scalar (inline SVG),
and each run's latest reconstructions, latent projection, prior samples and KL-per-dimension side by side
(PNG embedded as base64). One file: mail it, attach it to a ticket, open it offline.
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

from vaedist.config import flatten  # noqa: E402
from vaedist.errors import UserError, run_cli  # noqa: E402
from vaedist.files import check_output_file, write_text_atomic  # noqa: E402
from vaedist.rundir import IMAGE_KINDS, RunDir  # noqa: E402

MAX_POINTS_PER_CURVE = 1500  # keeps the inline SVGs small for long runs
# Keys that identify a run rather than describe an experiment: always different, never interesting.
IGNORED_CONFIG_KEYS = {"run.dir"}
# Direction of "better" for the final-metrics table (bold = best); anything else is left unmarked.
LOWER_IS_BETTER = ("mse", "loss", "kl")
HIGHER_IS_BETTER = ("psnr", "ssim", "pcc", "active_units", "images_per_s", "probe_acc", "knn_acc")
IMAGE_TITLES = {
    "reconstructions": "Reconstructions (validation images above their reconstructions)",
    "interpolations": "Interpolations (decoded along the line between two validation images' latent means)",
    "latent_pca": "Latent means, 2-D PCA",
    "prior_samples": "Decoded prior samples z ~ N(0, I) (fixed noise)",
    "kl_per_dim": "KL per latent dimension",
}


@dataclass
class RunRecord:
    label: str  # column header: the run dir's name (made unique)
    path: Path
    config: dict[str, object]  # flattened: {"train.mode": "vae", ...}
    rows: list[dict]  # metrics.jsonl
    images: dict[str, Path] = field(default_factory=dict)  # kind -> its latest PNG

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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- reading run dirs ------------------------------------------------------------------------------


def load_run(path: str | Path) -> RunRecord:
    """Read one run dir; anything that makes it unusable is a one-line UserError naming it."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"run directory '{run.path}' does not exist (pass the run.dir of a training run)")
    if not run.config.is_file() and not run.metrics.is_file():
        raise UserError(
            f"'{run.path}' is not a vaedist run directory: it has neither {run.config.name} nor {run.metrics.name} "
            "(pass the run.dir of a training run)"
        )
    images = {kind: run.latest_image(kind) for kind in IMAGE_KINDS if run.latest_image(kind).is_file()}
    return RunRecord(label=run.path.resolve().name, path=run.path, config=flatten(run.read_config() or {}),
                     rows=run.read_metrics(), images=images)


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


def final_metrics(runs: list[RunRecord]) -> dict[str, list[float | None]]:
    table = {key: [run.final(key) for run in runs] for key in scalar_keys(runs)}
    table["step"] = [run.final("step") for run in runs]
    table["epoch"] = [run.final("epoch") for run in runs]
    return table


def _best_index(key: str, values: list[float | None]) -> int | None:
    present = [(v, i) for i, v in enumerate(values) if v is not None]
    if len(present) < 2:
        return None
    name = key.split("/")[-1]
    if any(word in name for word in HIGHER_IS_BETTER):
        return max(present)[1]
    if any(word in name for word in LOWER_IS_BETTER):
        return min(present)[1]
    return None


def curves_svg(runs: list[RunRecord], key: str) -> str:
    """One metric of every run against the step, as an inline <svg> element."""
    # Several SVGs share one HTML document: text as <text> (no glyph <defs> repeated under the same ids)
    # and a per-figure salt for the clip-path ids matplotlib derives from a hash.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"vaedist-{key}"}):
        return _curves_svg(runs, key)


def _curves_svg(runs: list[RunRecord], key: str) -> str:
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    every_value: list[float] = []
    for run in runs:
        steps, values = run.series(key)
        every_value += values
        if not steps:
            continue
        stride = max(1, math.ceil(len(steps) / MAX_POINTS_PER_CURVE))
        ax.plot(steps[::stride], values[::stride], marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2, label=run.label)
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    if every_value and min(every_value) > 0 and max(every_value) / min(every_value) > 100:
        ax.set_yscale("log")  # losses spanning decades
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: not allowed inside HTML


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# --- HTML ------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { font-weight: bold; background: #eaf6ea; }
.missing { color: #999; font-style: italic; }
.curves { display: flex; flex-wrap: wrap; gap: 0.5em; }
.curves figure { margin: 0; }
.side { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.side figure { margin: 0; }
.side img { max-width: 560px; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _format_value(value: object) -> str:
    if value is MISSING:
        return '<span class="missing">(absent)</span>'
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def render_report(runs: list[RunRecord], title: str = "vaedist run comparison") -> str:
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p>Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by <code>python -m vaedist.compare</code>.</p>",
        '<h2 id="runs">Runs</h2><table><tr><th>run</th><th>directory</th><th>rows logged</th><th>last step</th></tr>',
    ]
    for run in runs:
        last_step = run.final("step")
        parts.append(
            f"<tr><td>{e(run.label)}</td><td><code>{e(str(run.path))}</code></td>"
            f'<td class="num">{len(run.rows)}</td><td class="num">{_format_value(last_step) if last_step is not None else "-"}</td></tr>'
        )
    parts.append("</table>")

    header = "".join(f"<th>{e(run.label)}</th>" for run in runs)
    diffs = config_differences(runs)
    parts.append('<h2 id="config">Config differences</h2>')
    if diffs:
        parts.append(f'<table class="config-diff"><tr><th>key</th>{header}</tr>')
        for key, values in diffs.items():
            cells = "".join(f"<td>{_format_value(v)}</td>" for v in values)
            parts.append(f'<tr data-key="{e(key)}"><td><code>{e(key)}</code></td>{cells}</tr>')
        parts.append("</table>")
    else:
        parts.append("<p>The configs are identical (apart from the run directory).</p>")

    parts.append('<h2 id="metrics">Final metrics</h2><p>The last value each run logged; best in bold.</p>')
    parts.append(f'<table class="final-metrics"><tr><th>metric</th>{header}</tr>')
    for key, values in final_metrics(runs).items():
        best = _best_index(key, values)
        cells = []
        for i, value in enumerate(values):
            cls = "num best" if i == best else "num"
            text = _format_value(value) if value is not None else '<span class="missing">-</span>'
            cells.append(f'<td class="{cls}">{text}</td>')
        parts.append(f'<tr data-key="{e(key)}"><td><code>{e(key)}</code></td>{"".join(cells)}</tr>')
    parts.append("</table>")

    parts.append('<h2 id="curves">Curves</h2><div class="curves">')
    for key in scalar_keys(runs):
        parts.append(f'<figure data-key="{e(key)}">{curves_svg(runs, key)}</figure>')
    parts.append("</div>")

    for kind in IMAGE_KINDS:
        parts.append(f'<h2 id="{kind}">{e(IMAGE_TITLES.get(kind, kind))}</h2><div class="side">')
        for run in runs:
            if kind in run.images:
                body = f'<img alt="{e(kind)} of {e(run.label)}" data-run="{e(run.label)}" src="{_png_data_uri(run.images[kind])}">'
            else:
                body = '<p class="missing">(not logged)</p>'
            parts.append(f"<figure>{body}<figcaption>{e(run.label)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def compare(run_dirs: list[str | Path], output: str | Path, title: str = "vaedist run comparison") -> Path:
    """Write the HTML report for `run_dirs` to `output` (temporary name, then renamed). Returns its path."""
    if not run_dirs:
        raise UserError("give at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    _unique_labels(runs)
    output = check_output_file(output, "-o/--output")
    write_text_atomic(output, render_report(runs, title))
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vaedist.compare",
        description="Compare vaedist runs in one self-contained HTML file (no W&B needed).",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (run.dir of each training)")
    parser.add_argument("-o", "--output", default="report.html", help="HTML file to write (default: report.html)")
    parser.add_argument("--title", default="vaedist run comparison")
    args = parser.parse_args(argv)
    out = compare(args.run_dirs, args.output, args.title)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {len(args.run_dirs)} runs)")
    return 0


if __name__ == "__main__":
    run_cli(lambda: main(sys.argv[1:]), prog="vaedist.compare")
