"""The editing math on random float64 data: MEMIT's closed form and D4S's running sums."""

import pytest
import torch

from assistant.editing.closed_form import d4s_delta, memit_delta, outer_sums, realised_fraction, ridged, \
    spread_residual
from assistant.state.sums import EditSums


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def random_problem(seed: int, d_in: int = 12, d_out: int = 7, n: int = 5, samples: int = 40):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(d_in, samples, generator=g, dtype=torch.float64)
    C = X @ X.T / samples + 1e-3 * torch.eye(d_in, dtype=torch.float64)   # (d_in, d_in), SPD
    K = torch.randn(d_in, n, generator=g, dtype=torch.float64)
    R = torch.randn(d_out, n, generator=g, dtype=torch.float64)
    return K, R, C


def sqrtm_spd(C: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(C)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


@pytest.mark.parametrize("seed,lam", [(0, 1.0), (1, 15.0), (2, 0.03)])
def test_memit_delta_is_the_least_squares_solution(seed, lam):
    K, R, C = random_problem(seed)
    d_in, d_out = K.shape[0], R.shape[0]
    A = torch.cat([K.T, lam ** 0.5 * sqrtm_spd(C)])                   # (n + d_in, d_in)
    B = torch.cat([R.T, torch.zeros(d_in, d_out, dtype=torch.float64)])  # (n + d_in, d_out)
    expected = torch.linalg.lstsq(A, B, driver="gelsd").solution.T     # (d_out, d_in)

    delta = memit_delta(K, R, C, lam)

    assert delta.shape == (d_out, d_in)
    assert delta.dtype == torch.float64
    assert relative_error(delta, expected) < 1e-8


def test_memit_delta_satisfies_the_normal_equations():
    K, R, C = random_problem(3)
    lam = 4.0
    delta = memit_delta(K, R, C, lam)
    # gradient of ||delta K - R||^2 + lam tr(delta C delta^T) vanishes
    gradient = (delta @ K - R) @ K.T + lam * delta @ C
    assert gradient.abs().max().item() < 1e-10 * R.abs().max().item() * K.abs().max().item()


@pytest.mark.parametrize("seed", [0, 5])
def test_d4s_single_edits_equal_one_memit_batch(seed):
    K, R, C = random_problem(seed, n=9)
    lam = 2.5
    sums = EditSums.empty("d4s", {7: (R.shape[0], K.shape[0])})
    for i in torch.randperm(K.shape[1], generator=torch.Generator().manual_seed(seed)).tolist():
        sums.add(7, K[:, i:i + 1], R[:, i:i + 1])

    assert relative_error(sums.offset(7, C, lam), memit_delta(K, R, C, lam)) < 1e-6
    assert relative_error(sums.tensors["S.7"], R @ K.T) < 1e-12
    assert relative_error(sums.tensors["T.7"], K @ K.T) < 1e-12


def test_d4s_retraction_equals_the_batch_without_the_edit():
    K, R, C = random_problem(6, n=6)
    lam = 1.5
    sums = EditSums.empty("d4s", {0: (R.shape[0], K.shape[0])})
    sums.add(0, K, R)
    sums.add(0, K[:, 2:3], R[:, 2:3], sign=-1.0)
    keep = [0, 1, 3, 4, 5]
    assert relative_error(sums.offset(0, C, lam), memit_delta(K[:, keep], R[:, keep], C, lam)) < 1e-6


def test_d4s_delta_matches_memit_delta_from_outer_sums():
    K, R, C = random_problem(7)
    S, T = outer_sums(K, R)
    assert S.shape == (R.shape[0], K.shape[0]) and T.shape == (K.shape[0], K.shape[0])
    assert relative_error(d4s_delta(S, T, C, 3.0), memit_delta(K, R, C, 3.0)) < 1e-10


def test_empty_d4s_sums_give_a_zero_offset():
    K, R, C = random_problem(8)
    sums = EditSums.empty("d4s", {3: (R.shape[0], K.shape[0])})
    offset = sums.offset(3, C, 1.0)
    assert offset.shape == (R.shape[0], K.shape[0])
    assert not offset.any()


def test_memit_sums_stack_deltas():
    K, R, C = random_problem(9)
    sums = EditSums.empty("memit-seq", {2: (R.shape[0], K.shape[0])})
    first, second = memit_delta(K, R, C, 1.0), memit_delta(K, -2 * R, C, 5.0)
    sums.stack(2, first)
    sums.stack(2, second)
    assert torch.allclose(sums.offset(2, C, 1.0), first + second, rtol=0, atol=1e-14)
    assert sums.T(2) is None


def test_the_gated_share_is_the_gated_edits_part_of_the_offset():
    """offset(S) = offset(S - G) + offset(G): G holds the gated batches' terms, their raised
    residuals, and loses a gated edit's terms when it is removed."""
    K, R, C = random_problem(12, n=6)
    E = torch.randn_like(R[:, :2])
    lam, cloze, chat = 2.0, slice(0, 3), slice(3, 6)
    sums = EditSums.empty("d4s", {4: (R.shape[0], K.shape[0])})
    sums.add(4, K[:, cloze], R[:, cloze])
    sums.add(4, K[:, chat], R[:, chat], gated=True)
    sums.raise_residuals(4, K[:, 3:5], E, gated=True)
    sums.raise_residuals(4, K[:, 0:2], E)
    sums.add(4, K[:, 5:6], R[:, 5:6], sign=-1.0, gated=True)
    G = R[:, 3:5] @ K[:, 3:5].T + E @ K[:, 3:5].T
    assert relative_error(sums.tensors["G.4"], G) < 1e-12
    T = K[:, :5] @ K[:, :5].T
    assert relative_error(sums.gated_offset(4, C, lam), d4s_delta(G, T, C, lam)) < 1e-8
    cloze_part = d4s_delta(sums.tensors["S.4"] - G, T, C, lam)
    assert relative_error(sums.offset(4, C, lam), cloze_part + sums.gated_offset(4, C, lam)) < 1e-8


@pytest.mark.parametrize("method", ["d4s", "d4s-null"])
def test_the_gated_columns_are_the_gated_share_edit_by_edit(method):
    """GK and GR hold one column per gated key, raised residuals included and removed edits
    out, so GR GK^T = G; their solved columns give the gated offset (R M^T); an edit whose
    columns are not there is refused."""
    from assistant.errors import StateError

    K, R, C = random_problem(14, n=6)
    E = torch.randn_like(R[:, :2])
    sums = EditSums.empty(method, {4: (R.shape[0], K.shape[0])})
    prior = sums.strategy.prior(C, type("Editing", (), {"null_space_keep": 0.7, "null_space_alpha": 1.0}))
    sums.add(4, K[:, :2], R[:, :2])                                   # cloze: not gated
    sums.add(4, K[:, 2:6], R[:, 2:6], gated=True)
    sums.raise_residuals(4, K[:, 3:5], E, gated=True)
    sums.add(4, K[:, 2:3], R[:, 2:3], sign=-1.0, gated=True)
    assert torch.equal(sums.tensors["GK.4"], K[:, 3:6])
    raised = R[:, 3:6].clone()
    raised[:, :2] += E
    assert torch.equal(sums.tensors["GR.4"], raised)
    assert relative_error(sums.tensors["GR.4"] @ sums.tensors["GK.4"].T, sums.tensors["G.4"]) < 1e-12
    columns = sums.gated_columns(4, prior, 2.0)
    assert columns.M.shape == (K.shape[0], 3) and columns.R.shape == (R.shape[0], 3)
    assert relative_error(columns.R @ columns.M.T, sums.gated_offset(4, prior, 2.0)) < 1e-9
    with pytest.raises(StateError, match="not among the gated columns"):
        sums.add(4, K[:, 3:4], R[:, 3:4], sign=-1.0, gated=True)      # its residual was raised: not this edit
    sums.add(4, K[:, 3:6], raised, sign=-1.0, gated=True)
    assert sums.tensors["GK.4"].shape == (K.shape[0], 0) and not sums.gated_columns(4, prior, 2.0).M.any()


@pytest.mark.parametrize("method", ["memit-seq", "alphaedit"])
def test_stacked_methods_keep_the_gated_batches_delta(method):
    K, R, C = random_problem(13, n=4)
    sums = EditSums.empty(method, {2: (R.shape[0], K.shape[0])})
    prior = sums.strategy.prior(C, type("Editing", (), {"null_space_keep": 0.7, "null_space_alpha": 1.0}))
    sums.strategy.add_batch(sums, 2, K[:, :2], R[:, :2], prior, 1.0)
    assert not sums.gated_offset(2, prior, 1.0).any()
    before = sums.offset(2, prior, 1.0).clone()
    sums.strategy.add_batch(sums, 2, K[:, 2:], R[:, 2:], prior, 1.0, gated=True)
    sums.strategy.raise_residuals(sums, 2, K[:, 2:], R[:, 2:] / 2, prior, 1.0, gated=True)
    assert sums.gated_offset(2, prior, 1.0).any()
    assert torch.allclose(sums.offset(2, prior, 1.0) - before, sums.gated_offset(2, prior, 1.0), atol=1e-12)
    assert sums.gated_columns(2, prior, 1.0) is None          # a batch's Delta keeps no edit's term apart


def test_copy_of_sums_is_independent():
    K, R, _ = random_problem(10)
    sums = EditSums.empty("d4s", {1: (R.shape[0], K.shape[0])})
    copy = sums.copy()
    copy.add(1, K, R)
    assert not sums.tensors["S.1"].any() and not sums.tensors["T.1"].any()


def test_realised_fraction_is_the_share_a_single_key_realises():
    K, R, C = random_problem(11, n=4)
    lam = 3.0
    fraction = realised_fraction(K, C, lam)
    for i in range(K.shape[1]):
        k, r = K[:, i:i + 1], R[:, i:i + 1]
        realised = memit_delta(k, r, C, lam) @ k                       # (d_out, 1)
        assert torch.allclose(realised, fraction[i] * r, rtol=1e-9, atol=1e-12)
    assert ((fraction > 0) & (fraction < 1)).all()


def test_realised_fraction_accounts_for_earlier_keys():
    K, _, C = random_problem(12, n=3)
    lam = 1.0
    T = K[:, :2] @ K[:, :2].T
    a = K[:, 2] @ torch.linalg.solve(lam * C + T, K[:, 2])
    assert realised_fraction(K[:, 2:], C, lam, T)[0].item() == pytest.approx((a / (1 + a)).item(), rel=1e-12)


def test_spread_residual_divides_what_is_left():
    z = torch.tensor([[3.0], [6.0]], dtype=torch.float64)
    h = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    assert torch.equal(spread_residual(z, h, 2), torch.tensor([[1.0], [3.0]], dtype=torch.float64))
    assert torch.equal(spread_residual(z, h, 1), z - h)


def test_response_ratio_is_the_share_of_a_facts_change_made_at_another_key():
    from benchmarks.chat_key_response import response_ratio

    torch.manual_seed(0)
    A = torch.eye(4, dtype=torch.float64) * 2
    k = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    assert response_ratio(A, k, k) == pytest.approx(1.0)
    assert response_ratio(A, k, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)) == pytest.approx(0.0)
    assert response_ratio(A, k, 0.5 * k) == pytest.approx(0.5)
    # the ratio is what the layer update R K^T A^-1 does at x over what it does at k
    B = torch.randn(4, 4, dtype=torch.float64)
    A = B @ B.T + torch.eye(4, dtype=torch.float64)
    x, r = torch.randn(4, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    update = torch.outer(r, torch.linalg.solve(A, k))
    assert torch.allclose(update @ x, response_ratio(A, k, x) * (update @ k))


def test_the_ridge_adds_the_median_diagonal_times_itself_whatever_one_outlier_holds():
    _, _, C = random_problem(5)
    C[3, 3] += 1e4                                   # a massive activation's direction
    assert ridged(C, 0.0) is C
    lifted = ridged(C, 0.25)
    median_diagonal = C.diagonal().sort().values[(C.shape[0] - 1) // 2]      # the lower middle of 12
    assert median_diagonal < 10
    assert torch.allclose(lifted - C, 0.25 * median_diagonal * torch.eye(C.shape[0], dtype=C.dtype))
    assert torch.linalg.eigvalsh(lifted).min() > torch.linalg.eigvalsh(C).min() + 0.2 * median_diagonal
