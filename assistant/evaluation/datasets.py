"""The public evaluation data in ../shared/data, read into facts and task items.

Edit data sets: counterfact, zsre, qaedit, and the three MQD kinds built from
CounterFact (mqd-yesno, mqd-choice, mqd-direct). General-ability tasks: held-out
WikiText-2 text for perplexity, fixed samples of MMLU and SST-2.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

from assistant.corpora import EDIT_FILES, edit_file_records
from assistant.errors import ConfigError
from assistant.facts import Fact, fact_from_record
from assistant.evaluation.mqd import KINDS, mqd_fact

DATASETS = (*EDIT_FILES, *(f"mqd-{kind}" for kind in KINDS))


def edit_records(shared_data: Path, name: str) -> list[dict]:
    """The records of a data set's file (the MQD kinds are built from CounterFact's)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    return edit_file_records(shared_data, "counterfact" if name.startswith("mqd-") else name)


def load_edit_facts(shared_data: Path, name: str, start: int, count: int, seed: int = 0,
                    token_lengths: tuple[int, int] | None = None, tokenizer=None) -> list[Fact]:
    """``count`` facts of a data set from record ``start`` on. With ``token_lengths``
    (lowest, highest), only records whose new object has that many tokens are taken."""
    records = edit_records(shared_data, name)
    chosen = []
    for index in range(start, len(records)):
        if len(chosen) == count:
            break
        record = records[index]
        if token_lengths:
            length = len(tokenizer(" " + record["target_new"], add_special_tokens=False).input_ids)
            if not token_lengths[0] <= length <= token_lengths[1]:
                continue
        chosen.append((index, record))
    if len(chosen) < count:
        raise ConfigError(f"{name} has only {len(chosen)} matching records from {start} on; ask for fewer")
    if name.startswith("mqd-"):
        return [mqd_fact(record, name.removeprefix("mqd-"), records, seed) for _, record in chosen]
    return [fact_from_record(record, f"{name}[{index}]") for index, record in chosen]


def counterfact_twins(shared_data: Path, facts: list[Fact]) -> list[Fact]:
    """The CounterFact facts behind MQD facts (for neighbourhood specificity)."""
    records = {r["case_id"]: r for r in edit_records(shared_data, "counterfact")}
    return [fact_from_record(records[int(f.id.rsplit("-", 1)[1])]) for f in facts]


@dataclass(frozen=True)
class ChoiceItem:
    prompt: str
    options: tuple[str, ...]
    answer: int


def mmlu_items(shared_data: Path, count: int, seed: int = 0) -> list[ChoiceItem]:
    """A fixed random sample of MMLU test questions, zero-shot, answered by letter."""
    items = []
    for path in sorted((shared_data / "general" / "mmlu" / "test").glob("*_test.csv")):
        subject = path.stem.removesuffix("_test").replace("_", " ")
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))
        for row in rows[1:] if rows and rows[0][0] == "question" else rows:
            question, choices, answer = row[0], row[1:5], row[5]
            listed = "\n".join(f"{letter}. {choice}" for letter, choice in zip("ABCD", choices))
            prompt = (f"The following is a multiple choice question about {subject}.\n\n"
                      f"{question}\n{listed}\nAnswer:")
            items.append(ChoiceItem(prompt, ("A", "B", "C", "D"), "ABCD".index(answer) if answer in "ABCD"
                                    else int(answer)))
    return random.Random(seed).sample(items, min(count, len(items)))


SST2_SHOTS = 4


def sst2_items(shared_data: Path, count: int, seed: int = 0) -> list[ChoiceItem]:
    """A fixed random sample of SST-2 dev sentences, with four fixed examples in front."""
    with (shared_data / "general" / "sst2" / "dev.tsv").open(encoding="utf-8") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    labels = ("negative", "positive")
    shots = rows[:SST2_SHOTS]
    header = "".join(f"Review: {text.strip()}\nSentiment: {labels[int(label)]}\n\n" for text, label in shots)
    sample = random.Random(seed).sample(rows[SST2_SHOTS:], min(count, len(rows) - SST2_SHOTS))
    return [ChoiceItem(f"{header}Review: {text.strip()}\nSentiment:", labels, int(label)) for text, label in sample]


def heldout_text(shared_data: Path, lines: int) -> list[str]:
    """The first ``lines`` non-empty lines of WikiText-2's validation split (the covariance
    statistics use the test split and ME-PPL, so this text is held out)."""
    path = shared_data / "text" / "wikitext2_tokenized" / "valid.txt"
    kept = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return kept[:lines]
