"""Null-space editing: d4s-null (D4S's sums solved in C's null space) and alphaedit (AlphaEdit's
sequential form), on random float64 data and on a tiny random Llama and GPT-2."""

import dataclasses

import pytest
import torch

from assistant.editing.closed_form import alphaedit_delta, null_space_delta, null_space_projector
from assistant.errors import EditRejected, StateError
from assistant.model.loading import load_model
from assistant.state.sums import EditSums, NullSpace, edited_weight
from tests.test_closed_form import random_problem, relative_error

KEEP, ALPHA = 0.5, 0.7


def preserved_directions(C: torch.Tensor, keep: float) -> torch.Tensor:
    """The eigenvectors of C that a null-space edit must leave alone (the largest)."""
    _, vectors = torch.linalg.eigh(C)
    return vectors[:, round(keep * C.shape[0]):]


def test_the_projector_keeps_the_smallest_directions_of_c():
    _, _, C = random_problem(0)
    P = null_space_projector(C, KEEP)
    assert torch.allclose(P, P.T, atol=1e-12) and torch.allclose(P @ P, P, atol=1e-10)
    assert round(torch.trace(P).item()) == round(KEEP * C.shape[0])
    assert (P @ preserved_directions(C, KEEP)).abs().max() < 1e-10
    smallest = torch.linalg.eigh(C).eigenvectors[:, 0]
    assert torch.allclose(P @ smallest, smallest, atol=1e-10)
    assert torch.equal(null_space_projector(C, 1.0), torch.eye(C.shape[0], dtype=C.dtype))


@pytest.mark.parametrize("seed,keep,alpha", [(0, 0.5, 0.7), (1, 0.8, 10.0), (2, 0.3, 0.01)])
def test_null_space_delta_is_the_direct_solve_in_the_null_space_basis(seed, keep, alpha):
    """Delta = X U^T with X minimising ||X U^T K - R||^2 + alpha ||X||^2 (U: the null basis),
    solved here as a stacked least-squares problem, independently of the formula."""
    K, R, C = random_problem(seed, n=4)
    _, vectors = torch.linalg.eigh(C)
    U = vectors[:, :round(keep * C.shape[0])]
    A = torch.cat([(U.T @ K).T, alpha ** 0.5 * torch.eye(U.shape[1], dtype=torch.float64)])
    B = torch.cat([R.T, torch.zeros(U.shape[1], R.shape[0], dtype=torch.float64)])
    expected = torch.linalg.lstsq(A, B, driver="gelsd").solution.T @ U.T

    delta = null_space_delta(R @ K.T, K @ K.T, null_space_projector(C, keep), alpha)

    assert relative_error(delta, expected) < 1e-8
    assert (delta @ preserved_directions(C, keep)).abs().max() < 1e-10 * delta.abs().max()   # preserved keys untouched


def test_null_space_delta_satisfies_alphaedits_normal_equations():
    K, R, C = random_problem(3)
    P = null_space_projector(C, KEEP)
    delta = null_space_delta(R @ K.T, K @ K.T, P, ALPHA)
    gradient = (delta @ K - R) @ K.T @ P + ALPHA * delta        # d/dDelta of the objective over Delta = Delta P
    assert gradient.abs().max() < 1e-10 * (R.abs().max() * K.abs().max() ** 2)
    assert torch.allclose(delta @ P, delta, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 5])
def test_d4s_null_single_edits_equal_one_batch_and_retract_exactly(seed):
    K, R, C = random_problem(seed, n=9)
    prior = NullSpace(null_space_projector(C, KEEP), ALPHA)
    sums = EditSums.empty("d4s-null", {7: (R.shape[0], K.shape[0])})
    for i in torch.randperm(K.shape[1], generator=torch.Generator().manual_seed(seed)).tolist():
        sums.strategy.add_batch(sums, 7, K[:, i:i + 1], R[:, i:i + 1], prior, lam=1.0)
    assert relative_error(sums.offset(7, prior, 1.0), null_space_delta(R @ K.T, K @ K.T, prior.P, ALPHA)) < 1e-8

    sums.strategy.remove(sums, 7, K[:, 2:3], R[:, 2:3])
    keep = [0, 1, 3, 4, 5, 6, 7, 8]
    alone = null_space_delta(R[:, keep] @ K[:, keep].T, K[:, keep] @ K[:, keep].T, prior.P, ALPHA)
    assert relative_error(sums.offset(7, prior, 1.0), alone) < 1e-8


def test_alphaedit_stacks_each_batch_regularised_by_the_earlier_keys():
    K, R, C = random_problem(4, n=6)
    prior = NullSpace(null_space_projector(C, KEEP), ALPHA)
    sums = EditSums.empty("alphaedit", {1: (R.shape[0], K.shape[0])})
    first, second = slice(0, 3), slice(3, 6)
    sums.strategy.add_batch(sums, 1, K[:, first], R[:, first], prior, lam=1.0)
    sums.strategy.add_batch(sums, 1, K[:, second], R[:, second], prior, lam=1.0)

    K1, K2 = K[:, first], K[:, second]
    delta1 = R[:, first] @ K1.T @ prior.P @ torch.linalg.inv(K1 @ K1.T @ prior.P + ALPHA * torch.eye(K.shape[0],
                                                                                                       dtype=K.dtype))
    T = K1 @ K1.T + K2 @ K2.T
    delta2 = R[:, second] @ K2.T @ prior.P @ torch.linalg.inv(T @ prior.P + ALPHA * torch.eye(K.shape[0],
                                                                                               dtype=K.dtype))
    assert relative_error(sums.offset(1, prior, 1.0), delta1 + delta2) < 1e-8
    assert relative_error(sums.T(1), T) < 1e-12
    assert relative_error(alphaedit_delta(K2, R[:, second], K1 @ K1.T, prior.P, ALPHA), delta2) < 1e-8
    with pytest.raises(EditRejected, match="exact retraction needs d4s or d4s-null"):
        sums.strategy.remove(sums, 1, K1, R[:, first])


# -- the engine ---------------------------------------------------------------------------------

def null_engine(open_engine, model: str, method: str, **editing):
    return open_engine(model, method=method, null_space_keep=KEEP, null_space_alpha=ALPHA, **editing)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_d4s_null_edits_leave_cs_largest_directions_alone_and_retract_exactly(model, open_engine, new_fact,
                                                                               inspect):
    editor = null_engine(open_engine, model, "d4s-null")
    (a,) = editor.apply([new_fact(1)]).edit_ids
    (b,) = editor.apply([new_fact(2)]).edit_ids
    changed = [layer for layer in editor.layers if not torch.equal(editor.current_weights()[layer], editor.W0[layer])]
    assert changed
    for layer in changed:
        offset = editor.current_weights()[layer].double() - editor.W0[layer].double()
        top = preserved_directions(editor.C[layer].double(), KEEP)
        assert (offset @ top).norm() < 1e-4 * offset.norm()     # float32 weights: rounding only
    editor.retract(a)
    assert editor.edit(a).status == "retracted" and editor.edit(b).status == "active"
    for layer, (k, r) in editor.vectors(b).items():
        prior = editor.prior(layer)
        alone = edited_weight(editor.W0[layer], null_space_delta(r @ k.T, k @ k.T, prior.P, prior.alpha))
        assert inspect.relative_error(editor.current_weights()[layer], alone) < 1e-6


@pytest.mark.parametrize("method", ["d4s-null", "alphaedit"])
def test_null_space_states_rebuild_bit_identical_weights(method, open_engine, make_config, facts):
    editor = null_engine(open_engine, "llama", method, batch_size=2)
    ids = editor.apply(facts).edit_ids
    if method == "d4s-null":
        editor.retract(ids[0])
    before = editor.current_weights()
    editor.close()
    config = make_config("llama", null_space_keep=KEEP, null_space_alpha=ALPHA)
    restarted = open_engine(config=config, method=None, loaded=load_model(config))
    assert restarted.method == method
    for layer in restarted.layers:
        assert torch.equal(restarted.current_weights()[layer], before[layer])
    assert any(not torch.equal(before[layer], restarted.W0[layer]) for layer in restarted.layers)


def test_alphaedit_weights_are_w0_plus_each_batchs_update(open_engine, facts, inspect):
    editor = null_engine(open_engine, "llama", "alphaedit", batch_size=2, refine_rounds=0)
    ids = editor.apply(facts).edit_ids
    assert editor.generation == 2
    with pytest.raises(EditRejected, match="exact retraction"):
        editor.retract(ids[0])
    for layer in editor.layers:
        prior, T, total = editor.prior(layer), None, 0
        for batch in (ids[:2], ids[2:]):
            vectors = [editor.vectors(i).get(layer) for i in batch]
            if not all(vectors):
                continue
            K = torch.cat([k for k, _ in vectors], dim=1)
            R = torch.cat([r for _, r in vectors], dim=1)
            T = torch.zeros(K.shape[0], K.shape[0], dtype=K.dtype) if T is None else T
            total = total + alphaedit_delta(K, R, T, prior.P, prior.alpha)
            T = T + K @ K.T
        expected = edited_weight(editor.W0[layer], total) if T is not None else editor.W0[layer]
        assert inspect.relative_error(editor.current_weights()[layer], expected) < 1e-6


def test_a_null_space_state_keeps_its_settings(open_engine, make_config, new_fact, livedit_dirs):
    state = livedit_dirs["state"] / "null"
    null_engine(open_engine, "llama", "d4s-null", state_dir=state).apply([new_fact(0)])
    other = make_config("llama", null_space_keep=0.9, null_space_alpha=ALPHA)
    with pytest.raises(StateError, match="null_space_keep = 0.5, but this run has 0.9") as error:
        open_engine(config=other, method=None, state_dir=state, loaded=load_model(other))
    assert "[editing] null_space_keep = 0.5" in str(error.value)
    d4s_state = livedit_dirs["state"] / "d4s"
    open_engine(method="d4s", state_dir=d4s_state).apply([new_fact(0)])
    changed = dataclasses.replace(other)
    assert open_engine(config=changed, method=None, state_dir=d4s_state, loaded=load_model(changed)).method == "d4s"
