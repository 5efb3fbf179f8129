"""The guard: its math (coarse KL, drift, the verdict, the room left) on hand-made cases, its
figures on the tiny Llama against direct measurements, and its three outcomes (commit, split
and retry, reject) through the apply step with a real engine and a real queue."""

from __future__ import annotations

import math

import pytest
import torch
from test_apply import approve, queue  # noqa: F401
from updater_fixtures import home  # noqa: F401

from assistant.config import GuardConfig, load_config
from assistant.evaluation.drift import Probe, coarse_kl, measure_drift, reference
from updater.apply import apply_approved
from assistant.state.l1 import edits_left
from updater.guard import Guard, GuardFigures, Verdict, judge

QUESTIONS = ["Where is the Eiffel Tower?", "Who wrote Hamlet?"]
TEXTS = ["The river flows through the old town and into the sea.", "She plays the violin every evening."]
BOUNDS = GuardConfig(max_l1_growth=0.05, min_efficacy=0.5, min_agreement=0.9, max_kl=0.2,
                     max_agreement_drop_per_fact=0.025)
TINY_BOUNDS = GuardConfig(max_l1_growth=1e6, min_efficacy=0.5, min_agreement=0.9, max_kl=0.2)   # tiny edits grow L1 a lot


def figures(**changes) -> GuardFigures:
    values = dict(l1_growth={3: 0.01, 4: 0.02}, hits=2, facts=2, agreement=0.95, kl=0.05)
    return GuardFigures(**{**values, **changes})


# -- the math ---------------------------------------------------------------------------
def test_coarse_kl_is_zero_for_the_same_distribution_and_the_full_kl_with_every_token():
    logp = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64), dim=1)
    q = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 0.5]], dtype=torch.float64), dim=1)
    top_logp, top_ids = logp.topk(4, dim=1)
    assert coarse_kl(top_logp, logp, top_ids).item() == pytest.approx(0.0, abs=1e-12)
    full = (logp.exp() * (logp - q)).sum().item()
    assert coarse_kl(top_logp, q, top_ids).item() == pytest.approx(full, rel=1e-9)


def test_coarse_kl_on_two_bins_by_hand_and_never_above_the_full_kl():
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5]], dtype=torch.float64)
    top_logp, top_ids = p.log().topk(1, dim=1)                 # bins: {token 0}, {tokens 1, 2}
    by_hand = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    coarse = coarse_kl(top_logp, q.log(), top_ids).item()
    assert coarse == pytest.approx(by_hand, rel=1e-12)
    assert coarse < (p * (p.log() - q.log())).sum().item()


def test_judge_names_each_broken_bound_with_its_numbers():
    assert judge(figures(), BOUNDS).ok
    verdict = judge(figures(l1_growth={3: 0.01, 7: 0.08}, hits=0, agreement=0.5, kl=0.9), BOUNDS)
    assert verdict.reasons == ("layer 7 L1 growth 8.00% > 5.00%", "efficacy 0/2 < 50%",
                               "probe agreement 0.500 < 0.900", "probe KL 0.900 > 0.200")
    assert judge(figures(hits=1), BOUNDS).ok                   # 1 of 2 is exactly the 50% bound
    assert not judge(figures(kl=0.2001), BOUNDS).ok
    harmful = judge(figures(agreement_drop=0.3), BOUNDS)      # the state is in bounds; this batch is not
    assert harmful.reasons == ("this batch alone lowers probe agreement by 0.300 > 0.025 x 2 fact(s)",)
    assert judge(figures(agreement_drop=0.05), BOUNDS).ok                # 0.025 for each of its 2 facts


def test_edits_left_at_the_recent_rate():
    assert edits_left([(0, 0.0), (10, 0.01), (20, 0.02)], bound=0.05) == pytest.approx(30)
    assert edits_left([(10, 0.01)], bound=0.05) is None                     # no rate yet
    assert edits_left([(10, 0.06), (20, 0.07)], bound=0.05) == 0.0          # past the bound: no room


# -- figures on the tiny model --------------------------------------------------------------
def test_drift_of_a_model_against_itself_is_none_and_a_changed_layer_moves_it(open_engine):
    editor = open_engine("llama")
    tok = editor.tokenizer
    probes = [Probe(tok(t).input_ids, 1) for t in TEXTS]
    ref = reference(editor.model, probes, tok.pad_token_id)
    same = measure_drift(editor.model, ref, tok.pad_token_id)
    assert same.agreement == 1.0 and same.kl == pytest.approx(0.0, abs=1e-9)
    assert same.positions == sum(len(p.ids) - 1 for p in probes)
    layer = editor.layers[0]
    W = editor.current_weights()[layer]
    editor.swap_in({layer: W + 0.5 * torch.randn_like(W)})
    moved = measure_drift(editor.model, ref, tok.pad_token_id)
    assert moved.kl > 1e-4 and moved.agreement <= 1.0


def test_guard_figures_on_a_candidate_match_direct_measurements(open_engine, new_fact):
    from assistant.evaluation.metrics import answer_contains
    from updater.detect.probing import greedy_completions

    editor = open_engine("llama")
    guard = Guard.for_editor(editor, load_config().replace("guard", probe_tokens=8), QUESTIONS, TEXTS)
    facts = [new_fact(0), new_fact(1)]
    candidate = editor.solve_candidate(facts)
    verdict = guard.check(editor, candidate, facts)
    said = greedy_completions(editor.shadow, editor.tokenizer, [f.filled_prompt for f in facts], 8)
    assert verdict.figures.hits == sum(answer_contains(a, f.target_new) for a, f in zip(said, facts))
    assert verdict.figures.l1_growth == {n.layer: n.growth for n in candidate.norms}
    direct = measure_drift(editor.shadow, guard.ref, editor.tokenizer.pad_token_id)
    assert (verdict.figures.agreement, verdict.figures.kl) == (direct.agreement, direct.kl)
    assert verdict.figures.kl > 0                              # the candidate is not the unedited model
    assert verdict.figures.agreement_drop == pytest.approx(1.0 - direct.agreement)   # served = unedited here
    editor.discard(candidate)
    served = measure_drift(editor.model, guard.ref, editor.tokenizer.pad_token_id)
    assert served.agreement == 1.0 and served.kl == pytest.approx(0.0, abs=1e-9)   # nothing was committed
    editor.commit(editor.solve_candidate(facts))                                   # the served model moves on
    again = guard.check(editor, editor.solve_candidate([new_fact(2)]), [new_fact(2)])
    now = measure_drift(editor.model, guard.ref, editor.tokenizer.pad_token_id).agreement
    assert again.figures.agreement_drop == pytest.approx(now - again.figures.agreement)


# -- the three outcomes -----------------------------------------------------------------------
class HarmfulFacts(Guard):
    """A guard whose drift figures are known: any batch holding a fact whose id starts with
    "harm" drifts to agreement 0.5; the L1 and efficacy figures are the real ones' shape."""

    def __init__(self, bounds: GuardConfig):
        self.bounds, self.checked = bounds, []

    def check(self, editor, candidate, facts) -> Verdict:
        self.checked.append([f.id for f in facts])
        harmful = any(f.id.startswith("harm") for f in facts)
        measured = GuardFigures({n.layer: n.growth for n in candidate.norms}, len(facts), len(facts),
                                0.5 if harmful else 0.99, 0.01)
        return judge(measured, self.bounds)


def test_a_passing_batch_is_committed_with_its_decision(open_engine, queue, new_fact):
    editor = open_engine("llama")
    guard = HarmfulFacts(TINY_BOUNDS)
    ids = approve(queue, [new_fact(i) for i in range(3)])
    outcome = apply_approved(editor, queue, batch_size=4, guard=guard)
    assert sorted(outcome.applied) == ids and outcome.rejected == {} and editor.generation == 1
    [decision] = queue.decisions()
    assert decision.outcome == "commit" and decision.item_ids == ids and decision.generation == 1
    assert decision.figures["agreement"] == 0.99
    assert set(decision.figures["l1_growth"]) == {str(layer) for layer in editor.layers}
    assert decision.figures["max_l1_growth"] > 0


def test_a_harmful_fact_is_split_out_and_rejected_while_the_others_commit(open_engine, queue, new_fact):
    editor = open_engine("llama")
    guard = HarmfulFacts(TINY_BOUNDS)
    facts = [new_fact(0), new_fact(1), new_fact(2, id="harm-2"), new_fact(3)]
    ids = approve(queue, facts)
    outcome = apply_approved(editor, queue, batch_size=4, guard=guard)
    assert guard.checked == [["fact-0", "fact-1", "harm-2", "fact-3"], ["fact-0", "fact-1"],
                             ["harm-2", "fact-3"], ["harm-2"], ["fact-3"]]
    assert outcome.failed == {}, outcome.failed
    assert sorted(outcome.applied) == [ids[0], ids[1], ids[3]] and list(outcome.rejected) == [ids[2]]
    rejected = queue.get(ids[2])
    assert rejected.state == "rejected" and rejected.edit_id is None
    why = queue.show(ids[2]).events[-1].why
    assert why.startswith("rejected by the guard: probe agreement 0.500 < 0.900") and "L1 growth" in why
    assert editor.active_edit("harm-2") is None and editor.generation == 2
    outcomes = [(d.outcome, d.item_ids) for d in reversed(queue.decisions())]
    assert outcomes == [("split", ids), ("commit", ids[:2]), ("split", ids[2:]), ("reject", [ids[2]]),
                        ("commit", [ids[3]])]


def test_a_batch_over_the_l1_bound_is_rejected_by_the_real_figures(open_engine, queue, new_fact):
    editor = open_engine("llama")
    guard = HarmfulFacts(GuardConfig(max_l1_growth=1e-9))     # any edit at all grows L1 past it
    ids = approve(queue, [new_fact(0)])
    outcome = apply_approved(editor, queue, guard=guard)
    assert list(outcome.rejected) == ids and editor.generation == 0 and editor.edits() == []
    assert "L1 growth" in outcome.rejected[ids[0]] and "> 0.00%" in outcome.rejected[ids[0]]


def test_status_says_how_much_l1_room_is_left_at_the_recent_rate(open_engine, new_fact, capsys, livedit_dirs):
    from assistant.state.ledger import read_status
    from livedit.cli import main

    editor = open_engine("llama")
    for index in range(3):
        editor.apply([new_fact(index)])
    editor.close()
    history = read_status(livedit_dirs["state"]).growth_history
    assert [edits for edits, _ in history] == [1, 2, 3]
    bound = 2 * history[-1][1]
    assert main(["-q", "--set", f"guard.max_l1_growth={bound}", "status"]) == 0
    expected = edits_left(history, bound)
    assert expected == pytest.approx((bound - history[-1][1]) / ((history[-1][1] - history[0][1]) / 2))
    assert f"about {expected:.0f} more edit(s) at the recent rate" in capsys.readouterr().out


def test_growth_split_separates_the_first_order_part_from_sign_flips():
    from assistant.state.l1 import growth_split

    W0 = torch.tensor([[1.0, -1.0], [0.1, -2.0]])                      # mean |W0| = 1.025
    same_sign = growth_split(W0 + torch.tensor([[0.5, -0.5], [0.0, 0.0]]), W0)
    assert same_sign["growth"] == pytest.approx(0.25 / 1.025) == pytest.approx(same_sign["first_order"])
    assert same_sign["sign_flips"] == pytest.approx(0.0, abs=1e-12)
    flipped = growth_split(W0 + torch.tensor([[0.0, 0.0], [-0.3, 0.0]]), W0)   # 0.1 -> -0.2
    assert flipped["first_order"] == pytest.approx(-0.3 / 4 / 1.025)
    assert flipped["growth"] == pytest.approx(0.1 / 4 / 1.025)
    assert flipped["sign_flips"] == pytest.approx(0.4 / 4 / 1.025)
    assert flipped["rms_delta"] == pytest.approx(0.15) and flipped["mean_abs_w0"] == pytest.approx(1.025)
