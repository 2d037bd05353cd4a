"""PNG plots of evaluation and training: PR curves and ``results.png`` from ``metrics.csv``.

Matplotlib runs with the non-interactive Agg backend, so plots work on headless machines.
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_pr_curves(curves: dict[str, np.ndarray], path: str, title: str = "Precision-recall @ IoU 0.5") -> str:
    """Draw one precision-recall curve per class (``curves`` from ``CocoEvaluator.pr_curves``) plus the
    class mean; returns ``path``."""
    plt = _pyplot()
    recall = curves["recall"]
    names = [k for k in curves if k != "recall"]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for name in names:
        ax.plot(
            recall, curves[name], linewidth=1, label=f"{name} {curves[name].mean():.3f}" if len(names) <= 20 else None
        )
    if names:
        mean = np.mean([curves[n] for n in names], axis=0)
        ax.plot(recall, mean, color="black", linewidth=3, label=f"all classes {mean.mean():.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def read_metrics_csv(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``metrics.csv`` (column ``step`` plus one column per metric, empty cells allowed) ->
    ``{metric: (steps, values)}`` keeping only the rows where the metric has a value."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if not rows:
        return out
    for key in rows[0].keys():
        if key == "step":
            continue
        steps, values = [], []
        for r in rows:
            cell = r.get(key)
            if cell not in (None, ""):
                steps.append(int(float(r["step"])))
                values.append(float(cell))
        if steps:
            out[key] = (np.asarray(steps), np.asarray(values))
    return out


def plot_results(metrics_csv: str, path: str) -> str:
    """``results.png``: one small panel per loss (``train/loss*``) and per validation metric over steps."""
    plt = _pyplot()
    series = read_metrics_csv(metrics_csv)
    keys = [k for k in series if k.startswith("train/loss")]
    keys += [
        k for k in series if k.startswith("val/") and k.split("_")[-1] in ("mAP", "AP50", "AP75", "APs", "APm", "APl")
    ]
    if not keys:
        keys = list(series)[:8]
    cols = min(4, max(1, len(keys)))
    rows = max(1, math.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, key in zip(axes.flat, keys):
        ax.set_visible(True)
        steps, values = series[key]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, linewidth=1.2)
        if key.startswith("train/") and len(values) >= 10:
            k = max(3, len(values) // 20)
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, linewidth=1.5, linestyle=":", color="tab:orange")
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
