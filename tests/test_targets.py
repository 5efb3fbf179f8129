"""The target optimisation in groups of facts (a memory bound) gives the same targets."""

import dataclasses

import pytest
import torch

from assistant.model.architectures import architecture_of, get_module
from assistant.editing.prompts import PromptSettings, Row, collate, fact_rows, kl_row
from assistant.config import EditingConfig
from assistant.editing import targets
from assistant.editing.prefix_cache import width_buckets
from assistant.editing.targets import TargetSettings, asked_probability, fact_groups, optimise_targets
from assistant.evaluation.metrics import completion_nll


def _batch(lengths_per_fact: list[list[int]]):
    rows = [Row(fact, [1] * length, 0) for fact, lengths in enumerate(lengths_per_fact) for length in lengths]
    return collate(rows, 0, torch.device("cpu"))


def test_fact_groups_fill_the_budget_without_splitting_a_fact():
    batch = _batch([[3, 4], [5], [6, 2], [9]])              # 7, 5, 8, 9 tokens
    everyone = torch.ones(4, dtype=torch.bool)
    as_lists = lambda masks: [m.nonzero().squeeze(1).tolist() for m in masks]  # noqa: E731
    assert as_lists(fact_groups(batch, everyone, 0)) == [[0, 1, 2, 3]]
    assert as_lists(fact_groups(batch, everyone, 12)) == [[0, 1], [2], [3]]
    assert as_lists(fact_groups(batch, everyone, 1)) == [[0], [1], [2], [3]]      # a fact over budget stands alone
    assert as_lists(fact_groups(batch, torch.tensor([True, False, True, True]), 17)) == [[0, 2], [3]]
    assert fact_groups(batch, torch.zeros(4, dtype=torch.bool), 12) == []


@pytest.mark.parametrize("model", ["llama", "gpt2"])
def test_grouped_optimisation_equals_one_pass(open_engine, new_fact, model):
    editor = open_engine(model, steps=8, stop_probability=0.5)
    shadow, tok, cfg = editor.shadow, editor.tokenizer, editor.editing
    facts = [new_fact(i) for i in range(4)]
    settings = PromptSettings(context_prefixes=tuple(cfg.context_prefixes))
    train = collate([r for i, f in enumerate(facts) for r in fact_rows(i, f, tok, settings, True)],
                    tok.pad_token_id, torch.device("cpu"))
    kl = collate([kl_row(i, f, tok, cfg.kl_prompt) for i, f in enumerate(facts)], tok.pad_token_id, torch.device("cpu"))
    block = get_module(shadow, architecture_of(shadow).block_module.format(cfg.layers[-1]))
    h_norm = torch.full((4,), 2.0)
    settings = TargetSettings.from_editing(cfg)
    whole = optimise_targets(shadow, train, kl, block, h_norm, dataclasses.replace(settings, tokens_per_pass=0),
                             tok.pad_token_id)
    smallest = int(train.lengths.min())
    grouped = optimise_targets(shadow, train, kl, block, h_norm, dataclasses.replace(settings, tokens_per_pass=smallest),
                               tok.pad_token_id)
    assert len(fact_groups(train, torch.ones(4, dtype=torch.bool), smallest)) == 4
    assert grouped.steps == whole.steps
    assert torch.allclose(grouped.probability, whole.probability, rtol=1e-4, atol=1e-6)
    # float32 sums in another order, amplified a little by Adam's normalisation over the steps
    assert (grouped.delta - whole.delta).abs().max() <= 1e-3 * whole.delta.abs().max()
    assert whole.delta.abs().sum() > 0


def test_passes_by_width_give_the_targets_of_one_pass(open_engine, new_fact, monkeypatch):
    """Rows in passes of similar length (as the engine runs them) give the targets that all
    rows in one padded pass give."""
    editor = open_engine("llama", steps=8, stop_probability=0.5)
    shadow, pad = editor.shadow, editor.tokenizer.pad_token_id
    train, kl, block = _rows_of(editor, [new_fact(i) for i in range(4)])
    h_norm = torch.full((4,), 2.0)
    settings = dataclasses.replace(TargetSettings.from_editing(editor.editing), tokens_per_pass=0)
    passes = []
    monkeypatch.setattr(targets, "width_buckets", lambda rows: passes.append(width_buckets(rows, 0)) or passes[-1])
    by_width = optimise_targets(shadow, train, kl, block, h_norm, settings, pad)
    assert len(passes[0]) >= 2                                     # rows of other lengths in their own passes
    monkeypatch.setattr(targets, "width_buckets", lambda rows: [torch.ones(len(rows.rows), dtype=torch.bool)])
    one_pass = optimise_targets(shadow, train, kl, block, h_norm, settings, pad)
    assert by_width.steps == one_pass.steps
    assert torch.allclose(by_width.probability, one_pass.probability, rtol=1e-4, atol=1e-6)
    assert (by_width.delta - one_pass.delta).abs().max() <= 1e-3 * one_pass.delta.abs().max()
    assert one_pass.delta.abs().sum() > 0


def test_target_settings_take_their_values_from_the_editing_section():
    editing = EditingConfig(steps=7, learning_rate=0.25, stop_probability=0.8, tokens_per_pass=99)
    settings = TargetSettings.from_editing(editing)
    assert settings == TargetSettings(steps=7, learning_rate=0.25, clamp_norm_factor=editing.clamp_norm_factor,
                                      kl_weight=editing.kl_weight, weight_decay=editing.weight_decay,
                                      stop_probability=0.8, tokens_per_pass=99)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.steps = 3   # type: ignore[misc]


def _rows_of(editor, facts):
    tok, cfg = editor.tokenizer, editor.editing
    settings = PromptSettings(context_prefixes=tuple(cfg.context_prefixes))
    train = collate([r for i, f in enumerate(facts) for r in fact_rows(i, f, tok, settings, True)],
                    tok.pad_token_id, torch.device("cpu"))
    kl = collate([kl_row(i, f, tok, cfg.kl_prompt) for i, f in enumerate(facts)], tok.pad_token_id, torch.device("cpu"))
    block = get_module(editor.shadow, architecture_of(editor.shadow).block_module.format(cfg.layers[-1]))
    return train, kl, block


def test_asked_probability_is_the_targets_probability_after_the_plain_prompt(open_engine, new_fact):
    editor = open_engine("llama")
    facts = [new_fact(i) for i in range(3)]
    train, _, _ = _rows_of(editor, facts)
    got = asked_probability(editor.shadow, train, len(facts))
    nll = completion_nll(editor.shadow, editor.tokenizer, [f.filled_prompt for f in facts],
                         [f.target_new for f in facts])
    assert torch.allclose(got, torch.exp(-nll), rtol=1e-4)
    assert got.min() > 0


def test_optimising_only_some_facts_leaves_the_others_at_zero(open_engine, new_fact):
    """A refinement round optimises the facts behind alone: the same deltas as a batch of
    just those facts, and a zero delta and probability for the rest."""
    editor = open_engine("llama", steps=5, stop_probability=0.99)
    facts = [new_fact(i) for i in range(3)]
    train, kl, block = _rows_of(editor, facts)
    settings, pad = TargetSettings.from_editing(editor.editing), editor.tokenizer.pad_token_id
    only = torch.tensor([True, False, True])
    some = optimise_targets(editor.shadow, train, kl, block, torch.full((3,), 2.0), settings, pad, only)
    train_alone, kl_alone, _ = _rows_of(editor, [facts[0], facts[2]])
    alone = optimise_targets(editor.shadow, train_alone, kl_alone, block, torch.full((2,), 2.0), settings, pad)
    assert some.delta[1].abs().sum() == 0 and some.probability[1] == 0
    assert some.delta[0].abs().sum() > 0
    assert torch.allclose(some.delta[only], alone.delta, atol=1e-5)
    assert torch.allclose(some.probability[only], alone.probability, atol=1e-5)
