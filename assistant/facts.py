"""Facts to edit: our own record format, and the public data sets' formats.

A fact's ``prompt`` is a template with exactly one ``{}`` where the subject goes. A
prompt given with the subject written out is turned into that template.
"""

from __future__ import annotations

import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.errors import InvalidFact

MAX_FIELD_CHARS = 2000
OWN_FIELDS = {"id", "subject", "prompt", "target_new", "target_true", "question", "paraphrases", "neighborhood"}
COUNTERFACT_FIELDS = {"case_id", "prompt", "target_new", "subject", "ground_truth", "rephrase_prompt",
                      "locality_prompt", "locality_ground_truth"}
QAEDIT_FIELDS = {"id", "source", "prompt", "target", "subject", "rephrase", "locality"}
ZSRE_FIELDS = {"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans", "cond", "portability"}


@dataclass(frozen=True)
class Fact:
    id: str
    subject: str
    prompt: str                      # template with one "{}" for the subject
    target_new: str
    target_true: str | None = None
    question: str | None = None      # a natural question whose answer is target_new
    paraphrases: tuple[str, ...] = field(default_factory=tuple)
    neighborhood: tuple[tuple[str, str], ...] = field(default_factory=tuple)  # (prompt, answer)

    @property
    def filled_prompt(self) -> str:
        return self.prompt.replace("{}", self.subject)

    def to_record(self) -> dict:
        record = asdict(self)
        record["paraphrases"] = list(self.paraphrases)
        record["neighborhood"] = [list(pair) for pair in self.neighborhood]
        return {key: value for key, value in record.items() if value not in (None, [], ())}


def _clean_text(value, name: str, where: str, required: bool) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidFact(f"{where}: field {name!r} is empty; give a non-empty string")
        return None
    if isinstance(value, float) and math.isnan(value):
        raise InvalidFact(f"{where}: field {name!r} is NaN; give a string")
    if not isinstance(value, str):
        raise InvalidFact(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidFact(f"{where}: field {name!r} has {len(value)} characters; the limit is {MAX_FIELD_CHARS}")
    bad = [ch for ch in value if unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn") and ch not in "\n\t"]
    if bad:
        raise InvalidFact(f"{where}: field {name!r} contains unsupported character {bad[0]!r}; remove it")
    return value.strip() if name != "target_new" else value.strip()


def make_template(prompt: str, subject: str, where: str) -> str:
    """The prompt as a template with one "{}" for the subject."""
    if prompt.count("{}") > 1:
        raise InvalidFact(f"{where}: prompt has more than one '{{}}'; use exactly one for the subject")
    if "{}" in prompt:
        return prompt
    if subject not in prompt:
        raise InvalidFact(
            f"{where}: subject {subject!r} does not occur in prompt {prompt!r}; "
            "write the subject into the prompt or mark its place with {}"
        )
    return prompt.replace(subject, "{}", 1)


def make_fact(*, id, subject, prompt, target_new, target_true=None, question=None,
              paraphrases=(), neighborhood=(), where: str | None = None) -> Fact:
    where = where or (f"fact {id}" if id not in (None, "") else "fact")
    subject = _clean_text(subject, "subject", where, True)
    prompt = _clean_text(prompt, "prompt", where, True)
    target_new = _clean_text(target_new, "target_new", where, True)
    if not isinstance(paraphrases, (list, tuple)) or not isinstance(neighborhood, (list, tuple)):
        raise InvalidFact(f"{where}: paraphrases and neighborhood must be lists")
    fact = Fact(
        id=str(id) if id not in (None, "") else _content_id(subject, prompt),
        subject=subject,
        prompt=make_template(prompt, subject, where),
        target_new=target_new,
        target_true=_clean_text(target_true, "target_true", where, False),
        question=_clean_text(question, "question", where, False),
        paraphrases=tuple(_clean_text(p, "paraphrases", where, True) for p in paraphrases),
        neighborhood=tuple((_clean_text(p, "neighborhood", where, True), _clean_text(a, "neighborhood", where, True))
                           for p, a in neighborhood),
    )
    if fact.target_true is not None and fact.target_true == fact.target_new:
        raise InvalidFact(f"{where}: target_new equals target_true ({fact.target_new!r}); nothing to edit")
    return fact


def _content_id(subject: str, prompt: str) -> str:
    import hashlib
    return "f-" + hashlib.sha1(f"{subject}\x00{prompt}".encode()).hexdigest()[:12]


def csv_unquoted(text):
    """A text left in CSV quoting undone ('"The ""Giant Marbles"" rock formation ...?"' is
    'The "Giant Marbles" rock formation ...?', as 17 of QAEdit's 700 questions come); any other
    value as it is."""
    if isinstance(text, str) and len(text) > 1 and text[0] == text[-1] == '"' and '"' not in text[1:-1].replace('""', ""):
        return text[1:-1].replace('""', '"')
    return text


def fact_from_record(record: dict, where: str = "record") -> Fact:
    """One record in our format, EasyEdit's CounterFact, QAEdit or zsRE."""
    if not isinstance(record, dict):
        raise InvalidFact(f"{where}: expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if "case_id" in keys and keys <= COUNTERFACT_FIELDS:
        return make_fact(
            id=f"cf-{record['case_id']}", subject=record.get("subject"), prompt=record.get("prompt"),
            target_new=record.get("target_new"), target_true=record.get("ground_truth"),
            paraphrases=[record["rephrase_prompt"]] if record.get("rephrase_prompt") else [],
            neighborhood=[(record["locality_prompt"], record["locality_ground_truth"])]
            if record.get("locality_prompt") else [],
            where=where,
        )
    if "target" in keys and "source" in keys and keys <= QAEDIT_FIELDS:
        question = csv_unquoted(record.get("prompt"))
        return make_fact(
            id=f"qa-{record.get('id')}", subject=record.get("subject"), prompt=question,
            target_new=record.get("target"), question=question,
            paraphrases=[record["rephrase"]] if record.get("rephrase") else [],
            neighborhood=[(item["loc"], item["loc_ans"]) for item in record.get("locality") or []],
            where=where,
        )
    if "src" in keys and "alt" in keys and keys <= ZSRE_FIELDS:
        return make_fact(
            id=None, subject=record.get("subject"), prompt=record.get("src"), target_new=record.get("alt"),
            target_true=(record.get("answers") or [None])[0], question=record.get("src"),
            paraphrases=[record["rephrase"]] if record.get("rephrase") else [],
            neighborhood=[(record["loc"].removeprefix("nq question: "), record["loc_ans"])]
            if record.get("loc") else [],
            where=where,
        )
    unknown = sorted(keys - OWN_FIELDS)
    if unknown:
        raise InvalidFact(
            f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(OWN_FIELDS))} "
            "(or EasyEdit CounterFact, QAEdit and zsRE records)"
        )
    return make_fact(**{key: record.get(key) for key in OWN_FIELDS if key in record}, where=where)


def read_text_strict(path: Path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidFact(f"{path}: not UTF-8 (byte {error.start}: {error.reason}); save the file as UTF-8") from error
    except OSError as error:
        raise InvalidFact(f"{path}: cannot read ({error.strerror})") from error


def json_records(text: str, name: str) -> list[tuple[str, object]]:
    """Each record of a JSON array or of JSONL text, with where it is ("facts.jsonl line 7")."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidFact(f"{name}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
        if not isinstance(records, list):
            raise InvalidFact(f"{name}: expected a JSON array of records")
        return [(f"{name} record {number}", record) for number, record in enumerate(records, start=1)]
    located = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            located.append((f"{name} line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise InvalidFact(f"{name} line {number}: invalid JSON at column {error.colno}: {error.msg}; "
                              "write one JSON object per line") from None
    return located


def load_facts(path: Path | str) -> list[Fact]:
    """All facts in a JSONL file or a JSON array; any bad record fails the whole file."""
    path = Path(path)
    located = json_records(read_text_strict(path).lstrip("\ufeff"), str(path))
    facts = [fact_from_record(record, where) for where, record in located]
    if not facts:
        raise InvalidFact(f"{path}: no facts found")
    seen: dict[str, str] = {}
    for (where, _), fact in zip(located, facts):
        if fact.id in seen:
            raise InvalidFact(f"{where}: duplicate id {fact.id!r} (first at {seen[fact.id]})")
        seen[fact.id] = where
    return facts
