"""Sequential-editing benchmark: one method over N facts of a data set, batch after batch,
with every edit so far and the general measures evaluated every K edits.

A run owns a state directory (its own ledger and sums) and a results JSON that is
rewritten after every batch, so an interrupted run continues where it stopped when
started again with the same plan.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from assistant.model.chat import greedy_continuations
from assistant.config import METHODS, Config
from assistant.evaluation.datasets import (DATASETS, ChoiceItem, counterfact_twins, heldout_text, load_edit_facts,
                                mmlu_items, sst2_items)
from assistant.errors import ConfigError, StateError
from assistant.facts import Fact
from assistant.evaluation.locality import LocalityReference, locality_reference, measure_locality, unrelated_questions
from assistant.evaluation.metrics import (chat_scores, choice_accuracy, completion_nll, counterfact_scores, fluency,
                                           perplexity, wilson)
from assistant.model.answers import cloze_completions_hold

RESULTS_VERSION = 1
CHAT_ANSWER_TOKENS = 32                            # greedy answer length of the chat measures


@dataclass(frozen=True)
class BenchPlan:
    method: str
    dataset: str = "counterfact"
    start: int = 0
    count: int = 1000
    batch_size: int = 10
    every: int = 100
    seed: int = 0
    token_lengths: tuple[int, int] | None = None   # only new objects of this many tokens
    general_items: int = 100                       # MMLU and SST-2 questions, each
    heldout_lines: int = 40                        # WikiText-2 validation lines for perplexity
    fluency_prompts: int = 10
    fluency_tokens: int = 40
    chat: bool = False                             # also chat efficacy (greedy answers) and locality of the edits
    general_questions: int = 50                    # with chat: general questions in the locality set

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"data set {self.dataset!r} is unknown; use one of {', '.join(DATASETS)}")
        if min(self.count, self.batch_size, self.every) < 1 or self.start < 0:
            raise ConfigError("count, batch size and --every must be positive, and start not negative")

    @property
    def name(self) -> str:
        lengths = f"-tok{self.token_lengths[0]}-{self.token_lengths[1]}" if self.token_lengths else ""
        return f"{self.dataset}{lengths}-{self.method}-b{self.batch_size}-n{self.count}"

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["token_lengths"] = list(self.token_lengths) if self.token_lengths else None
        return data


@dataclass(frozen=True)
class GeneralTasks:
    heldout: list[str]
    fluency_prompts: list[str]
    mmlu: list[ChoiceItem]
    sst2: list[ChoiceItem]


def general_tasks(config: Config, plan: BenchPlan, probes: list[Fact]) -> GeneralTasks:
    shared = config.paths.shared_data_dir()
    return GeneralTasks(heldout_text(shared, plan.heldout_lines),
                        [f.filled_prompt for f in probes[:plan.fluency_prompts]],
                        mmlu_items(shared, plan.general_items, plan.seed),
                        sst2_items(shared, plan.general_items, plan.seed))


def _choices(model, tokenizer, items: list[ChoiceItem]) -> float:
    return choice_accuracy(model, tokenizer, [i.prompt for i in items], [list(i.options) for i in items],
                           [i.answer for i in items])


def general_measures(model, tokenizer, tasks: GeneralTasks, fluency_tokens: int) -> dict:
    """Perplexity on held-out text, fluency of greedy generations, MMLU and SST-2 accuracy."""
    encoded = [tokenizer(p).input_ids for p in tasks.fluency_prompts]
    generations = greedy_continuations(model, tokenizer, encoded, fluency_tokens)
    return {"perplexity": perplexity(model, tokenizer, tasks.heldout),
            "fluency": sum(map(fluency, generations)) / max(len(generations), 1),
            "mmlu": _choices(model, tokenizer, tasks.mmlu), "sst2": _choices(model, tokenizer, tasks.sst2),
            "generation_sample": generations[0] if generations else ""}


def edit_measures(model, tokenizer, facts: list[Fact], probes: list[Fact] | None,
                  locality: LocalityReference | None, system_prompt: str) -> dict:
    """Efficacy, paraphrase and neighbourhood specificity (and their magnitudes) of the
    edits; with ``probes`` (the CounterFact twins of MQD facts), specificity comes from those.
    With a ``locality`` reference (chat runs), also the chat scores and chat locality."""
    result = dataclasses.asdict(counterfact_scores(model, tokenizer, facts))
    said = sum(cloze_completions_hold(model, tokenizer, facts))
    result["said"] = {"count": said, "of": len(facts), "interval95": wilson(said, len(facts))}
    if probes is not None:
        twins = counterfact_scores(model, tokenizer, probes)
        result |= {"neighborhood": twins.neighborhood, "neighborhood_magnitude": twins.neighborhood_magnitude}
    if locality is not None:
        scores = chat_scores(model, tokenizer, facts, CHAT_ANSWER_TOKENS, system_prompt)
        result |= {"chat_efficacy": scores.efficacy, "chat_paraphrase": scores.paraphrase,
                   "chat": scores.to_json(), "chat_locality": measure_locality(model, tokenizer, locality).to_json()}
    return result


def target_perplexity(model, tokenizer, facts: list[Fact]) -> dict:
    """How surprising the new targets are to a model: per-fact perplexity of target_new
    after its prompt (exp of the mean per-token NLL), summarised."""
    per_fact = torch.exp(completion_nll(model, tokenizer, [f.filled_prompt for f in facts],
                                        [f.target_new for f in facts]))
    return {"mean": per_fact.mean().item(), "median": per_fact.median().item(),
            "per_fact": [round(v, 3) for v in per_fact.tolist()]}


def source_commit() -> str:
    """The checkout's commit (LIVEDIT_COMMIT where the copy has no git), marked when tracked
    files other than benchmark results differ from it; empty when neither says."""
    commit = os.environ.get("LIVEDIT_COMMIT", "")
    if commit:
        return commit
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=root).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                  ":!benchmarks/results"], capture_output=True, text=True, cwd=root).stdout.strip()
    except OSError:
        return ""
    return commit + ("+uncommitted changes" if commit and changed else "")


def environment() -> dict:
    """The machine, the library versions, the start time and the commit of a result."""
    device = "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": source_commit()}


def write_json(path: Path | str, payload: dict) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(payload, indent=1))
    os.replace(temporary, path)


def _checkpoint(editor, facts, probes, tasks, plan, done: int, results: dict,
                locality: LocalityReference | None) -> dict:
    model, tok = editor.model, editor.tokenizer
    started = time.perf_counter()
    scored = slice(0, done or len(facts))               # the unedited model: every fact of the run
    point = {"edits": done, **edit_measures(model, tok, facts[scored], None if probes is facts else probes[scored],
                                            locality, editor.system_prompt),
             **general_measures(model, tok, tasks, plan.fluency_tokens),
             "seconds_per_edit": results["edit_seconds"] / done if done else None,
             "l1_growth": {str(n.layer): n.growth for n in editor.norms()},
             "l1": {str(n.layer): n.mean_abs for n in editor.norms()}}
    point["evaluation_seconds"] = time.perf_counter() - started
    return point


def run_bench(config: Config, plan: BenchPlan, out_dir: Path, state_dir: Path | None = None,
              report=print) -> dict:
    """Run (or continue) one plan; returns the results also written to out_dir/<name>.json."""
    from assistant.editing.editor import Editor

    out_dir = Path(out_dir)
    results_path = out_dir / f"{plan.name}.json"
    state_dir = Path(state_dir) if state_dir else config.paths.home_dir() / "bench" / plan.name
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    if results and results["plan"] != plan.to_json():
        raise ConfigError(f"{results_path} holds a different plan; choose another --out or remove that file")
    editor = Editor.open(config, state_dir=state_dir, method=plan.method, progress=True)
    done = len(editor.edits())
    if done and results is None:
        raise StateError(f"{state_dir} already holds {done} edits but {results_path} does not exist; "
                         "remove the state directory or point --out at the run's results")
    shared = config.paths.shared_data_dir()
    facts = load_edit_facts(shared, plan.dataset, plan.start, plan.count, plan.seed, plan.token_lengths,
                            editor.tokenizer)
    probes = counterfact_twins(shared, facts) if plan.dataset.startswith("mqd-") else facts
    tasks = general_tasks(config, plan, probes)
    locality = None
    if plan.chat:                                       # the unedited model's answers to unrelated questions
        with editor.unedited() as unedited:
            locality = locality_reference(unedited, editor.tokenizer,
                                          unrelated_questions(facts, shared, plan.general_questions),
                                          CHAT_ANSWER_TOKENS, editor.system_prompt)
    if results is None:
        results = {"version": RESULTS_VERSION, "plan": plan.to_json(), "config": dataclasses.asdict(config.editing),
                   "covariance": dataclasses.asdict(config.covariance), "environment": environment(),
                   "model": str(editor.loaded.path), "edit_seconds": 0.0, "checkpoints": []}
        report(f"{plan.name}: measuring the unedited model")
        results["target_perplexity"] = target_perplexity(editor.model, editor.tokenizer, facts)
        results["checkpoints"].append(_checkpoint(editor, facts, probes, tasks, plan, 0, results, locality))
        write_json(results_path, results)
    while True:
        if done > results["checkpoints"][-1]["edits"] and (done % plan.every == 0 or done == len(facts)):
            results["checkpoints"].append(_checkpoint(editor, facts, probes, tasks, plan, done, results, locality))
            write_json(results_path, results)
            point = results["checkpoints"][-1]
            report(f"{plan.name} after {done}: efficacy {point['efficacy']:.3f} paraphrase "
                   f"{point['paraphrase']:.3f} neighbourhood {point['neighborhood']:.3f} perplexity "
                   f"{point['perplexity']:.2f} said {point['said']['count']}/{point['said']['of']} max L1 growth {max(point['l1_growth'].values()) * 100:.2f}%"
                   + (f" chat {point['chat_efficacy']:.2f}/{point['chat_paraphrase']:.2f} locality agreement "
                      f"{point['chat_locality']['agreement']:.3f} kept {point['chat_locality']['kept']}/"
                      f"{point['chat_locality']['questions']}" if plan.chat else ""))
            continue
        if done == len(facts):
            break
        batch = facts[done:done + min(plan.batch_size, plan.every - done % plan.every)]
        started = time.perf_counter()
        editor.apply(batch, batch_size=plan.batch_size)
        results["edit_seconds"] += time.perf_counter() - started
        done += len(batch)
        write_json(results_path, results)
        report(f"{plan.name}: {done}/{len(facts)} edits, {results['edit_seconds'] / done:.2f} s/edit")
    return results
