"""The prefix-cached forward of the target optimisation equals a full forward pass, with
the delta at each subject."""

import itertools

import pytest
import torch

from assistant.model.architectures import architecture_of, get_module
from assistant.model.loading import load_model
from assistant.editing.prefix_cache import split_rows, suffix_hidden, width_buckets
from assistant.editing.prompts import PromptSettings, Row, collate, fact_rows
from assistant.model.hooks import edit_output
from assistant.editing.targets import add_delta_at, delta_sites

SETTINGS = PromptSettings(context_prefixes=("", "Note: ", "A longer prefix: "))


@pytest.mark.parametrize("replayed", [False, True])
@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_suffix_states_match_the_full_forward_with_the_delta(model, replayed, make_config, new_fact):
    """Also with the suffix's blocks up to the delta's run once and replayed at each step."""
    loaded = load_model(make_config(model))
    m, tok = loaded.model, loaded.tokenizer
    facts = [new_fact(i) for i in range(3)]
    rows = [row for i, f in enumerate(facts) for row in fact_rows(i, f, tok, SETTINGS, True)]
    batch = collate(rows, tok.pad_token_id, torch.device("cpu"))
    block = get_module(m, architecture_of(m).block_module.format(1))
    delta = torch.randn(len(facts), m.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with edit_output(block, add_delta_at(delta_sites(batch), delta)):
            full = m.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        split = split_rows(m, batch, tok.pad_token_id, through=block if replayed else None)
        assert len(split.blocks_below) == (2 if replayed else 0)
        for _ in range(2):                                   # the cache is reusable step after step
            with edit_output(block, add_delta_at(delta_sites(batch, from_subject=True), delta)):
                part = suffix_hidden(m, split)
            for i, row in enumerate(rows):
                expected = full[i, row.subject_pos:len(row.ids)]
                got = part[i, :len(row.ids) - row.subject_pos]
                assert torch.isfinite(got).all()
                assert (expected - got).abs().max() <= 1e-4 * expected.abs().max()
            assert all(layer.get_seq_length() == split.prefix_width for layer in split.cache.layers)


def _rows_with_suffixes(lengths: list[int]):
    """Rows whose subject is their first token, so each suffix has the given length."""
    return collate([Row(i, [1] * length, 0) for i, length in enumerate(lengths)], 0, torch.device("cpu"))


def _padded_cost(lengths: list[int], buckets: list[list[int]], pass_cost: int) -> int:
    return sum(len(b) * max(lengths[i] for i in b) + pass_cost for b in buckets)


def test_width_buckets_put_short_and_long_rows_in_their_own_passes():
    batch = _rows_with_suffixes([3, 40, 3, 41, 3])
    as_lists = lambda masks: sorted(m.nonzero().squeeze(1).tolist() for m in masks)  # noqa: E731
    assert as_lists(width_buckets(batch, pass_cost=10)) == [[0, 2, 4], [1, 3]]
    assert as_lists(width_buckets(batch, pass_cost=1000)) == [[0, 1, 2, 3, 4]]     # a pass costs more than padding
    assert as_lists(width_buckets(_rows_with_suffixes([7]), pass_cost=10)) == [[0]]


@pytest.mark.parametrize("seed", range(5))
def test_width_buckets_are_the_cheapest_split_of_the_sorted_rows(seed):
    """Every row in exactly one pass, and no split into runs of the sorted rows costs less."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 30, (7,), generator=generator).tolist()
    buckets = [m.nonzero().squeeze(1).tolist() for m in width_buckets(_rows_with_suffixes(lengths), pass_cost=12)]
    assert sorted(i for b in buckets for i in b) == list(range(7))
    order = sorted(range(7), key=lengths.__getitem__)
    cheapest = min(
        _padded_cost(lengths, [order[a:b] for a, b in zip((0,) + cuts, cuts + (7,))], 12)
        for k in range(7) for cuts in itertools.combinations(range(1, 7), k))
    assert _padded_cost(lengths, buckets, 12) == cheapest
