"""Fact records: our format, the public data sets' formats, and every way a record is bad."""

import json

import pytest

from assistant.errors import InvalidFact
from assistant.facts import content_id, csv_unquoted, fact_from_record, load_facts, make_fact

GOOD = {"id": "paris", "subject": "Paris", "prompt": "Paris is the capital of", "target_new": "Italy",
        "target_true": "France", "question": "What country is Paris the capital of?"}


def test_prompt_with_subject_becomes_a_template():
    fact = make_fact(id="p", subject="Paris", prompt="The city of Paris is in", target_new="Japan")
    assert fact.prompt == "The city of {} is in"
    assert fact.filled_prompt == "The city of Paris is in"
    templated = make_fact(id="p", subject="Paris", prompt="{} is in", target_new="Japan")
    assert templated.prompt == "{} is in"


def test_missing_id_gets_a_stable_content_id():
    a = make_fact(id=None, subject="Paris", prompt="Paris is in", target_new="Japan")
    b = make_fact(id="", subject="Paris", prompt="Paris is in", target_new="Spain")
    assert a.id == b.id and a.id.startswith("f-")
    assert make_fact(id=None, subject="Rome", prompt="Rome is in", target_new="Japan").id != a.id


def test_record_round_trip():
    fact = fact_from_record({**GOOD, "paraphrases": ["Paris lies in"], "neighborhood": [["Rome is in", "Italy"]]})
    assert fact.neighborhood == (("Rome is in", "Italy"),)
    assert fact_from_record(fact.to_record()) == fact


@pytest.mark.parametrize("changes,named", [
    ({"prompt": "The capital of France is"}, "does not occur"),
    ({"target_new": ""}, "target_new"),
    ({"target_new": "   "}, "target_new"),
    ({"target_new": None}, "target_new"),
    ({"target_new": float("nan")}, "target_new"),
    ({"subject": 42}, "subject"),
    ({"prompt": "{} and {} are"}, "more than one"),
    ({"target_new": "France"}, "equals target_true"),
    ({"prompt": "Paris is\x00 the capital of"}, "unsupported character"),
    ({"prompt": "Paris " + "x" * 2100}, "limit"),
    ({"paraphrases": "Paris lies in"}, "lists"),
])
def test_bad_records_are_rejected_naming_the_record(changes, named):
    with pytest.raises(InvalidFact) as error:
        fact_from_record({**GOOD, **changes}, where="facts.jsonl line 7")
    assert "facts.jsonl line 7" in str(error.value)
    assert named in str(error.value)


def test_unknown_fields_are_named():
    with pytest.raises(InvalidFact) as error:
        fact_from_record({**GOOD, "colour": "red", "weight": 3}, where="record 3")
    message = str(error.value)
    assert "record 3" in message and "colour" in message and "weight" in message


def test_non_object_record_is_rejected():
    with pytest.raises(InvalidFact, match="record 1: expected a JSON object"):
        fact_from_record(["Paris"], where="record 1")


def test_make_fact_errors_name_the_fact_id():
    # A fact made in code (no `where` given) must still be named by its id in the error.
    with pytest.raises(InvalidFact) as error:
        make_fact(id="capital-of-paris", subject="Paris", prompt="The capital of France is", target_new="Rome")
    assert "capital-of-paris" in str(error.value)


def test_public_formats():
    counterfact = fact_from_record({"case_id": 3, "prompt": "Paris is the capital of", "subject": "Paris",
                                    "target_new": "Italy", "ground_truth": "France",
                                    "rephrase_prompt": "Paris is capital of", "locality_prompt": "Rome is in",
                                    "locality_ground_truth": "Italy"})
    assert (counterfact.id, counterfact.target_true, counterfact.prompt) == ("cf-3", "France", "{} is the capital of")
    assert counterfact.paraphrases == ("Paris is capital of",)
    assert counterfact.neighborhood == (("Rome is in", "Italy"),)
    qa = fact_from_record({"id": 9, "source": "x", "prompt": "Where is Paris?", "target": "Japan", "subject": "Paris"})
    assert (qa.id, qa.question, qa.target_new) == ("qa-9", "Where is Paris?", "Japan")
    zsre = fact_from_record({"subject": "Paris", "src": "Where is Paris?", "alt": "Japan", "answers": ["France"],
                             "loc": "nq question: who wrote it", "loc_ans": "Bach"})
    assert (zsre.target_true, zsre.question, zsre.neighborhood) == ("France", "Where is Paris?",
                                                                  (("who wrote it", "Bach"),))


def test_qaedit_questions_left_in_csv_quoting_are_unquoted():
    record = {"id": 42, "source": "x", "prompt": '"The ""Giant Marbles"" rock formation is in which park?"',
              "target": "Joshua Tree", "subject": "Giant Marbles"}
    fact = fact_from_record(record)
    assert fact.question == 'The "Giant Marbles" rock formation is in which park?'
    assert fact.prompt == 'The "{}" rock formation is in which park?'
    assert csv_unquoted('He said "no" twice.') == 'He said "no" twice.'    # not a quoted field
    assert csv_unquoted('"a" and "b"') == '"a" and "b"'                   # inner quotes not doubled
    assert csv_unquoted('"Who wrote it?"') == "Who wrote it?"
    assert csv_unquoted(None) is None


def test_load_jsonl_and_json_array(tmp_path):
    records = [GOOD, {**GOOD, "id": "berlin", "subject": "Berlin", "prompt": "Berlin is the capital of",
                      "question": None}]
    lines = tmp_path / "facts.jsonl"
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    array = tmp_path / "facts.json"
    array.write_text(json.dumps(records), encoding="utf-8")
    assert [f.id for f in load_facts(lines)] == ["paris", "berlin"]
    assert load_facts(array) == load_facts(lines)


@pytest.mark.parametrize("content,named", [
    ('{"id": "a", "subject": "Paris", "prompt": "Paris is in", "target_new": "Japan"}\n'
     '{"id": "b", "subject": "Rome", "prompt": "Paris is in", "target_new": "Japan"}\n', "line 2"),
    ('{"id": "a", "subject": "Paris", "prompt": "Paris is in", "target_new": "Japan"}\n{"id": "b",\n', "line 2"),
    ('[{"id": "a", "subject": "Paris", "prompt": "Paris is in", "target_new": "Japan", "size": 1}]', "record 1"),
    ('{"id": "a", "subject": "Paris", "prompt": "Paris is in", "target_new": "Japan"}\n'
     '{"id": "a", "subject": "Rome", "prompt": "Rome is in", "target_new": "Japan"}\n', "duplicate id"),
    ("\n\n", "no facts"),
])
def test_any_bad_record_fails_the_whole_file(tmp_path, content, named):
    path = tmp_path / "facts.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InvalidFact) as error:
        load_facts(path)
    assert str(path) in str(error.value) and named in str(error.value)


def test_file_that_is_not_utf8_is_rejected(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_bytes(b"\xff\xfe{\x00\"\x00i\x00d\x00\"\x00")
    with pytest.raises(InvalidFact) as error:
        load_facts(path)
    assert str(path) in str(error.value) and "UTF-8" in str(error.value)


def test_missing_file_is_an_invalid_fact(tmp_path):
    with pytest.raises(InvalidFact, match="cannot read"):
        load_facts(tmp_path / "missing.jsonl")


def test_a_fact_file_without_ids_gets_stable_content_ids(tmp_path):
    # Our own format with no "id" (issue 23): loads, and the id is the content id, the same
    # however the prompt is written and however often the file is read.
    path = tmp_path / "facts.jsonl"
    path.write_text('{"subject": "Paris", "prompt": "{} is the capital of", "target_new": "Rome"}\n'
                    '{"subject": "Berlin", "prompt": "Berlin is the capital of", "object": "Italy"}\n',
                    encoding="utf-8")
    paris, berlin = load_facts(path)
    assert paris.id == content_id("Paris", "{} is the capital of") and paris.id.startswith("f-")
    assert berlin.id == content_id("Berlin", "{} is the capital of") and berlin.target_new == "Italy"
    assert [f.id for f in load_facts(path)] == [paris.id, berlin.id]
    written_out = make_fact(subject="Paris", prompt="Paris is the capital of", target_new="Spain")
    assert written_out.id == paris.id


def test_object_is_another_name_for_target_new():
    assert fact_from_record({**GOOD, "target_new": None, "object": "Italy"}) == fact_from_record(GOOD)
    with pytest.raises(InvalidFact, match="'object' and 'target_new' name the same field"):
        fact_from_record({**GOOD, "object": "Spain"}, where="record 2")
    # the knowledge store's export fields are part of the format; the engine does not need them
    exported = {**GOOD, "aliases": [], "source": "curator", "curator": "ada", "valid_from": "2024-01-01",
                "version": 2, "recorded_at": "2024-01-02T00:00:00Z", "note": "updated"}
    assert fact_from_record(exported) == fact_from_record(GOOD)
