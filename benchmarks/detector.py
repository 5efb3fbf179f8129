"""How fast is the detector, and how well do its verdicts match the curated truth?

A balanced set of CounterFact facts, labelled without the detector's own test:

- *known* (truly current): a fact with its real object (ground_truth) that the unedited
  model already knows, judged by ranking: among the objects that the same prompt
  template takes in CounterFact (at least MIN_CANDIDATES of them), the real object has
  the highest total teacher-forced log-probability after the prompt. No generation.
- *outdated*: a fact with CounterFact's counterfactual object (target_new), which the
  unedited model was never taught.

A second, stricter reading of "known" is scored too: the known facts whose object the
model also says, in its own unbatched greedy completion of 2 x cloze_tokens tokens (not
the detector's batched probe), against as many of the outdated facts.

The pool (records start..start+pool, shuffled with the seed) is split in two halves
by position, so that no subject is in both classes: known facts are taken from the
first half, as many outdated ones from the second. The detector runs over all of them
on the unedited default model (CPU, one torch thread unless --threads says otherwise),
with a real store, queue and check log in a temporary folder. Its verdicts are scored
against the curated labels (precision and recall of "outdated", with Wilson 95%
intervals), beside the baseline that calls every fact outdated.

    .venv/bin/python -m benchmarks.detector --pool 1000 --per-class 100 --out benchmarks/results/detector.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import random
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import torch

from assistant.evaluation.datasets import edit_records
from assistant.evaluation.metrics import answer_contains, completion_logprobs, wilson
from assistant.model.loading import load_model
from benchmarks.common import configured, environment, write_json
from updater.detect.checks import CheckLog
from updater.detect.detector import Detector, DetectorSettings
from assistant.model.answers import first_line
from updater.queue import EditQueue
from updater.store.knowledge import KnowledgeStore

MIN_CANDIDATES = 8      # a template must take at least this many objects for a ranking to mean "known"
MAX_CANDIDATES = 16     # the real object and the template's most frequent other objects


def template(case: dict) -> str:
    return case["prompt"].replace(case["subject"], "{}")


def template_objects(cases: list[dict]) -> dict[str, list[str]]:
    """Each prompt template's objects (real and counterfactual) in CounterFact, most frequent first."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for case in cases:
        counts[template(case)].update([case["ground_truth"], case["target_new"]])
    return {t: [o for o, _ in c.most_common()] for t, c in counts.items()}


def candidates(case: dict, objects: dict[str, list[str]]) -> list[str]:
    """The real object first, then the template's most frequent others."""
    others = [o for o in objects[template(case)] if o != case["ground_truth"]]
    return [case["ground_truth"], *others[:MAX_CANDIDATES - 1]]


def known_ranking(model, tokenizer, cases: list[dict], objects: dict[str, list[str]], batch_size: int) -> list[dict]:
    """For each case: the real object's rank among its candidates (0 = likeliest) and its margin in nats."""
    options = [candidates(case, objects) for case in cases]
    pairs = [(case["prompt"], o) for case, opts in zip(cases, options) for o in opts]
    totals, _ = completion_logprobs(model, tokenizer, [p for p, _ in pairs], [o for _, o in pairs], batch_size)
    result, at = [], 0
    for case, opts in zip(cases, options):
        scores = totals[at:at + len(opts)].tolist()
        at += len(opts)
        best_other = max(range(1, len(opts)), key=lambda i: scores[i])
        result.append({"case_id": case["case_id"], "candidates": len(opts),
                       "rank": sum(s > scores[0] for s in scores[1:]), "margin": scores[0] - scores[best_other],
                       "runner_up": opts[best_other]})
    return result


def record(case: dict, kind: str) -> dict:
    obj = case["ground_truth"] if kind == "known" else case["target_new"]
    return {"id": f"cf-{case['case_id']}-{kind}", "subject": case["subject"], "prompt": case["prompt"], "object": obj}


def balanced_set(model, tokenizer, cases: list[dict], start: int, pool: int, per_class: int, seed: int,
                 batch_size: int) -> tuple[list[dict], dict[str, bool], list[dict]]:
    """Records, the curated label of each (True: outdated), and the ranking evidence of the known ones."""
    objects = template_objects(cases)
    eligible = [c for c in cases[start:start + pool] if len(objects[template(c)]) >= MIN_CANDIDATES]
    random.Random(seed).shuffle(eligible)
    half = len(eligible) // 2
    ranking = known_ranking(model, tokenizer, eligible[:half], objects, batch_size)
    known = [(case, r) for case, r in zip(eligible[:half], ranking) if r["rank"] == 0][:per_class]
    outdated = eligible[half:half + len(known)]
    records = [record(case, "known") for case, _ in known] + [record(case, "outdated") for case in outdated]
    truth = {r["id"]: r["id"].endswith("-outdated") for r in records}
    return records, truth, [{"prompt": case["prompt"], "object": case["ground_truth"], **r} for case, r in known]


def said_by_model(model, tokenizer, prompts: list[str], tokens: int) -> list[str]:
    """Unbatched greedy completions of ``tokens`` new tokens, first line only."""
    device, said = next(model.parameters()).device, []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt).input_ids], device=device)
            output = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
            said.append(first_line(tokenizer.decode(output, skip_special_tokens=True)))
    return said


def stricter(facts, truth: dict[str, bool], known: list[dict]) -> list[int]:
    """Positions of the known facts the model also says, and of as many outdated ones."""
    says = {f"cf-{k['case_id']}-known" for k in known if k["says_it"]}
    mine = [i for i, f in enumerate(facts) if f.id in says]
    outdated = [i for i, f in enumerate(facts) if truth[f.id]][:len(mine)]
    return sorted(mine + outdated)


def scores(predicted: list[bool], actual: list[bool]) -> dict:
    """Precision and recall of "outdated" with 95% intervals, F1, accuracy and the confusion counts."""
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    tn = len(actual) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"precision": precision, "precision_95": wilson(tp, tp + fp), "recall": recall,
            "recall_95": wilson(tp, tp + fn), "f1": f1, "accuracy": (tp + tn) / len(actual),
            "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def run_detector(config, loaded, records: list[dict], folder: Path, batch_size: int):
    with KnowledgeStore(folder / "knowledge", config.updater) as store, EditQueue(folder / "queue.sqlite") as queue, \
            CheckLog(folder / "checks.sqlite") as checks:
        store.import_records([(f"record {i}", r) for i, r in enumerate(records)], who="benchmark")
        facts = store.facts()
        detector = Detector(loaded.model, loaded.tokenizer, store, queue, checks,
                            DetectorSettings.from_config(config, batch_size))
        started = time.perf_counter()
        report = detector.run()
        return facts, report, time.perf_counter() - started, detector.settings


def rows(facts, checks: dict, truth: dict[str, bool]) -> dict:
    """The first six facts, and every fact where the detector and the curated label disagree."""
    table = [{"id": f.id, "prompt": f.filled_prompt, "object": f.object, "answer": checks[f.id].answer,
              "p_object": checks[f.id].p_object, "detector_outdated": checks[f.id].outdated,
              "curated_outdated": truth[f.id]} for f in facts]
    return {"first": table[:6], "disagreements": [r for r in table if r["detector_outdated"] != r["curated_outdated"]]}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=0, help="first CounterFact record of the pool")
    parser.add_argument("--pool", type=int, default=1000, help="CounterFact records to draw both classes from")
    parser.add_argument("--per-class", type=int, default=100, help="at most this many known and as many outdated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1 by default: on a shared 2-core machine 2 threads is far slower)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--out", required=True, help="JSON results file")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = configured(args.set)
    torch.set_num_threads(args.threads)
    loaded = load_model(config)
    cases = edit_records(config.paths.shared_data_dir(), "counterfact")
    started = time.perf_counter()
    records, truth, known = balanced_set(loaded.model, loaded.tokenizer, cases, args.start, args.pool,
                                         args.per_class, args.seed, args.batch_size)
    tokens = DetectorSettings.from_config(config).probe.cloze_tokens * 2
    for k, answer in zip(known, said_by_model(loaded.model, loaded.tokenizer, [k["prompt"] for k in known], tokens)):
        k |= {"model_says": answer, "says_it": answer_contains(answer, k["object"])}
    labelling_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="livedit-detector-") as folder:
        facts, report, seconds, settings = run_detector(config, loaded, records, Path(folder), args.batch_size)
    checks = {check.fact_id: check for check in report.checks}
    actual = [truth[f.id] for f in facts]
    detector = scores([checks[f.id].outdated for f in facts], actual)
    baseline = scores([True] * len(facts), actual)
    strict = stricter(facts, truth, known)
    strict_actual = [actual[i] for i in strict]
    write_json(args.out, {
        "data": "counterfact", "slice": {"start": args.start, "pool": args.pool, "per_class": args.per_class},
        "seed": args.seed, "environment": environment(), "load_average_1m_5m_15m": os.getloadavg(),
        "config": {"detector": dataclasses.asdict(settings), "batch_size": args.batch_size, "overrides": args.set,
                   "min_candidates": MIN_CANDIDATES, "max_candidates": MAX_CANDIDATES},
        "labels": {"how": "known: real object ranked first by total log-probability among the template's "
                          "CounterFact objects; outdated: CounterFact's counterfactual object",
                   f"known_said_within_{tokens}_tokens": sum(k["says_it"] for k in known),
                   "known": sum(not a for a in actual), "outdated": sum(actual), "seconds": labelling_seconds},
        "detector": {"seconds": seconds, "facts_per_minute": 60 * len(facts) / seconds,
                     "outdated": len(report.outdated), "queued": len(report.queued)},
        "detector_vs_curated": detector, "always_outdated_vs_curated": baseline,
        f"known_and_said_within_{tokens}_tokens": {
            "known": sum(not a for a in strict_actual), "outdated": sum(strict_actual),
            "detector_vs_curated": scores([checks[facts[i].id].outdated for i in strict], strict_actual),
            "always_outdated_vs_curated": scores([True] * len(strict), strict_actual)},
        "known_facts": known, "examples": rows(facts, checks, truth),
    })
    print(f"detector: {60 * len(facts) / seconds:.0f} facts/min on {sum(not a for a in actual)} known + "
          f"{sum(actual)} outdated facts; precision {detector['precision']:.3f} {detector['precision_95']}, "
          f"recall {detector['recall']:.3f} {detector['recall_95']}; always outdated: precision "
          f"{baseline['precision']:.3f}, recall {baseline['recall']:.3f}")


if __name__ == "__main__":
    main()
