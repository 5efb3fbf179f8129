"""Curated facts: the record the knowledge store keeps, and its validation.

A curated fact states what is true: ``prompt`` is a cloze template with one ``{}`` where
the subject goes (a prompt given with the subject written out is turned into one), and
``object`` completes it. Records are read, and their text cleaned, by ``assistant.facts``
(one format and one id for every command). The store gives every change a new ``version``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime, timezone

from assistant.config import UpdaterConfig
from assistant.errors import InvalidFact
from assistant.facts import (CURATION_FIELDS, VERSION_FIELDS, Fact, clean_id, content_id, make_fact, make_template,
                             own_fields)
from assistant.facts import clean_text as _clean_text
from assistant.facts import fields_from_record  # noqa: F401  (the store reads records with the engine's parser)

INPUT_FIELDS = ("id", "subject", "prompt", "question", "object", *CURATION_FIELDS)
EXPORT_FIELDS = INPUT_FIELDS + VERSION_FIELDS
CONTENT_FIELDS = ("subject", "prompt", "question", "object", "aliases", "source", "valid_from")
TEXT_SETTING, ID_SETTING = "[updater] max_text_chars", "[updater] max_id_chars"


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
               setting: str | None = TEXT_SETTING) -> str | None:
    """assistant.facts.clean_text, naming [updater] max_text_chars when the text is too long."""
    return _clean_text(value, name, where, limit, required, setting)


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


def validate_fact(fields: dict, where: str, limits: UpdaterConfig, curator: str) -> CuratedFact:
    """A CuratedFact (version 0) from our format's fields; InvalidFact says what to fix."""
    fields = own_fields(fields, where)
    subject = clean_text(fields.get("subject"), "subject", where, limits.max_text_chars)
    template = make_template(clean_text(fields.get("prompt"), "prompt", where, limits.max_text_chars), subject, where)
    obj = clean_text(fields.get("target_new"), "object", where, limits.max_text_chars)
    raw_id = fields.get("id")
    return CuratedFact(
        id=clean_id(raw_id, where, limits.max_id_chars, ID_SETTING) if raw_id not in (None, "")
        else content_id(subject, template),
        subject=subject, prompt=template, object=obj,
        question=clean_text(fields.get("question"), "question", where, limits.max_text_chars, required=False),
        aliases=clean_aliases(fields.get("aliases"), obj, where, limits),
        source=clean_text(fields.get("source"), "source", where, limits.max_text_chars, required=False) or "curator",
        curator=clean_text(fields.get("curator") or curator, "curator", where, limits.max_text_chars),
        valid_from=clean_date(fields.get("valid_from"), where),
    )


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
