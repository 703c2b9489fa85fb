"""Plots of a run's summary (PNG): alignment and accuracy curves."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_plots(summary: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    rounds = summary["rounds"]
    if not rounds:
        return []
    xs = [r["round"] for r in rounds]
    node_ids = list(rounds[-1]["nodes"])
    paths = []

    fig, (ax_cka, ax_x) = plt.subplots(1, 2, figsize=(11, 4))
    for node_id in node_ids:
        ax_cka.plot(xs, [r["nodes"][node_id]["cka_to_consensus"] for r in rounds], marker="o", label=node_id)
    ax_cka.set(title="Centred CKA to consensus (evaluation anchors)", xlabel="round", ylabel="CKA")
    ax_cka.legend(fontsize=7)
    for key, label in (("cross_modal_top1", "cross-modal top-1"), ("mutual_knn", "mutual kNN (k=10)")):
        values = [r["metrics"][key] for r in rounds]
        if all(v is not None for v in values):
            ax_x.plot(xs, values, marker="o", label=label)
    ax_x.axhline(0.1, color="grey", linestyle=":", label="chance (top-1)")
    ax_x.set(title="Cross-modal agreement (held-out)", xlabel="round", ylim=(0, 1))
    ax_x.legend(fontsize=8)
    fig.suptitle(f"{summary['federation_id']} ({summary['mode']})")
    fig.tight_layout()
    paths.append(out_dir / "alignment.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for node_id in node_ids:
        ax.plot(xs, [r["nodes"][node_id]["task_accuracy"] for r in rounds], marker="o", label=node_id)
    ax.set(title="Per-node task accuracy (held-out)", xlabel="round", ylabel="accuracy", ylim=(0, 1))
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(out_dir / "accuracy.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
