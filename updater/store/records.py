"""Curated facts: the record, its validation, and the public data sets' record formats.

A curated fact states what is true: ``prompt`` is a cloze template with one ``{}`` where
the subject goes (a prompt given with the subject written out is turned into one), and
``object`` completes it. The store gives every change a new ``version``.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timezone

from assistant.config import UpdaterConfig
from assistant.errors import InvalidFact
from assistant.facts import COUNTERFACT_FIELDS, QAEDIT_FIELDS, ZSRE_FIELDS, Fact, make_fact, make_template

INPUT_FIELDS = ("id", "subject", "prompt", "question", "object", "aliases", "source", "curator", "valid_from")
VERSION_FIELDS = ("version", "recorded_at", "note")      # set by the store; ignored on import
EXPORT_FIELDS = INPUT_FIELDS + VERSION_FIELDS
CONTENT_FIELDS = ("subject", "prompt", "question", "object", "aliases", "source", "valid_from")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")
FORBIDDEN_CATEGORIES = {"Cc", "Cs", "Co", "Cn", "Zl", "Zp"}   # controls, surrogates, private, unassigned, breaks
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


@dataclass(frozen=True)
class CuratedFact:
    id: str
    subject: str
    prompt: str                       # template with one "{}" for the subject
    object: str
    question: str | None = None       # a natural question whose answer is the object
    aliases: tuple[str, ...] = ()     # other accepted spellings of the object
    source: str = "curator"
    curator: str = ""
    valid_from: str = ""              # ISO date
    version: int = 0                  # 0 until the store records it
    recorded_at: str | None = None
    note: str | None = None           # why this version was made

    @property
    def filled_prompt(self) -> str:
        return self.prompt.replace("{}", self.subject)

    @property
    def document(self) -> str:
        """The text embedded for semantic search."""
        statement = f"{self.filled_prompt} {self.object}"
        return f"{statement}\n{self.question}" if self.question else statement

    def same_content(self, other: "CuratedFact") -> bool:
        return all(getattr(self, name) == getattr(other, name) for name in CONTENT_FIELDS)

    def changed_fields(self, other: "CuratedFact") -> list[str]:
        return [name for name in CONTENT_FIELDS if getattr(self, name) != getattr(other, name)]

    def to_record(self) -> dict:
        record = asdict(self)
        record["aliases"] = list(self.aliases)
        return {name: record[name] for name in EXPORT_FIELDS}

    def to_edit_fact(self, target_true: str | None = None) -> Fact:
        """The engine's Fact for this curated fact: its object is the edit's target."""
        return make_fact(id=self.id, subject=self.subject, prompt=self.prompt, target_new=self.object,
                         target_true=target_true, question=self.question,
                         where=f"curated fact {self.id!r} version {self.version}")


def today() -> str:
    return datetime.now(timezone.utc).date().isoformat()


def clean_text(value, name: str, where: str, limit: int, required: bool = True,
               setting: str | None = "max_text_chars") -> str | None:
    """The value as NFC text without surrounding blanks, or an InvalidFact naming the problem.

    setting: the [updater] key that sets the limit, named in the message.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InvalidFact(f"{where}: field {name!r} is empty; give a non-empty value")
        return None
    if not isinstance(value, str):
        raise InvalidFact(f"{where}: field {name!r} must be text, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value).strip()
    if len(text) > limit:
        hint = f", or raise [updater] {setting}" if setting else ""
        raise InvalidFact(f"{where}: field {name!r} has {len(text)} characters; the limit is {limit} "
                          f"(shorten it{hint})")
    for position, char in enumerate(text, start=1):
        if unicodedata.category(char) in FORBIDDEN_CATEGORIES or char in BIDI_CONTROLS:
            raise InvalidFact(
                f"{where}: field {name!r} contains unsupported character U+{ord(char):04X} at position "
                f"{position}; remove it (control, line-break, direction and unassigned characters are not allowed)")
    return text


def clean_id(value, where: str, limit: int) -> str:
    text = clean_text(value, "id", where, limit, setting="max_id_chars")
    if len(text) > limit or not ID_PATTERN.fullmatch(text):
        raise InvalidFact(f"{where}: id {text!r} is not usable; use up to {limit} letters, digits and . _ : @ / + -, "
                          "starting with a letter or digit")
    return text


def clean_date(value, where: str) -> str:
    if value in (None, ""):
        return today()
    if isinstance(value, date):
        return value.isoformat()
    try:
        return date.fromisoformat(str(value).strip()).isoformat()
    except ValueError:
        raise InvalidFact(f"{where}: valid_from {value!r} is not a date; write it as YYYY-MM-DD") from None


def clean_aliases(value, obj: str, where: str, limits: UpdaterConfig) -> tuple[str, ...]:
    """A list of strings, or one string holding a JSON list or "|"-separated names (CSV)."""
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        value = _aliases_from_cell(value, where)
    if not isinstance(value, (list, tuple)):
        raise InvalidFact(f"{where}: aliases must be a list of strings, got {type(value).__name__}")
    aliases: list[str] = []
    for alias in value:
        text = clean_text(alias, "aliases", where, limits.max_text_chars)
        if text != obj and text not in aliases:
            aliases.append(text)
    if len(aliases) > limits.max_aliases:
        raise InvalidFact(f"{where}: {len(aliases)} aliases; the limit is {limits.max_aliases} "
                          "(drop some, or raise [updater] max_aliases)")
    return tuple(aliases)


def _aliases_from_cell(cell: str, where: str) -> list:
    if cell.lstrip().startswith("["):
        try:
            return json.loads(cell)
        except json.JSONDecodeError as error:
            raise InvalidFact(f"{where}: aliases {cell!r} is not a JSON list ({error.msg})") from None
    return [part for part in cell.split("|") if part.strip()]


def content_id(subject: str, template: str, prefix: str = "f") -> str:
    """A stable id for a subject and relation, so that re-adding the same question collides."""
    return f"{prefix}-" + hashlib.sha1(f"{subject}\x00{template}".encode()).hexdigest()[:12]


def validate_fact(fields: dict, where: str, limits: UpdaterConfig, curator: str) -> CuratedFact:
    """A CuratedFact (version 0) from our field names; InvalidFact says what to fix."""
    subject = clean_text(fields.get("subject"), "subject", where, limits.max_text_chars)
    prompt = clean_text(fields.get("prompt"), "prompt", where, limits.max_text_chars)
    obj = clean_text(fields.get("object"), "object", where, limits.max_text_chars)
    template = make_template(prompt, subject, where)
    if not template.replace("{}", "").strip():
        raise InvalidFact(f"{where}: prompt {prompt!r} is only the subject; write the relation around it")
    raw_id = fields.get("id")
    return CuratedFact(
        id=clean_id(raw_id, where, limits.max_id_chars) if raw_id not in (None, "") else content_id(subject, template),
        subject=subject, prompt=template, object=obj,
        question=clean_text(fields.get("question"), "question", where, limits.max_text_chars, required=False),
        aliases=clean_aliases(fields.get("aliases"), obj, where, limits),
        source=clean_text(fields.get("source"), "source", where, limits.max_text_chars, required=False) or "curator",
        curator=clean_text(fields.get("curator") or curator, "curator", where, limits.max_text_chars),
        valid_from=clean_date(fields.get("valid_from"), where),
    )


def fields_from_record(record, where: str) -> dict:
    """Our field names from one record: our own format, EasyEdit CounterFact, zsRE or QAEdit.

    The data sets' *new* target is the curated object: in the end-to-end tests the store
    holds the counterfactual truth that the model is edited towards.
    """
    if not isinstance(record, dict):
        raise InvalidFact(f"{where}: expected an object with named fields, got {type(record).__name__}")
    keys = {key for key, value in record.items() if value not in (None, "")} or set(record)
    if "case_id" in keys and keys <= COUNTERFACT_FIELDS:
        return {"id": f"cf-{record['case_id']}", "subject": record.get("subject"), "prompt": record.get("prompt"),
                "object": record.get("target_new"), "source": "counterfact"}
    if {"src", "alt"} <= keys and keys <= ZSRE_FIELDS:
        subject, question = record.get("subject"), record.get("src")
        return {"id": content_id(str(subject), str(question), "zsre"), "subject": subject, "prompt": question,
                "question": question, "object": record.get("alt"), "source": "zsre"}
    if {"target", "source"} <= keys and keys <= QAEDIT_FIELDS:
        return {"id": f"qa-{record.get('id')}", "subject": record.get("subject"), "prompt": record.get("prompt"),
                "question": record.get("prompt"), "object": record.get("target"), "source": "qaedit"}
    unknown = sorted(set(record) - set(EXPORT_FIELDS))
    if unknown:
        raise InvalidFact(f"{where}: unknown field(s) {', '.join(unknown)}; use {', '.join(INPUT_FIELDS)} "
                          "(or EasyEdit CounterFact, zsRE and QAEdit records)")
    return {name: record.get(name) for name in INPUT_FIELDS}


def apply_changes(current: CuratedFact, changes: dict, where: str, limits: UpdaterConfig,
                  curator: str) -> CuratedFact:
    """The current fact with some fields replaced, validated again.

    When the object changes and no valid_from is given, the new version is valid from today.
    """
    unknown = sorted(set(changes) - set(CONTENT_FIELDS))
    if unknown:
        raise InvalidFact(f"{where}: cannot change field(s) {', '.join(unknown)}; "
                          f"change any of {', '.join(CONTENT_FIELDS)}")
    fields = current.to_record() | {"curator": curator} | changes
    if "valid_from" not in changes and "object" in changes and changes["object"] != current.object:
        fields["valid_from"] = today()
    updated = validate_fact(fields, where, limits, curator)
    return replace(updated, id=current.id)
