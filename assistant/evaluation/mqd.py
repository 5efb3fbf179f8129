"""The Multi-Question Dataset (MQD): one CounterFact fact asked three ways.

Each CounterFact record becomes three editing targets over the same knowledge:
- yes/no: "Question: Is it true that the mother tongue of X is English? Answer:" -> "Yes";
- multiple choice: the prompt with four options (the true object, the new object and two
  distractors) -> the new object's letter;
- direct: the prompt itself -> the new object.
Pure functions of the records and a seed; reading the files is datasets.py's job.
"""

from __future__ import annotations

import random

from assistant.facts import Fact, make_fact

KINDS = ("yesno", "choice", "direct")
LETTERS = "ABCD"
_FUNCTION_WORDS = {"the", "a", "an", "in", "on", "at", "of", "to", "for", "from", "by", "with", "what", "which",
                   "who", "where", "when", "its", "his", "her", "their", "this", "that", "one", "some"}


def as_clause(prompt: str, subject: str) -> str:
    """The prompt as it reads inside a sentence: a leading function word lower-cased."""
    first = prompt.split(" ", 1)[0]
    if prompt.startswith(subject) or first.lower() not in _FUNCTION_WORDS:
        return prompt
    return first.lower() + prompt[len(first):]


def yesno_prompt(prompt: str, subject: str, obj: str) -> str:
    return f"Question: Is it true that {as_clause(prompt, subject)} {obj}? Answer:"


def choice_prompt(prompt: str, options: list[str]) -> str:
    listed = " ".join(f"{letter}. {option}" for letter, option in zip(LETTERS, options))
    return f"Question: {prompt} ___. Which option fills the blank? {listed} Answer:"


def _template(record: dict) -> str:
    return record["prompt"].replace(record["subject"], "{}")


def choice_options(record: dict, records: list[dict], rng: random.Random) -> list[str]:
    """The true and the new object with two distractors, preferably objects of the same
    relation (records sharing the prompt template), shuffled."""
    taken = {record["ground_truth"], record["target_new"]}
    template = _template(record)
    same = sorted({r[key] for r in records if _template(r) == template
                   for key in ("ground_truth", "target_new")} - taken)
    pool = same if len(same) >= 2 else sorted({r[key] for r in records for key in ("ground_truth", "target_new")} - taken)
    options = [record["ground_truth"], record["target_new"], *rng.sample(pool, 2)]
    rng.shuffle(options)
    return options


def mqd_fact(record: dict, kind: str, records: list[dict], seed: int = 0) -> Fact:
    """One CounterFact record (EasyEdit's flat format) as an MQD fact of the given kind."""
    subject, prompt, new, true = record["subject"], record["prompt"], record["target_new"], record["ground_truth"]
    paraphrase = record.get("rephrase_prompt")
    where, fact_id = f"counterfact case {record['case_id']}", f"mqd-{kind}-{record['case_id']}"
    if kind == "direct":
        return make_fact(id=fact_id, subject=subject, prompt=prompt, target_new=new, target_true=true,
                         paraphrases=[paraphrase] if paraphrase else [], where=where)
    if kind == "yesno":
        return make_fact(id=fact_id, subject=subject, prompt=yesno_prompt(prompt, subject, new), target_new="Yes",
                         target_true="No", where=where,
                         paraphrases=[yesno_prompt(paraphrase, subject, new)] if paraphrase and subject in paraphrase
                         else [])
    if kind == "choice":
        options = choice_options(record, records, random.Random(f"{seed}-{record['case_id']}"))
        new_letter, true_letter = LETTERS[options.index(new)], LETTERS[options.index(true)]
        return make_fact(id=fact_id, subject=subject, prompt=choice_prompt(prompt, options), target_new=new_letter,
                         target_true=true_letter, where=where,
                         paraphrases=[choice_prompt(paraphrase, options)] if paraphrase and subject in paraphrase
                         else [])
    raise ValueError(f"unknown MQD kind {kind!r}; use one of {', '.join(KINDS)}")
