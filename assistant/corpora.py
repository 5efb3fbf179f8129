"""Reading the public text under ../shared/data (``[paths] shared_data``): the general-text
corpora that the covariance statistics use, and the edit data sets' record files.

Only files in, plain Python out: no model, no tokenizer. The editing engine (covariance)
and the evaluation (data sets) both read through here, so neither imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path

from assistant.errors import ConfigError, ModelNotReady

EDIT_FILES = {
    "counterfact": "counterfact/counterfact-edit-dev.json",
    "qaedit": "qaedit/qaedit-dev.json",
    "zsre": "zsre/zsre_mend_eval_portability_gpt4.json",
}


def corpus_texts(shared_data: Path, name: str) -> list[str]:
    """The texts of one corpus in shared_data/text."""
    if name == "wikitext2_raw":
        path = shared_data / "text" / "wikitext2_raw" / "wiki.test.raw"
        lines = _read(path).splitlines()
        return [line.strip() for line in lines if line.strip() and not line.strip().startswith("=")]
    if name == "me_ppl":
        path = shared_data / "text" / "me_ppl" / "ME-PPL.json"
        return [record["Text"].strip() for record in json.loads(_read(path)) if record["Text"].strip()]
    raise ModelNotReady(f"unknown corpus {name!r}")


def _read(path: Path) -> str:
    if not path.exists():
        raise ModelNotReady(f"corpus file {path} is missing; set [paths] shared_data or LIVEDIT_SHARED_DATA")
    return path.read_text(encoding="utf-8")


def edit_file_records(shared_data: Path, name: str) -> list[dict]:
    """The records of one edit data set's file (counterfact, qaedit or zsre), as stored."""
    if name not in EDIT_FILES:
        raise ConfigError(f"unknown edit data file {name!r}; choose one of {', '.join(EDIT_FILES)}")
    path = shared_data / EDIT_FILES[name]
    if not path.exists():
        raise ConfigError(f"{path} is missing; set [paths] shared_data or LIVEDIT_SHARED_DATA")
    return json.loads(path.read_text(encoding="utf-8"))
