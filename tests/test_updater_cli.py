"""`livedit facts ...` and `livedit queue ...` through livedit.cli.main."""

from __future__ import annotations

import json

import pytest
from updater_fixtures import FACTS, embedding_function, home, write_jsonl  # noqa: F401

from livedit.cli import main


@pytest.fixture
def livedit(home, embedding_function, monkeypatch, capsys):
    """livedit("facts", "add", ...) -> (exit code, stdout, stderr), on the session's embedding model."""
    import updater.store.knowledge
    monkeypatch.setattr(updater.store.knowledge, "default_embedding_function", lambda: embedding_function)

    def run(*argv: str):
        code = main(["-q", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


def add_darrieux(livedit):
    return livedit("facts", "add", "--id", "darrieux", "--subject", "Danielle Darrieux",
                   "--prompt", "The mother tongue of Danielle Darrieux is", "--object", "English",
                   "--alias", "the English language", "--who", "ada")


def test_facts_add_update_history_and_search(livedit):
    code, out, _ = add_darrieux(livedit)
    assert code == 0
    assert out == ("added darrieux v1: 'The mother tongue of Danielle Darrieux is' -> 'English' "
                   "(also 'the English language')\n")
    code, out, _ = livedit("facts", "update", "darrieux", "--object", "French", "--clear-aliases",
                           "--question", "What is Danielle Darrieux's first language?", "--who", "grace",
                           "--note", "per her biography")
    assert code == 0 and out.startswith("updated darrieux v2: ") and "changed: question, object, aliases" in out
    code, out, _ = livedit("facts", "update", "darrieux", "--object", "French")
    assert code == 0 and out.startswith("unchanged darrieux v2")
    code, out, _ = livedit("facts", "history", "darrieux")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith("v1 ") and "by ada (added;" in lines[0] and lines[0].endswith("-> 'English'")
    assert "by grace (per her biography;" in lines[1] and 'question "What is Danielle' in lines[1]
    livedit("facts", "add", "--subject", "the Nile", "--prompt", "{} flows into the", "--object",
            "Mediterranean Sea", "--who", "ada")
    code, out, _ = livedit("facts", "search", "Which language did Darrieux speak as a child?", "-k", "2")
    assert code == 0 and out.splitlines()[0].split()[1] == "darrieux" and len(out.splitlines()) == 2


def test_facts_errors_are_one_line_messages(livedit):
    add_darrieux(livedit)
    code, out, err = add_darrieux(livedit)
    assert code == 2 and out == ""
    assert err.startswith("livedit: error: fact: id 'darrieux' exists already") and err.count("\n") == 1
    code, _, err = livedit("facts", "add", "--subject", "Paris", "--prompt", "Berlin is in", "--object", "France")
    assert code == 2 and "subject 'Paris' does not occur in prompt 'Berlin is in'" in err
    code, _, err = livedit("facts", "history", "nobody")
    assert code == 2 and "no fact 'nobody'" in err
    code, _, err = livedit("facts", "update", "darrieux")
    assert code == 2 and "give at least one field to change" in err


def test_facts_import_and_export(livedit, tmp_path):
    path = write_jsonl(tmp_path / "facts.jsonl", FACTS)
    code, out, _ = livedit("facts", "import", str(path), "--who", "ada")
    assert code == 0 and out == f"imported {path}: 5 added, 0 updated, 0 unchanged\n"
    code, out, _ = livedit("facts", "export", "-")
    exported = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and sorted(r["id"] for r in exported) == sorted(f["id"] for f in FACTS)
    code, out, _ = livedit("facts", "export", str(tmp_path / "facts.csv"))
    assert code == 0 and out == f"exported 5 fact version(s) to {tmp_path / 'facts.csv'} (csv)\n"
    assert (tmp_path / "facts.csv").read_text(encoding="utf-8").startswith("id,subject,prompt,question,object")
    code, _, err = livedit("facts", "import", str(tmp_path / "facts.csv"))
    assert code == 2 and "facts.csv line 2: id" in err and "exists already" in err
    code, out, _ = livedit("facts", "import", str(tmp_path / "facts.csv"), "--skip-existing")
    assert code == 0 and "0 added, 0 updated, 5 unchanged" in out


def test_a_bad_import_names_the_record_and_changes_nothing(livedit, tmp_path):
    records = [FACTS[0], FACTS[1] | {"object": "Par\x07is"}, FACTS[2]]
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    code, out, err = livedit("facts", "import", str(path))
    assert code == 2 and out == ""
    assert "bad.jsonl line 2: field 'object' contains unsupported character U+0007" in err
    assert "nothing was imported" in err
    code, out, _ = livedit("facts", "export", "-")
    assert code == 0 and out == ""


def test_queue_commands(livedit):
    add_darrieux(livedit)
    code, out, _ = livedit("queue", "list")
    assert code == 0 and out == "the queue is empty\n"
    code, out, _ = livedit("queue", "propose", "darrieux", "--who", "ada", "--why", "the model says French")
    assert code == 0 and out == "darrieux v1 -> 'English' proposed as item 1\n"
    code, out, _ = livedit("queue", "propose", "darrieux", "--who", "grace")
    assert code == 0 and out == "darrieux v1 -> 'English' merged into item 1\n"
    code, out, _ = livedit("queue", "list", "--state", "proposed")
    assert code == 0 and out.split()[:4] == ["1", "proposed", "curator", "darrieux"]
    code, out, _ = livedit("queue", "approve", "1", "--who", "grace")
    assert code == 0 and out == "item 1 approved: darrieux -> 'English'\n"
    code, _, err = livedit("queue", "approve", "1")
    assert code == 2 and "queue item 1 is approved; it cannot become approved" in err
    code, out, _ = livedit("queue", "reject", "1", "--why", "wrong source", "--who", "hedy")
    assert code == 0 and out == "item 1 rejected: darrieux -> 'English'\n"
    code, out, _ = livedit("queue", "show", "1")
    assert code == 0 and out.startswith("item 1: rejected (curator), fact darrieux v1\n")
    history = [line.strip() for line in out.splitlines() if " by " in line]
    assert [line.split(" ", 1)[1] for line in history] == [
        "- -> proposed by ada: the model says French", "merged by grace: merged a duplicate proposal: proposed by curator",
        "proposed -> approved by grace: approved", "approved -> rejected by hedy: wrong source"]
    code, _, err = livedit("queue", "show", "7")
    assert code == 2 and "no queue item 7" in err


def test_reject_needs_a_reason(livedit):
    with pytest.raises(SystemExit):
        livedit("queue", "reject", "1")
