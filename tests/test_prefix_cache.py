"""The prefix-cached forward of the target optimisation equals a full forward pass, with
the delta at each subject."""

import pytest
import torch

from assistant.model.architectures import architecture_of, get_module
from assistant.model.loading import load_model
from assistant.editing.prefix_cache import split_rows, suffix_hidden
from assistant.editing.prompts import PromptSettings, collate, fact_rows
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
