"""Plots and tables of benchmark results: metrics and L1 growth per layer against the
number of edits (one line per method), the model perspective (L1 growth against
retention efficacy, with correlations), and the MQD comparison of target kinds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from assistant.evaluation.correlation import pearson, spearman
from assistant.errors import StateError

EDIT_METRICS = ("efficacy", "paraphrase", "neighborhood")
GENERAL_METRICS = ("perplexity", "fluency", "mmlu", "sst2")


def load_results(paths: list[Path]) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in sorted(paths)]


def label(run: dict) -> str:
    plan = run["plan"]
    lengths = f" ({plan['token_lengths'][0]}-{plan['token_lengths'][1]} tok)" if plan.get("token_lengths") else ""
    return f"{plan['dataset']}{lengths} {plan['method']}"


def mean_growth(point: dict) -> float:
    """Mean L1 growth over the layers the edits so far have changed (a run may track layers it never edits)."""
    changed = [growth for growth in point["l1_growth"].values() if growth != 0]
    return statistics.fmean(changed) if changed else 0.0


def changed_layers(runs: list[dict]) -> list[str]:
    """The tracked layers that some checkpoint of some run shows changed; all of them when none is."""
    tracked = sorted(runs[0]["checkpoints"][0]["l1_growth"], key=int)
    changed = [layer for layer in tracked
               if any(point["l1_growth"].get(layer, 0) != 0 for run in runs for point in run["checkpoints"])]
    return changed or tracked


def max_growth(point: dict) -> float:
    return max(point["l1_growth"].values())


def model_perspective(run: dict) -> dict:
    """L1 growth of the edited layers against retention efficacy over a run's checkpoints."""
    points = [p for p in run["checkpoints"] if p["edits"] > 0]
    growth, efficacy = [mean_growth(p) for p in points], [p["efficacy"] for p in points]
    return {"points": len(points), "pearson": pearson(growth, efficacy), "spearman": spearman(growth, efficacy),
            "growth": growth, "efficacy": efficacy}


def _pyplot():
    """pyplot, imported on first use. The backend is the process's choice: the entry points
    set MPLBACKEND=Agg, and without a display matplotlib picks Agg by itself."""
    import matplotlib.pyplot as plt
    return plt


def plot_metrics(runs: list[dict], out: Path) -> None:
    """Edit and general metrics against the number of edits."""
    plt = _pyplot()
    metrics = EDIT_METRICS + GENERAL_METRICS
    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    for ax, metric in zip(axes.flat, metrics):
        for run in runs:
            points = run["checkpoints"]
            ax.plot([p["edits"] for p in points], [p[metric] for p in points], marker=".", label=label(run))
        ax.set_title(metric)
        ax.set_xlabel("edits")
        if metric == "perplexity":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes.flat[len(metrics)].axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_l1(runs: list[dict], out: Path) -> None:
    """L1 growth against W0 of each edited layer against the number of edits."""
    plt = _pyplot()
    layers = changed_layers(runs)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        for run in runs:
            points = run["checkpoints"]
            ax.plot([p["edits"] for p in points], [100 * p["l1_growth"][layer] for p in points], marker=".",
                    label=label(run))
        ax.set_title(f"layer {layer}: L1 growth (%)")
        ax.set_xlabel("edits")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_model_perspective(runs: list[dict], out: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for run in runs:
        view = model_perspective(run)
        ax.scatter([100 * g for g in view["growth"]], view["efficacy"],
                   label=f"{label(run)} (r={view['pearson']:.2f}, rho={view['spearman']:.2f})")
    ax.set_xlabel("mean L1 growth of the edited layers (%)")
    ax.set_ylabel("retention efficacy (all edits so far)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _fmt(value, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}" if percent else f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _table(header: list[str], rows: list[str]) -> str:
    """A Markdown table from its column names and its already formatted rows."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows])


def markdown_table(runs: list[dict]) -> str:
    """One row for the unedited model of each data set and one per run at its last checkpoint."""
    lines, seen = [], set()
    for run in runs:
        for point, name in ((run["checkpoints"][0], f"{run['plan']['dataset']} unedited"),
                            (run["checkpoints"][-1], label(run))):
            if point["edits"] == 0 and name in seen:
                continue
            seen.add(name)
            lines.append(f"| {name} | {point['edits']} | {_fmt(point['efficacy'], True)} | "
                         f"{_fmt(point['paraphrase'], True)} | {_fmt(point['neighborhood'], True)} | "
                         f"{_fmt(point['perplexity'])} | {_fmt(point['fluency'])} | {_fmt(point['mmlu'], True)} | "
                         f"{_fmt(point['sst2'], True)} | {_fmt(max_growth(point), True)} | "
                         f"{_fmt(point['seconds_per_edit'])} |")
    return _table(["run", "edits", "efficacy %", "paraphrase %", "neighbourhood %", "perplexity", "fluency", "MMLU %",
                   "SST-2 %", "max L1 growth %", "s/edit"], lines)


def checkpoint_table(runs: list[dict]) -> str:
    """Every checkpoint of every run: the edit scores, general measures and L1 growth."""
    lines = []
    for run in runs:
        for point in run["checkpoints"]:
            lines.append(f"| {label(run)} | {point['edits']} | {point['efficacy']:.3f} | {point['paraphrase']:.3f} | "
                         f"{point['neighborhood']:.3f} | {_fmt(point['perplexity'])} | {point['fluency']:.2f} | "
                         f"{point['mmlu']:.2f} | {point['sst2']:.2f} | "
                         f"{100 * mean_growth(point):.1f} / {100 * max_growth(point):.1f} |")
    return _table(["run", "edits", "efficacy", "paraphrase", "neighbourhood", "perplexity", "fluency", "MMLU", "SST-2",
                   "mean / max L1 growth %"], lines)


def damage_table(runs: list[dict]) -> str:
    """What editing cost, per run: the change of each general measure and of neighbourhood
    specificity from the run's unedited checkpoint to its last one, next to the perplexity
    of its targets under the unedited model."""
    lines = []
    for run in runs:
        before, after = run["checkpoints"][0], run["checkpoints"][-1]
        target = run.get("target_perplexity", {}).get("median")
        lines.append(f"| {label(run)} | {after['edits']} | {_fmt(target)} | "
                     f"{after['perplexity'] - before['perplexity']:+.3f} | {after['fluency'] - before['fluency']:+.3f} | "
                     f"{100 * (after['mmlu'] - before['mmlu']):+.1f} | {100 * (after['sst2'] - before['sst2']):+.1f} | "
                     f"{100 * (after['neighborhood'] - before['neighborhood']):+.1f} | "
                     f"{_fmt(max_growth(after), True)} |")
    return _table(["run", "edits", "target perplexity (median)", "perplexity change", "fluency change",
                   "MMLU change (pts)", "SST-2 change (pts)", "neighbourhood change (pts)", "max L1 growth %"], lines)


def chat_table(runs: list[dict]) -> str:
    """Chat runs' checkpoints: answers and rephrasings with the new object (counts and 95%
    intervals) and locality against the unedited model's answers to unrelated questions."""
    def count(part: dict) -> str:
        low, high = part["interval95"]
        return f"{part['count']}/{part['of']} ({100 * low:.0f}-{100 * high:.0f}%)"

    lines = []
    for run in runs:
        for point in run["checkpoints"]:
            if "chat_locality" not in point:
                continue
            chat, local = point["chat"], point["chat_locality"]
            kept = {"count": local["kept"], "of": local["questions"], "interval95": local["kept_interval95"]}
            lines.append(f"| {label(run)} | {point['edits']} | {count(chat['answered'])} | {count(chat['rephrased'])} | "
                         f"{count(chat['rephrased_with_subject'])} | {local['agreement']:.3f} | {count(kept)} |")
    return _table(["run", "edits", "answers", "rephrasings", "rephrasings naming the subject",
                   "locality: token agreement", "locality: first 8 words kept"], lines)


def correlation_table(runs: list[dict]) -> str:
    views = [(label(run), model_perspective(run)) for run in runs]
    return _table(["run", "checkpoints", "Pearson r", "Spearman rho"],
                  [f"| {name} | {v['points']} | {v['pearson']:.3f} | {v['spearman']:.3f} |" for name, v in views])


def write_report(out_dir: Path, runs: list[dict] | None = None) -> Path:
    """report.md and PNGs for every results JSON in out_dir."""
    out_dir = Path(out_dir)
    runs = runs if runs is not None else load_results(list(out_dir.glob("*.json")))
    if not runs:
        raise StateError(f"no benchmark results (*.json) in {out_dir}; run `livedit bench` into it first")
    plot_metrics(runs, out_dir / "metrics.png")
    plot_l1(runs, out_dir / "l1.png")
    plot_model_perspective(runs, out_dir / "model-perspective.png")
    text = ["# Benchmark results", "", markdown_table(runs), "", "## What editing cost", "", damage_table(runs), ""]
    targets = [(label(r), r["target_perplexity"]) for r in runs if "target_perplexity" in r]
    if targets:
        text += ["## Perplexity of the new targets under the unedited model", "",
                 _table(["run", "mean", "median"], [f"| {name} | {t['mean']:.1f} | {t['median']:.1f} |"
                                                    for name, t in targets]), ""]
    chat = chat_table(runs)
    if chat.count("\n") > 1:
        text += ["## Chat: answers, rephrasings and locality", "", chat, ""]
    text += ["## L1 growth against retention efficacy", "", correlation_table(runs), "",
             "## Every checkpoint", "", checkpoint_table(runs), "",
             "![metrics](metrics.png)", "", "![L1 growth](l1.png)", "", "![model perspective](model-perspective.png)", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(text))
    return path
