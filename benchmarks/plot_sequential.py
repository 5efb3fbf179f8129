"""Plot and tabulate sequential-editing results: metrics and L1 growth per layer against
the number of edits, one line per method.

    python -m benchmarks.plot_sequential benchmarks/results/sequential-d4s.json \
        benchmarks/results/sequential-memit-seq.json --out benchmarks/results/sequential.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("efficacy", "paraphrase", "neighborhood")


def load(paths: list[str]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in paths]


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = sorted(runs[0]["checkpoints"][0]["l1_growth"], key=int)
    fig, axes = plt.subplots(1, len(METRICS) + len(runs), figsize=(4.2 * (len(METRICS) + len(runs)), 3.6))
    for ax, metric in zip(axes, METRICS):
        for run in runs:
            edits = [0] + [c["edits"] for c in run["checkpoints"]]
            values = [run["unedited"][metric]] + [c[metric] for c in run["checkpoints"]]
            ax.plot(edits, values, marker="o", label=run["method"])
        ax.set(title=metric, xlabel="edits", ylim=(0, 1.02))
        ax.legend()
    for ax, run in zip(axes[len(METRICS):], runs):
        for layer in layers:
            edits = [0] + [c["edits"] for c in run["checkpoints"]]
            growth = [0.0] + [100 * c["l1_growth"][layer] for c in run["checkpoints"]]
            ax.plot(edits, growth, marker=".", label=f"layer {layer}")
        ax.set(title=f"L1 growth vs W0, {run['method']} (%)", xlabel="edits")
        ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def table(runs: list[dict]) -> str:
    lines = ["| method | edits | efficacy | paraphrase | neighborhood | max L1 growth | s/edit |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        u = run["unedited"]
        lines.append(f"| unedited | 0 | {u['efficacy']:.3f} | {u['paraphrase']:.3f} | {u['neighborhood']:.3f} | 0 | - |")
        for c in run["checkpoints"]:
            growth = 100 * max(c["l1_growth"].values())
            lines.append(f"| {run['method']} | {c['edits']} | {c['efficacy']:.3f} | {c['paraphrase']:.3f} | "
                         f"{c['neighborhood']:.3f} | {growth:.2f}% | {c['seconds_per_edit']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", nargs="+")
    parser.add_argument("--out", required=True, help="PNG file")
    args = parser.parse_args()
    runs = load(args.results)
    plot(runs, Path(args.out))
    print(table(runs))


if __name__ == "__main__":
    main()
