"""write_report(out_dir, report, arrays, training_rows): report.html, report.json and one PNG per plot.

The HTML is self-contained: inline CSS, no scripts, every plot embedded as a base64 data URI (the PNGs are also
written beside it), so it opens offline and survives being mailed around. Plots use matplotlib's object API
(`matplotlib.figure.Figure`, Agg canvas), never pyplot's global state; matplotlib is imported only when plotting.
Knows the dicts of `rmkit.evaluation`; knows nothing of models.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rmkit.diagnostics import LENGTH_BUCKETS, Flag
from rmkit.rows import write_json

CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}.flags li{color:#8a2b00}.ok{color:#276700}
.plots img{width:49%;min-width:420px;vertical-align:top}.note{color:#666;font-size:90%}"""


def _figure(width: float = 6.0, height: float = 4.0, ncols: int = 1):
    from matplotlib.figure import Figure  # Figure uses the Agg canvas by itself: no backend, no pyplot

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, ncols)


def _title(ax: Any, name: str, what: str) -> None:
    ax.set_title(f"{name}\n{what}" if name else what, fontsize=10)


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_score_histograms(chosen, rejected, title: str = ""):
    """Overlaid histograms of chosen and rejected rewards on shared bins."""
    fig, ax = _figure()
    bins = np.histogram_bin_edges(np.concatenate([chosen, rejected]), bins=40)
    ax.hist(chosen, bins=bins, alpha=0.55, label=f"chosen (mean {np.mean(chosen):.2f})", color="tab:green")
    ax.hist(rejected, bins=bins, alpha=0.55, label=f"rejected (mean {np.mean(rejected):.2f})", color="tab:red")
    ax.set(xlabel="reward", ylabel="responses")
    _title(ax, title, "chosen vs rejected rewards")
    ax.legend()
    return fig


def plot_margin_histogram(delta, title: str = ""):
    """Histogram of Δ = r_chosen − r_rejected; the share right of 0 is the accuracy."""
    fig, ax = _figure()
    delta = np.asarray(delta, dtype=float)
    ax.hist(delta, bins=40, color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="k", linestyle="--", linewidth=1)
    ax.set(xlabel="margin Δ = r_chosen − r_rejected", ylabel="pairs")
    _title(ax, title, f"margins ({100 * np.mean(delta > 0):.1f}% > 0)")
    return fig


def plot_reliability(calibration: dict[str, Any], title: str = ""):
    """Reliability diagram of P(chosen preferred) at T = 1 and at the model's T (bins from the summary); marker
    area follows the bin's count, so a lone pair in an extreme bin does not look like a trend."""
    fig, ax = _figure(5.0, 4.6)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    same = calibration["after"]["temperature"] == calibration["before"]["temperature"]  # uncalibrated: one curve
    keys = ("after",) if same else ("before", "after")
    for key, color in zip(keys, ("tab:blue", "tab:orange")[-len(keys):], strict=True):
        rep = calibration[key]
        bins = rep["bins"]
        x, y = [b["confidence"] for b in bins], [b["accuracy"] for b in bins]
        most = max(b["count"] for b in bins)
        ax.plot(x, y, "-", color=color, label=f"T = {rep['temperature']:.3g}: ECE {rep['ece']:.3f}")
        ax.scatter(x, y, s=[8 + 120 * b["count"] / most for b in bins], color=color, zorder=3)
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="predicted P(preferred)", ylabel="observed frequency")
    _title(ax, title, f"reliability (best T here {calibration['fitted_temperature']:.3g})")
    ax.legend(loc="lower right")
    return fig


def plot_length_buckets(by_bucket: dict[str, dict[str, float]], title: str = ""):
    """Accuracy (with 95% intervals) by the chosen response's length relative to the rejected one."""
    fig, ax = _figure()
    names = [b for b in LENGTH_BUCKETS if b in by_bucket]
    acc = np.array([by_bucket[b]["accuracy"] for b in names])
    low = np.array([by_bucket[b]["ci_low"] for b in names])
    high = np.array([by_bucket[b]["ci_high"] for b in names])
    err = np.clip([acc - low, high - acc], 0.0, None)  # (2, buckets); rounding can put 0/n a hair below ci_low
    x = np.arange(len(names))
    ax.bar(x, acc, yerr=err, capsize=4, color="tab:purple", alpha=0.8)
    for i, b in enumerate(names):
        ax.text(i, 0.02, f"n={by_bucket[b]['n']}", ha="center", color="white")
    ax.axhline(0.5, color="k", linestyle=":", linewidth=1)
    ax.set_xticks(x, names)
    ax.set(ylim=(0, 1), ylabel="accuracy", xlabel="chosen response's length relative to the rejected one")
    _title(ax, title, "accuracy by length difference")
    return fig


def plot_score_vs_length(scores, lengths, title: str = "", rho: float = math.nan):
    """Scatter of reward against response length in characters."""
    fig, ax = _figure()
    ax.scatter(lengths, scores, s=6, alpha=0.35, color="tab:orange")
    ax.set(xlabel="response length (characters)", ylabel="reward")
    _title(ax, title, f"reward vs length (Spearman {rho:.2f})")
    return fig


def plot_score_vs_rating(scores, ratings, title: str = "", rho: float = math.nan):
    """Scatter of reward against the human rating, ratings jittered a little (they are often integers)."""
    fig, ax = _figure()
    ratings = np.asarray(ratings, dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, ratings.size)
    ax.scatter(ratings + jitter, scores, s=6, alpha=0.35, color="tab:cyan")
    ax.set(xlabel="human rating (jittered)", ylabel="reward")
    _title(ax, title, f"reward vs rating (Spearman {rho:.2f})")
    return fig


def plot_score_histogram(scores, title: str = ""):
    fig, ax = _figure()
    ax.hist(scores, bins=40, color="tab:blue", alpha=0.8)
    ax.set(xlabel="reward", ylabel="responses")
    _title(ax, title, "rewards")
    return fig


def plot_training_curves(rows: Sequence[dict[str, Any]]):
    """Loss and accuracy against step, train and validation, from a run's metrics.jsonl rows."""
    fig, axes = _figure(11.0, 4.0, ncols=2)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for split, style in (("train", "-"), ("val", "o-")):
            pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and key in r]
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=split, markersize=4)
        ax.set(xlabel="step", ylabel=key)
        _title(ax, "", f"training {key}")
        ax.legend()
    return fig


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec) if isinstance(x, int | float) else html.escape(str(x))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flags(flags: Sequence[dict[str, str]]) -> str:
    if not flags:
        return '<p class="ok">No flags.</p>'
    items = "".join(f"<li><b>{html.escape(f.kind)}</b>: {html.escape(f.message)}</li>" for f in map(Flag.from_json, flags))
    return f'<ul class="flags">{items}</ul>'


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"


class _Plots:
    """Saves each figure as out_dir/<name>.png and returns the <img> tag that embeds it."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.files: list[Path] = []

    def __call__(self, fig: Any, name: str, alt: str) -> str:
        data = png_bytes(fig)
        path = self.out_dir / f"{name}.png"
        path.write_bytes(data)
        self.files.append(path)
        src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        return f'<img alt="{html.escape(alt)}" src="{src}">'


def _pairs_section(name: str, s: dict[str, Any], a: dict[str, np.ndarray], plot: _Plots) -> str:
    slug, cal, bl = _slug(name), s["calibration"], s["by_length"]
    parts = [_flags(s["flags"]), "<h3>Subsets</h3>", _table(
        ["subset", "n", "accuracy", "95% CI"],
        [[html.escape(k), v["n"], _fmt(v["accuracy"]), f"{_fmt(v['ci_low'])}–{_fmt(v['ci_high'])}"]
         for k, v in s["subsets"].items()])]
    parts += ["<h3>Length</h3>", _table(
        ["acc. chosen longer (n)", "acc. chosen shorter (n)", "equal length", "length-only baseline",
         "Spearman(reward, length)"],
        [[f"{_fmt(bl['acc_longer'])} ({bl['n_longer']})", f"{_fmt(bl['acc_shorter'])} ({bl['n_shorter']})",
          bl["n_equal"], _fmt(s["length_baseline_accuracy"]), _fmt(s["length_score_spearman"], "+.3f")]])]
    parts += ["<h3>Calibration of P(chosen preferred) = σ(Δ/T)</h3>", _table(
        ["", "T", "ECE", "Brier", "log-loss"],
        [[label, _fmt(r["temperature"], ".3g"), _fmt(r["ece"]), _fmt(r["brier"]), _fmt(r["log_loss"])]
         for label, r in (("before (T = 1)", cal["before"]), ("after (model's T)", cal["after"]))]),
        f'<p class="note">Best T on this data: {_fmt(cal["fitted_temperature"], ".3g")}. Fit T on a validation '
        "split (<code>rmkit calibrate</code>); numbers on the fitting set itself are optimistic.</p>"]
    if "position" in s:
        pos, by = s["position"], s["position"]["by_position"]
        cell = {k: f"{_fmt(by[k]['accuracy'])} ({by[k]['n']})" if k in by else "—" for k in "AB"}
        parts += ["<h3>Position (A/B rows)</h3>", _table(
            ["acc. where A preferred (n)", "acc. where B preferred (n)", "labels preferring A", "swap consistency"],
            [[cell["A"], cell["B"], _fmt(pos["label_A_rate"]), _fmt(pos["swap_consistency"])]]),
            f'<p class="note">Swap consistency: {html.escape(pos["swap_note"])}</p>']
    m = s["margin"]
    parts += ["<h3>Scores</h3>", _table(
        ["", "mean", "std", "min", "p05", "median", "p95", "max"],
        [[k, *(_fmt(st[c]) for c in ("mean", "std", "min", "p05", "p50", "p95", "max"))]
         for k, st in (("chosen", s["chosen_scores"]), ("rejected", s["rejected_scores"]))]),
        f'<p class="note">Margin Δ: mean {_fmt(m["mean"])}, std {_fmt(m["std"])}, median {_fmt(m["median"])}.</p>']
    scores = np.concatenate([a["chosen"], a["rejected"]])
    lengths = np.concatenate([a["chosen_len"], a["rejected_len"]])
    imgs = [plot(plot_score_histograms(a["chosen"], a["rejected"], name), f"{slug}-scores", "reward histograms"),
            plot(plot_margin_histogram(a["chosen"] - a["rejected"], name), f"{slug}-margin", "margin histogram"),
            plot(plot_reliability(cal, name), f"{slug}-reliability", "reliability diagram"),
            plot(plot_length_buckets(s["by_length_difference"], name), f"{slug}-length-buckets",
                 "accuracy by length difference"),
            plot(plot_score_vs_length(scores, lengths, name, s["length_score_spearman"]),
                 f"{slug}-score-vs-length", "reward vs length")]
    return "\n".join(parts) + '<div class="plots">' + "".join(imgs) + "</div>"


def _ratings_section(name: str, s: dict[str, Any], a: dict[str, np.ndarray], plot: _Plots) -> str:
    slug = _slug(name)
    rows = [["(every row)", s["n_responses"], _fmt(s["spearman"]), _fmt(s["pearson"])]]
    if len(s["subsets"]) > 1:
        rows += [[html.escape(k), v["n"], _fmt(v["spearman"]), _fmt(v["pearson"])] for k, v in s["subsets"].items()]
    imgs = [plot(plot_score_vs_rating(a["scores"], a["ratings"], name, s["spearman"]),
                 f"{slug}-score-vs-rating", "reward vs human rating"),
            plot(plot_score_histogram(a["scores"], name), f"{slug}-scores", "reward histogram"),
            plot(plot_score_vs_length(a["scores"], a["lengths"], name, s["length_score_spearman"]),
                 f"{slug}-score-vs-length", "reward vs length")]
    return (_flags(s["flags"]) + "<h3>Correlation with human ratings</h3>"
            + _table(["subset", "n", "Spearman", "Pearson"], rows) + '<div class="plots">' + "".join(imgs) + "</div>")


def _overview(datasets: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, s in datasets.items():
        link = f'<a href="#{_slug(name)}">{html.escape(name)}</a>'
        if s["kind"] == "ratings":
            rows.append([link, "ratings", s["n_responses"], "—", "—", "—", "—",
                         f"{_fmt(s['spearman'])} / {_fmt(s['pearson'])}", len(s["flags"])])
            continue
        low, high = s["accuracy_ci95"]
        cal = s["calibration"]
        rows.append([link, "pairs", s["n_pairs"], f"{_fmt(s['accuracy'])} ({_fmt(low)}–{_fmt(high)})",
                     _fmt(s["length_baseline_accuracy"]), _fmt(s["length_score_spearman"], "+.2f"),
                     f"{_fmt(cal['before']['ece'])} → {_fmt(cal['after']['ece'])}", "—", len(s["flags"])])
    return _table(["data set", "kind", "n", "accuracy (95% CI)", "length-only baseline", "ρ(reward, length)",
                   "ECE T=1 → model T", "ρ / r with ratings", "flags"], rows)


def write_report(out_dir: str | Path, report: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
                 training_rows: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write report.html (self-contained), report.json and the PNG plots into out_dir; returns report.html's path.

    Args:
        report: `evaluation.evaluate_files` output.
        arrays: per data set, {"chosen", "rejected", "chosen_len", "rejected_len"} for pairs or {"scores",
            "ratings", "lengths"} for ratings: the raw values the histograms and scatter plots need.
        training_rows: a run's metrics.jsonl rows, for the training curves; None outside a run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot = _Plots(out)
    body = [f"<h1>Reward model report</h1><p>model: <code>{html.escape(str(report['model_dir']))}</code> · "
            f"temperature T = {_fmt(report['temperature'], '.3g')}</p>", "<h2>Data sets</h2>",
            _overview(report["datasets"])]
    body += ["<h2>Model</h2>", _flags(report.get("flags", []))]
    gap = report.get("training")
    if gap:
        val = "validation accuracy" if gap.get("val_heldout", True) else "“validation” accuracy (training pairs)"
        body.append(_table(["train accuracy (last rows)", val, "gap", "steps"],
                           [[_fmt(gap["train_accuracy"]), _fmt(gap["val_accuracy"]), _fmt(gap["gap"], "+.3f"),
                             f"{gap['train_step']} / {gap['val_step']}"]]))
    if "train_data" in report:
        t = report["train_data"]
        body.append(f"<p>Accuracy on the training data ({html.escape(t['path'])}, n={t['n_pairs']}): "
                    f"{_fmt(t['accuracy'])}.</p>")
    if training_rows:
        body.append('<div class="plots">' + plot(plot_training_curves(training_rows), "training-curves",
                                                 "training curves") + "</div>")
    else:
        body.append('<p class="note">No training curves: the model directory is not run/model of an rmkit run '
                    "(metrics.jsonl and config.yaml beside it).</p>")
    for name, s in report["datasets"].items():
        section = _ratings_section if s["kind"] == "ratings" else _pairs_section
        body.append(f'<h2 id="{_slug(name)}">{html.escape(name)}</h2>' + section(name, s, arrays[name], plot))
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>rmkit report</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    write_json(report, out / "report.json")
    return path
