"""`livedit status` and `livedit retract N` read the ledger alone: they neither load the model
nor compute statistics to show a state or to refuse a retraction."""

import pytest

from livedit.cli import main


@pytest.fixture
def forbid_model(monkeypatch):
    """forbid_model(): from then on, loading the model or computing covariance statistics
    raises AssertionError("model loaded")."""
    def forbidden(*args, **kwargs):
        raise AssertionError("model loaded")

    def forbid() -> None:
        import assistant.editing.editor  # noqa: F401  (imported first, so that it keeps the real functions)

        for target in ("assistant.model.loading.load_model", "assistant.editing.editor.load_model",
                       "assistant.editing.covariance.load_or_compute", "assistant.editing.editor.load_or_compute"):
            monkeypatch.setattr(target, forbidden)
    return forbid


@pytest.fixture
def livedit(capsys):
    """livedit("status") -> (exit code, stdout, stderr)."""
    def run(*argv: str):
        capsys.readouterr()                         # drop what setting up the state printed
        code = main(["-q", *argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err
    return run


def one_line_error(err: str, message: str) -> bool:
    return err.startswith(f"livedit: error: {message}") and err.count("\n") == 1 and "Traceback" not in err


def test_status_of_a_state_that_does_not_exist(forbid_model, livedit, livedit_dirs):
    forbid_model()
    state = livedit_dirs["state"]
    code, out, err = livedit("status")
    assert code == 0 and err == ""
    assert out.splitlines()[:2] == [f"state {state} | method d4s | generation 0",
                                    "0 active edit(s), 0 retracted or superseded"]
    assert "layer  L1" not in out                # no norms recorded yet
    assert not state.exists()                     # reading creates nothing


def test_retract_on_a_fresh_state_is_refused_in_one_line(forbid_model, livedit, livedit_dirs):
    forbid_model()
    code, out, err = livedit("retract", "5")
    assert code == 2 and out == ""
    assert one_line_error(err, "there is no edit 5; `livedit status` lists the edits")
    assert not livedit_dirs["state"].exists()


@pytest.fixture
def edited_state(open_engine, new_fact):
    """A d4s state with edits 1 (retracted), 2 and 3 (active), made on the tiny Llama and closed."""
    editor = open_engine(method="d4s")
    ids = editor.apply([new_fact(0), new_fact(1), new_fact(2, target="Rome")]).edit_ids
    editor.retract(ids[0])
    status, norms = editor.status(), editor.norms()
    editor.close()
    return status, norms


def test_status_lists_the_edits_of_a_state(edited_state, forbid_model, livedit, new_fact):
    status, norms = edited_state
    forbid_model()
    code, out, err = livedit("status")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"state {status.folder} | method d4s | generation 2"
    assert lines[1] == "2 active edit(s), 1 retracted or superseded"
    shown = [line.split()[:3] for line in lines[2:5]]
    assert shown == [["1", "retracted", "fact-0"], ["2", "active", "fact-1"], ["3", "active", "fact-2"]]
    assert f"{new_fact(2).filled_prompt!r} -> 'Rome'" in lines[4]
    assert lines[5].startswith("layer  L1 (mean |w|)")
    table = [line.split() for line in lines[6:6 + len(norms)]]
    assert [int(row[0]) for row in table] == [n.layer for n in norms]
    assert [float(row[1]) for row in table] == pytest.approx([n.mean_abs for n in norms], rel=1e-5)

    code, out, _ = livedit("status", "--limit", "1")
    assert [line.split()[0] for line in out.splitlines()[2:3]] == ["3"]


def test_retract_refuses_ended_and_unknown_edits_from_the_ledger(edited_state, forbid_model, livedit):
    forbid_model()
    code, out, err = livedit("retract", "1")
    assert code == 2 and out == "" and one_line_error(err, "edit 1 is already retracted")
    code, out, err = livedit("retract", "9")
    assert code == 2 and out == "" and one_line_error(err, "there is no edit 9")


def test_a_valid_retract_then_opens_the_editor(edited_state, forbid_model, livedit):
    forbid_model()
    with pytest.raises(AssertionError, match="model loaded"):
        livedit("retract", "2")
    code, out, _ = livedit("status")                 # nothing changed
    assert code == 0 and "2 active edit(s), 1 retracted or superseded" in out


def test_retract_in_a_memit_seq_state_is_refused_without_the_model(open_engine, new_fact, forbid_model, livedit):
    editor = open_engine(method="memit-seq")
    (edit_id,) = editor.apply([new_fact(0)]).edit_ids
    editor.close()
    forbid_model()
    code, out, err = livedit("retract", str(edit_id))
    assert code == 2 and out == ""
    assert one_line_error(err, "this state uses memit-seq; exact retraction needs d4s")
