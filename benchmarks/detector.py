"""How fast is the detector, and how well do its verdicts match the model's own answers?

Curates a mix of CounterFact facts: even records with their true object (ground_truth),
odd records with the counterfactual one (target_new). The detector runs over all of them
on the unedited default model (CPU, one torch thread unless --threads says otherwise),
with a real store, queue and check log in a temporary folder. Each fact is labelled
"the model gets it wrong" when the model's own greedy completion, one prompt at a time,
does not contain the curated object; labels are taken with the detector's token budget
and with twice that. The detector's verdicts are compared with the labels, and so is the
teacher-forced score alone (the object's mean per-token probability, no generation), at
fixed thresholds and at the best one.

    .venv/bin/python -m benchmarks.detector --count 120 --out benchmarks/results/detector.json
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from assistant.evaluation.datasets import edit_records
from assistant.evaluation.metrics import answer_contains
from assistant.model.loading import load_model
from benchmarks.common import configured, environment, write_json
from updater.detect.checks import CheckLog
from updater.detect.detector import Detector, DetectorSettings
from updater.detect.probing import first_line, teacher_forced
from updater.queue import EditQueue
from updater.store.knowledge import KnowledgeStore

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def curated_records(config, start: int, count: int) -> tuple[list[dict], dict[str, str]]:
    """Our records for CounterFact cases: true object on even cases, counterfactual on odd ones."""
    cases = edit_records(config.paths.shared_data_dir(), "counterfact")[start:start + count]
    records, kinds = [], {}
    for i, case in enumerate(cases):
        kind = "true" if i % 2 == 0 else "counterfactual"
        fact_id = f"cf-{case['case_id']}-{kind}"
        obj = case["ground_truth"] if kind == "true" else case["target_new"]
        records.append({"id": fact_id, "subject": case["subject"], "prompt": case["prompt"], "object": obj})
        kinds[fact_id] = kind
    return records, kinds


@torch.no_grad()
def label_answers(model, tokenizer, prompts: list[str], tokens: int) -> tuple[list[str], list[str], float]:
    """Unbatched greedy completions: the first ``tokens`` and ``2 * tokens`` new tokens, and the time taken."""
    device, short, long = next(model.parameters()).device, [], []
    started = time.perf_counter()
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt).input_ids], device=device)
        output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2 * tokens,
                                do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
        short.append(first_line(tokenizer.decode(output[:tokens], skip_special_tokens=True)))
        long.append(first_line(tokenizer.decode(output, skip_special_tokens=True)))
    return short, long, time.perf_counter() - started


def scores(predicted: list[bool], actual: list[bool]) -> dict:
    """Precision, recall and F1 of "outdated" (the model gets it wrong), with the confusion counts."""
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    tn = len(actual) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": (tp + tn) / len(actual),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def auc(p_object: list[float], wrong: list[bool]) -> float:
    """Chance that a fact the model gets wrong has a lower object probability than one it gets right."""
    bad = [p for p, w in zip(p_object, wrong) if w]
    good = [p for p, w in zip(p_object, wrong) if not w]
    if not bad or not good:
        return float("nan")
    wins = sum((b < g) + 0.5 * (b == g) for b in bad for g in good)
    return wins / (len(bad) * len(good))


def teacher_forced_alone(p_object: list[float], p_answer: list[float | None], wrong: list[bool]) -> dict:
    fixed = {str(t): scores([p < t for p in p_object], wrong) for t in THRESHOLDS}
    grid = sorted(set(p_object)) + [1.0 + 1e-9]
    best_t = max(grid, key=lambda t: scores([p < t for p in p_object], wrong)["f1"])
    relative = [a is not None and p < a for p, a in zip(p_object, p_answer)]
    return {"auc": auc(p_object, wrong), "thresholds": fixed,
            "best_threshold_in_sample": {"threshold": best_t, **scores([p < best_t for p in p_object], wrong)},
            "object_below_own_answer": scores(relative, wrong)}


def run_detector(config, loaded, records: list[dict], folder: Path, batch_size: int):
    with KnowledgeStore(folder / "knowledge", config.updater) as store, EditQueue(folder / "queue.sqlite") as queue, \
            CheckLog(folder / "checks.sqlite") as checks:
        store.import_records([(f"record {i}", r) for i, r in enumerate(records)], who="benchmark")
        facts = store.facts()
        detector = Detector(loaded.model, loaded.tokenizer, store, queue, checks,
                            DetectorSettings.from_config(config, batch_size))
        started = time.perf_counter()
        report = detector.run()
        seconds = time.perf_counter() - started
        return facts, report, seconds, detector.settings


def by_kind(ids: list[str], kinds: dict[str, str], wrong: list[bool], outdated: list[bool]) -> dict:
    result = {}
    for kind in ("true", "counterfactual"):
        mine = [i for i, fact_id in enumerate(ids) if kinds[fact_id] == kind]
        result[kind] = {"facts": len(mine), "model_wrong": sum(wrong[i] for i in mine),
                        "detector_outdated": sum(outdated[i] for i in mine)}
    return result


def examples(facts, checks: dict, label_answers: list[str], p_object: list[float], wrong: list[bool]) -> dict:
    """The first six facts, and every fact where the detector and the label disagree."""
    rows = [{"id": f.id, "prompt": f.filled_prompt, "object": f.object, "answer": checks[f.id].answer,
             "label_answer": a, "p_object": p, "outdated": checks[f.id].outdated, "model_wrong": w}
            for f, a, p, w in zip(facts, label_answers, p_object, wrong)]
    return {"first": rows[:6], "disagreements": [row for row in rows if row["outdated"] != row["model_wrong"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=120, help="CounterFact cases, one curated fact each")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 by default: on a shared 2-core machine 2 threads is far slower)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", required=True, help="JSON results file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = configured(args.set)
    torch.set_num_threads(args.threads)
    records, kinds = curated_records(config, args.start, args.count)
    loaded = load_model(config)
    with tempfile.TemporaryDirectory(prefix="livedit-detector-") as folder:
        facts, report, seconds, settings = run_detector(config, loaded, records, Path(folder), args.batch_size)
    checks = {check.fact_id: check for check in report.checks}
    ids = [fact.id for fact in facts]
    prompts = [fact.filled_prompt for fact in facts]
    tokens = settings.probe.cloze_tokens
    short, long, label_seconds = label_answers(loaded.model, loaded.tokenizer, prompts, tokens)
    wrong = [not answer_contains(a, f.object, f.aliases) for a, f in zip(short, facts)]
    wrong_long = [not answer_contains(a, f.object, f.aliases) for a, f in zip(long, facts)]
    outdated = [checks[fact_id].outdated for fact_id in ids]
    started = time.perf_counter()
    p_object = teacher_forced(loaded.model, loaded.tokenizer, prompts, [f.object for f in facts], args.batch_size)
    tf_seconds = time.perf_counter() - started
    p_answer = [checks[fact_id].p_answer for fact_id in ids]
    write_json(args.out, {
        "data": "counterfact", "start": args.start, "count": len(facts), "environment": environment(),
        "load_average_1m_5m_15m": os.getloadavg(), "batch_size": args.batch_size, "cloze_tokens": tokens,
        "detector": {"seconds": seconds, "facts_per_minute": 60 * len(facts) / seconds,
                     "outdated": len(report.outdated), "queued": len(report.queued)},
        "labels": {"unbatched_seconds": label_seconds, "unbatched_facts_per_minute": 60 * len(facts) / label_seconds,
                   "model_wrong": sum(wrong), f"model_wrong_within_{2 * tokens}_tokens": sum(wrong_long)},
        "detector_vs_label": scores(outdated, wrong),
        f"detector_vs_label_within_{2 * tokens}_tokens": scores(outdated, wrong_long),
        "teacher_forced_alone": {"seconds": tf_seconds, "facts_per_minute": 60 * len(facts) / tf_seconds,
                                 **teacher_forced_alone(p_object, p_answer, wrong)},
        "by_kind": by_kind(ids, kinds, wrong, outdated),
        "examples": examples(facts, checks, short, p_object, wrong),
    })
    print(f"detector: {60 * len(facts) / seconds:.0f} facts/min, {len(report.outdated)} of {len(facts)} outdated; "
          f"agreement with the model's own answers {scores(outdated, wrong)['accuracy']:.3f}")


if __name__ == "__main__":
    main()
