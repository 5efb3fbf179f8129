"""Fact files: JSONL, a JSON array, or CSV with a header row.

Reading gives each record with its place in the file ("facts.csv line 7") so that an
error can say which record to fix. Writing uses our own field names.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, TextIO

from assistant.errors import InvalidFact
from assistant.facts import json_records, read_text_strict
from updater.store.records import EXPORT_FIELDS, CuratedFact

FORMATS = ("jsonl", "json", "csv")
EXPORT_FORMATS = ("jsonl", "csv")


def detect_format(path: Path | str, chosen: str | None = None) -> str:
    if chosen:
        if chosen not in FORMATS:
            raise InvalidFact(f"format {chosen!r} is not supported; use one of {', '.join(FORMATS)}")
        return chosen
    suffix = Path(str(path)).suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else "jsonl"


def read_records(path: Path | str, chosen_format: str | None = None) -> list[tuple[str, dict]]:
    """Every record of the file as (where, record); a JSONL file that holds a JSON array works too."""
    path = Path(path)
    fmt = detect_format(path, chosen_format)
    text = read_text_strict(path).lstrip("\ufeff")
    if fmt == "csv":
        located = _csv_records(text, str(path))
    else:
        located = json_records(text, str(path))
    if not located:
        raise InvalidFact(f"{path}: no records found")
    return located


def _csv_records(text: str, name: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise InvalidFact(f"{name}: empty CSV; the first row must name the columns ({', '.join(EXPORT_FIELDS)})")
    located = []
    try:
        for row in reader:
            where = f"{name} line {reader.line_num}"
            if None in row:
                raise InvalidFact(f"{where}: more cells than the header has columns; quote cells that hold commas")
            located.append((where, {key: value for key, value in row.items() if value is not None}))
    except csv.Error as error:
        raise InvalidFact(f"{name} line {reader.line_num}: malformed CSV ({error})") from None
    return located


def write_facts(facts: Iterable[CuratedFact], stream: TextIO, fmt: str) -> int:
    """Write the facts in our own format; returns how many were written."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidFact(f"export format {fmt!r} is not supported; use one of {', '.join(EXPORT_FORMATS)}")
    count = 0
    writer = csv.DictWriter(stream, fieldnames=EXPORT_FIELDS, lineterminator="\n") if fmt == "csv" else None
    if writer:
        writer.writeheader()
    for fact in facts:
        record = fact.to_record()
        if writer:
            record["aliases"] = json.dumps(record["aliases"], ensure_ascii=False) if record["aliases"] else ""
            writer.writerow({key: "" if value is None else value for key, value in record.items()})
        else:
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count
