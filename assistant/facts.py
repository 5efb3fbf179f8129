"""Facts: one record format for every command, the public data sets' formats, one cleaner.

A fact's ``prompt`` is a template with exactly one ``{}`` where the subject goes. A
prompt given with the subject written out is turned into that template. A fact without
an ``id`` gets its content id, the same for the engine and the knowledge store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.errors import InvalidFact

MAX_TEXT_CHARS = 2000   # the most [updater] max_text_chars allows: the engine takes every curated fact
MAX_ID_CHARS = 1000     # likewise [updater] max_id_chars
EDIT_FIELDS = ("id", "subject", "prompt", "target_new", "target_true", "question", "paraphrases", "neighborhood")
CURATION_FIELDS = ("aliases", "source", "curator", "valid_from")   # what the knowledge store keeps besides
VERSION_FIELDS = ("version", "recorded_at", "note")                 # set by the store; ignored when read
FIELD_ALIASES = {"object": "target_new"}                            # the store's name for the new target
OWN_FIELDS = {*EDIT_FIELDS, *CURATION_FIELDS, *VERSION_FIELDS, *FIELD_ALIASES}
COUNTERFACT_FIELDS = {"case_id", "prompt", "target_new", "subject", "ground_truth", "rephrase_prompt",
                      "locality_prompt", "locality_ground_truth"}
QAEDIT_FIELDS = {"id", "source", "prompt", "target", "subject", "rephrase", "locality"}
ZSRE_FIELDS = {"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans", "cond", "portability"}
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")
FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Co", "Cn", "Zl", "Zp"}   # controls, surrogates, private, unassigned, breaks
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MULTILINE_ALLOWED = set("\n\t")     # in paraphrases and neighbourhood prompts (the data sets have them)


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


def clean_text(value, name: str, where: str, limit: int = MAX_TEXT_CHARS, required: bool = True,
               setting: str | None = None, multiline: bool = False) -> str | None:
    """The value as NFC text without surrounding blanks, or an InvalidFact naming the problem.

    setting: the config key that sets ``limit`` ("[updater] max_text_chars"), named in the message.
    multiline: line breaks and tabs are allowed.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidFact(f"{where}: field {name!r} is empty; give a non-empty value")
        return None
    if isinstance(value, float) and math.isnan(value):
        raise InvalidFact(f"{where}: field {name!r} is NaN; give text")
    if not isinstance(value, str):
        raise InvalidFact(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value).strip()
    if len(text) > limit:
        hint = f", or raise {setting}" if setting else ""
        raise InvalidFact(f"{where}: field {name!r} has {len(text)} characters; the limit is {limit} "
                          f"(shorten it{hint})")
    allowed = MULTILINE_ALLOWED if multiline else set()
    for position, char in enumerate(text, start=1):
        if char not in allowed and (unicodedata.category(char) in FORBIDDEN_CATEGORIES or char in BIDI_CONTROLS):
            raise InvalidFact(
                f"{where}: field {name!r} contains unsupported character U+{ord(char):04X} at position "
                f"{position}; remove it (control, line-break, direction and unassigned characters are not allowed)")
    return text


def clean_id(value, where: str, limit: int = MAX_ID_CHARS, setting: str | None = None) -> str:
    text = clean_text(str(value) if isinstance(value, int) and not isinstance(value, bool) else value,
                      "id", where, limit, setting=setting)
    if not ID_PATTERN.fullmatch(text):
        raise InvalidFact(f"{where}: id {text!r} is not usable; use up to {limit} letters, digits and . _ : @ / + -, "
                          "starting with a letter or digit")
    return text


def content_id(subject: str, template: str, prefix: str = "f") -> str:
    """The id of a fact given without one: the same subject and template give the same id."""
    return f"{prefix}-" + hashlib.sha1(f"{subject}\x00{template}".encode()).hexdigest()[:12]


def make_template(prompt: str, subject: str, where: str) -> str:
    """The prompt as a template with one "{}" for the subject."""
    if prompt.count("{}") > 1:
        raise InvalidFact(f"{where}: prompt has more than one '{{}}'; use exactly one for the subject")
    if "{}" not in prompt and subject not in prompt:
        raise InvalidFact(
            f"{where}: subject {subject!r} does not occur in prompt {prompt!r}; "
            "write the subject into the prompt or mark its place with {}"
        )
    template = prompt if "{}" in prompt else prompt.replace(subject, "{}", 1)
    if not template.replace("{}", "").strip():
        raise InvalidFact(f"{where}: prompt {prompt!r} is only the subject; write the relation around it")
    return template


def make_fact(*, subject, prompt, target_new, id=None, target_true=None, question=None,
              paraphrases=(), neighborhood=(), where: str | None = None) -> Fact:
    """A checked Fact; without an id it gets the content id of its subject and template."""
    where = where or (f"fact {id}" if id not in (None, "") else "fact")
    subject = clean_text(subject, "subject", where)
    prompt = make_template(clean_text(prompt, "prompt", where), subject, where)
    paraphrases, neighborhood = paraphrases or (), neighborhood or ()
    if not isinstance(paraphrases, (list, tuple)) or not isinstance(neighborhood, (list, tuple)):
        raise InvalidFact(f"{where}: paraphrases and neighborhood must be lists")
    if not all(isinstance(pair, (list, tuple)) and len(pair) == 2 for pair in neighborhood):
        raise InvalidFact(f"{where}: each neighborhood item must be a [prompt, answer] pair")
    fact = Fact(
        id=clean_id(id, where) if id not in (None, "") else content_id(subject, prompt),
        subject=subject,
        prompt=prompt,
        target_new=clean_text(target_new, "target_new", where),
        target_true=clean_text(target_true, "target_true", where, required=False),
        question=clean_text(question, "question", where, required=False),
        paraphrases=tuple(clean_text(p, "paraphrases", where, multiline=True) for p in paraphrases),
        neighborhood=tuple((clean_text(p, "neighborhood", where, multiline=True),
                            clean_text(a, "neighborhood", where, multiline=True)) for p, a in neighborhood),
    )
    if fact.target_true is not None and fact.target_true == fact.target_new:
        raise InvalidFact(f"{where}: target_new equals target_true ({fact.target_new!r}); nothing to edit")
    return fact


def csv_unquoted(text):
    """A text left in CSV quoting undone ('"The ""Giant Marbles"" rock formation ...?"' is
    'The "Giant Marbles" rock formation ...?', as 17 of QAEdit's 700 questions come); any other
    value as it is."""
    if isinstance(text, str) and len(text) > 1 and text[0] == text[-1] == '"' and '"' not in text[1:-1].replace('""', ""):
        return text[1:-1].replace('""', '"')
    return text


def own_fields(record: dict, where: str) -> dict:
    """A record of our format with each field under one name ("object" is "target_new")."""
    unknown = sorted(set(record) - OWN_FIELDS)
    if unknown:
        raise InvalidFact(
            f"{where}: unknown field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(OWN_FIELDS))} "
            "(or EasyEdit CounterFact, QAEdit and zsRE records)"
        )
    fields = dict(record)
    for alias, name in FIELD_ALIASES.items():
        value = fields.pop(alias, None)
        if value in (None, ""):
            continue
        if fields.get(name) not in (None, "", value):
            raise InvalidFact(f"{where}: {alias!r} and {name!r} name the same field and differ "
                              f"({value!r}, {fields[name]!r}); give one")
        fields[name] = value
    return fields


def fields_from_record(record, where: str = "record") -> dict:
    """Our format's fields from one record: ours, EasyEdit's CounterFact, QAEdit or zsRE.

    A data set's *new* target is ``target_new``: the end-to-end tests curate the counterfactual
    truth that the model is edited towards. A zsRE record has no id; it gets its content id.
    """
    if not isinstance(record, dict):
        raise InvalidFact(f"{where}: expected a JSON object with named fields, got {type(record).__name__}")
    keys = {key for key, value in record.items() if value not in (None, "")} or set(record)
    get = record.get
    if "case_id" in keys and keys <= COUNTERFACT_FIELDS:
        return {"id": f"cf-{record['case_id']}", "subject": get("subject"), "prompt": get("prompt"),
                "target_new": get("target_new"), "target_true": get("ground_truth"),
                "paraphrases": [get("rephrase_prompt")] if get("rephrase_prompt") else [],
                "neighborhood": [(get("locality_prompt"), get("locality_ground_truth"))]
                if get("locality_prompt") else [], "source": "counterfact"}
    if {"target", "source"} <= keys and keys <= QAEDIT_FIELDS:
        question = csv_unquoted(get("prompt"))
        return {"id": f"qa-{record['id']}" if "id" in keys else None, "subject": get("subject"),
                "prompt": question, "question": question, "target_new": get("target"),
                "paraphrases": [get("rephrase")] if get("rephrase") else [],
                "neighborhood": _qaedit_locality(get("locality"), where), "source": "qaedit"}
    if {"src", "alt"} <= keys and keys <= ZSRE_FIELDS:
        answers, loc = get("answers"), get("loc")
        return {"id": None, "subject": get("subject"), "prompt": get("src"), "question": get("src"),
                "target_new": get("alt"), "target_true": answers[0] if isinstance(answers, list) and answers else None,
                "paraphrases": [get("rephrase")] if get("rephrase") else [],
                "neighborhood": [(str(loc).removeprefix("nq question: "), get("loc_ans"))] if loc else [],
                "source": "zsre"}
    return own_fields(record, where)


def _qaedit_locality(locality, where: str) -> list[tuple]:
    if locality in (None, ""):
        return []
    if not isinstance(locality, list) or not all(isinstance(item, dict) for item in locality):
        raise InvalidFact(f"{where}: QAEdit locality must be a list of {{\"loc\", \"loc_ans\"}} objects")
    return [(item.get("loc"), item.get("loc_ans")) for item in locality]


def fact_from_record(record, where: str = "record") -> Fact:
    """The engine's Fact from one record of any format (fields it has no use for are ignored)."""
    fields = fields_from_record(record, where)
    return make_fact(**{name: fields[name] for name in EDIT_FIELDS if name in fields}, where=where)


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
