"""config.toml: one frozen dataclass per section; unknown or bad values are ConfigErrors."""

import dataclasses
import re

import pytest

from assistant.config import DEFAULT_CONFIG_FILE, Config, config_from_dict, load_config, with_overrides
from assistant.errors import ConfigError


def write_config(tmp_path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_project_config_loads_into_frozen_sections():
    config = load_config()
    assert isinstance(config, Config)
    assert config.editing.method in ("d4s", "memit-seq", "memit")
    assert config.editing.layers == sorted(set(config.editing.layers))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.editing.method = "memit"   # type: ignore[misc]


def test_unknown_key_names_key_and_section(tmp_path):
    path = write_config(tmp_path, '[editing]\nmethod = "d4s"\nlearning_rat = 0.1\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "learning_rat" in str(error.value) and "[editing]" in str(error.value)


def test_unknown_section_is_named(tmp_path):
    path = write_config(tmp_path, '[edting]\nmethod = "d4s"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "[edting]" in str(error.value)


def test_config_file_from_environment(tmp_path, monkeypatch):
    path = write_config(tmp_path, "[editing]\nsteps = 7\nmom2_weight = 3\n")
    monkeypatch.setenv("LIVEDIT_CONFIG", str(path))
    config = load_config()
    assert config.editing.steps == 7
    assert config.editing.mom2_weight == 3.0 and isinstance(config.editing.mom2_weight, float)
    assert config.model == Config().model            # sections not in the file keep their defaults


def test_missing_and_invalid_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write_config(tmp_path, "[editing\nsteps = 1\n"))


@pytest.mark.parametrize("table,named", [
    ({"editing": {"method": "rome"}}, "method"),
    ({"editing": {"steps": "5"}}, "steps"),
    ({"editing": {"steps": True}}, "steps"),
    ({"editing": {"layers": [3, 2]}}, "layers"),
    ({"editing": {"layers": [2, 2]}}, "layers"),
    ({"editing": {"chat_layers": [7, 6]}}, "chat_layers"),
    ({"editing": {"chat_layers": [-1, 6]}}, "chat_layers"),
    ({"editing": {"chat_layers": ["6"]}}, "chat_layers"),
    ({"editing": {"mom2_weight": -1.0}}, "mom2_weight"),
    ({"editing": {"chat_mom2_weight": 0.0}}, "chat_mom2_weight"),
    ({"editing": {"chat_steps": 0}}, "chat_steps"),
    ({"editing": {"learning_rate": 0.0}}, "learning_rate"),
    ({"editing": {"chat_learning_rate": -1.0}}, "chat_learning_rate"),
    ({"editing": {"chat_learning_rate": float("nan")}}, "chat_learning_rate"),
    ({"editing": {"chat_stop_probability": 1.5}}, "chat_stop_probability"),
    ({"editing": {"chat_refine_rounds": -1}}, "chat_refine_rounds"),
    ({"editing": {"kl_prompt": "is a"}}, "kl_prompt"),
    ({"editing": {"refine_rounds": -1}}, "refine_rounds"),
    ({"editing": {"refine_check": "maybe"}}, "refine_check"),
    ({"editing": {"chat_refine_check": "said it"}}, "chat_refine_check"),
    ({"editing": {"gate": -0.1}}, "gate"),
    ({"editing": {"gate_by": "token"}}, "gate_by"),
    ({"editing": {"chat_ridge": -0.1}}, "chat_ridge"),
    ({"editing": {"chat_ridge": float("nan")}}, "chat_ridge"),
    ({"editing": {"layer_mom2_factors": {"first": 0.5}}}, "layer_mom2_factors"),
    ({"editing": {"layer_mom2_factors": {"3": 0}}}, "positive"),
    ({"editing": {"layer_mom2_factors": {"3": "half"}}}, "positive"),
    ({"editing": {"layer_mom2_factors": {"3": float("nan")}}}, "positive"),
    ({"editing": {"layer_mom2_factors": {"3": float("inf")}}}, "positive"),
    ({"editing": {"layer_mom2_factors": {"\u00b3": 0.5}}}, "layer indices"),
    ({"editing": {"layer_mom2_factors": [0.5]}}, "layer_mom2_factors"),
    ({"editing": {"gate": 0.4}, "scheduler": {"snapshot_minutes": 10.0}}, "snapshot_minutes"),
    ({"model": {"dtype": "float8"}}, "dtype"),
    ({"model": {"device": "tpu"}}, "device"),
    ({"covariance": {"corpora": ["c4"]}}, "corpora"),
    ({"covariance": {"tokens": 10}}, "tokens"),
    ({"chat": {"max_new_tokens": 0}}, "max_new_tokens"),
    ({"paths": "here"}, "[paths]"),
])
def test_bad_values_are_rejected_with_the_key_named(table, named):
    with pytest.raises(ConfigError) as error:
        config_from_dict(table)
    assert named in str(error.value)


def test_non_integer_layers_are_a_config_error():
    # `layers = ["3"]` in config.toml must be reported as a ConfigError naming [editing] layers,
    # not surface as a TypeError from sorting mixed types.
    with pytest.raises(ConfigError, match="layers"):
        config_from_dict({"editing": {"layers": ["3"]}})
    with pytest.raises(ConfigError, match="layers"):
        config_from_dict({"editing": {"layers": [1, "2"]}})


def test_replace_validates_again():
    config = load_config()
    changed = config.replace("editing", steps=3)
    assert changed.editing.steps == 3 and changed.editing.layers == config.editing.layers
    assert config.editing.steps == load_config(DEFAULT_CONFIG_FILE).editing.steps   # the original is untouched
    with pytest.raises(ConfigError, match="method"):
        config.replace("editing", method="memit-batch")
    with pytest.raises(ConfigError, match="layers"):
        config.replace("editing", layers=[])


def test_paths_follow_environment(livedit_dirs):
    paths = load_config().paths
    assert paths.home_dir() == livedit_dirs["home"]
    assert paths.shared_data_dir() == livedit_dirs["shared"]


def test_layers_out_of_range_fail_on_open(make_config, livedit_dirs):
    from assistant.editing.editor import Editor

    config = make_config("llama", layers=[2, 4])
    state = livedit_dirs["state"] / "out-of-range"
    with pytest.raises(ConfigError) as error:
        Editor.open(config, state_dir=state, progress=False)
    assert "[2, 4]" in str(error.value) and "0 to 3" in str(error.value)
    assert not state.exists()


def test_bad_method_given_to_open_editor_is_rejected(make_config, livedit_dirs):
    from assistant.editing.editor import Editor
    from assistant.state.ledger import Ledger

    state = livedit_dirs["state"] / "bad-method"
    with pytest.raises(ConfigError, match="method"):
        editor = Editor.open(make_config("llama"), state_dir=state, method="memit_seq", progress=False)
        editor.close()
    if (state / "ledger.sqlite").exists():   # nothing may have been recorded for the bad method
        ledger = Ledger(state / "ledger.sqlite")
        try:
            assert ledger.meta() == {}
        finally:
            ledger.close()


def test_overrides_are_read_as_toml_and_validated():
    config = with_overrides(load_config(), ["editing.mom2_weight=1500", "editing.layers=[2, 3]",
                                            "editing.key_mode=per_form", "editing.end_chat_answer=false"])
    assert config.editing.mom2_weight == 1500.0 and config.editing.layers == [2, 3]
    assert config.editing.key_mode == "per_form" and config.editing.end_chat_answer is False
    assert config.model == load_config().model


def test_overrides_are_checked_across_sections_together():
    gated = Config().replace("editing", gate=0.4)
    # in either order: the gate switched off and the snapshot job switched on is a valid whole
    for order in (["scheduler.snapshot_minutes=5", "editing.gate=0"], ["editing.gate=0", "scheduler.snapshot_minutes=5"]):
        config = with_overrides(gated, order)
        assert config.editing.gate == 0.0 and config.scheduler.snapshot_minutes == 5.0
    with pytest.raises(ConfigError, match="snapshot_minutes"):
        with_overrides(gated, ["scheduler.snapshot_minutes=5"])


@pytest.mark.parametrize("override, named", [
    ("editing.mom2_weigth=1", "mom2_weigth"), ("editor.steps=3", "[editor]"), ("editing.steps", "SECTION.KEY=VALUE"),
    ("editing.steps=many", "steps"), ("editing.mom2_weight=-1", "mom2_weight")])
def test_bad_overrides_name_what_to_fix(override, named):
    with pytest.raises(ConfigError, match=re.escape(named)):
        with_overrides(load_config(), [override])


@pytest.mark.parametrize("command", [["status"], ["apply"], ["detect"], ["facts", "search", "x"],
                                     ["queue", "list"], ["correct", "--question", "q", "--answer", "a",
                                                         "--correction", "c"]])
def test_cli_set_reaches_every_command(livedit_dirs, monkeypatch, command):
    """`--set` is applied once, before any command runs: every command sees the same config."""
    from livedit import cli

    seen = {}

    def run(args):
        seen["config"] = args.config

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        _replace_run(action, run)
    assert cli.main(["--set", "editing.mom2_weight=2250", *command]) == 0
    assert seen["config"].editing.mom2_weight == 2250


def _replace_run(parser, run) -> None:
    if parser.get_default("run") is not None:
        parser.set_defaults(run=run)
    for action in parser._actions:
        if isinstance(action, __import__("argparse")._SubParsersAction):
            for sub in action.choices.values():
                _replace_run(sub, run)


def test_chat_layers_choose_the_window_of_facts_that_carry_a_question():
    split = config_from_dict({"editing": {"layers": [3, 4, 5], "chat_layers": [5, 6, 7]}}).editing
    assert split.window(has_question=True) == [5, 6, 7] and split.window(has_question=False) == [3, 4, 5]
    assert split.all_layers == [3, 4, 5, 6, 7]
    same = config_from_dict({"editing": {"layers": [3, 4, 5], "chat_layers": []}}).editing
    assert same.window(has_question=True) == same.window(has_question=False) == same.all_layers == [3, 4, 5]


def test_each_kind_of_fact_is_solved_with_its_own_settings():
    editing = config_from_dict({"editing": {"layers": [3, 4], "chat_layers": [6, 7], "mom2_weight": 2000.0,
                                            "chat_mom2_weight": 400.0, "steps": 30, "chat_steps": 90,
                                            "learning_rate": 0.3, "chat_learning_rate": 1.5,
                                            "stop_probability": 0.6, "chat_stop_probability": 0.95,
                                            "refine_rounds": 0, "chat_refine_rounds": 3,
                                            "refine_check": "probability", "chat_refine_check": "said"}}).editing
    assert editing.for_kind(has_question=False) is editing
    chat = editing.for_kind(has_question=True)
    assert (chat.layers, chat.mom2_weight, chat.steps, chat.learning_rate, chat.stop_probability,
            chat.refine_rounds, chat.refine_check) == ([6, 7], 400.0, 90, 1.5, 0.95, 3, "said")
    assert (chat.batch_size, chat.kl_prompt, chat.gate) == (editing.batch_size, editing.kl_prompt, editing.gate)
    defaults = config_from_dict({}).editing          # the measured settings of each kind (README)
    assert (defaults.mom2_weight, defaults.stop_probability, defaults.steps, defaults.refine_rounds,
            defaults.refine_check) == (2250.0, 0.4, 60, 2, "said")
    assert (defaults.chat_mom2_weight, defaults.chat_stop_probability, defaults.chat_steps,
            defaults.chat_refine_rounds, defaults.chat_refine_check) == (500.0, 0.97, 100, 2, "every_form")


def test_layer_factors_are_read_from_toml_and_scale_only_their_layer(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[editing]\nmom2_weight = 2000.0\nlayer_mom2_factors = {3 = 0.5, 8 = 2}\n")
    editing = load_config(path).editing
    assert editing.layer_mom2_factors == {3: 0.5, 8: 2.0}
    assert [editing.layer_lambda(layer) for layer in (3, 4, 8)] == [1000.0, 2000.0, 4000.0]
    overridden = with_overrides(load_config(path), ["editing.layer_mom2_factors={4 = 0.25}"]).editing
    assert overridden.layer_mom2_factors == {4: 0.25} and overridden.layer_lambda(3) == 2000.0
    defaults = config_from_dict({}).editing
    assert defaults.layer_mom2_factors == {3: 0.4, 4: 0.4, 5: 0.4}      # the cloze window's first layers
    assert [defaults.layer_lambda(layer) for layer in (3, 7, 8)] == [900.0, 2250.0, 2250.0]
    assert config_from_dict({"editing": {"layers": [1, 2], "chat_layers": []}}).editing.layer_lambda(1) == 2250.0


def test_the_chat_ridge_falls_on_the_layers_only_chat_facts_edit():
    editing = config_from_dict({"editing": {"layers": [3, 4, 5, 6, 7], "chat_layers": [6, 7, 8, 9],
                                            "chat_ridge": 0.5}}).editing
    assert [editing.layer_ridge(layer) for layer in (3, 6, 7, 8, 9, 10)] == [0.0, 0.0, 0.0, 0.5, 0.5, 0.0]
    one_window = config_from_dict({"editing": {"chat_layers": [], "chat_ridge": 0.5}}).editing
    assert [one_window.layer_ridge(layer) for layer in one_window.layers] == [0.0] * 5


def test_covariance_corpora_take_the_chat_turns_and_name_the_choices():
    assert config_from_dict({"covariance": {"corpora": ["wikitext2_raw", "zsre_chat"]}}).covariance.corpora == [
        "wikitext2_raw", "zsre_chat"]
    with pytest.raises(ConfigError) as error:
        config_from_dict({"covariance": {"corpora": ["c4"]}})
    assert "wikitext2_raw, me_ppl, zsre_chat" in str(error.value)


def test_config_toml_states_every_default():
    """config.toml documents the defaults: every key of every section is in it, with the
    dataclass's own default value (so a partial file, or none, runs the same settings)."""
    import tomllib

    written = tomllib.loads(DEFAULT_CONFIG_FILE.read_text(encoding="utf-8"))
    defaults = Config()
    assert set(written) == {section.name for section in dataclasses.fields(Config)}
    for section in dataclasses.fields(Config):
        keys = [f.name for f in dataclasses.fields(getattr(defaults, section.name))]
        assert set(written[section.name]) == set(keys), f"[{section.name}] in config.toml"
        loaded = getattr(load_config(DEFAULT_CONFIG_FILE), section.name)
        for key in keys:
            assert getattr(loaded, key) == getattr(getattr(defaults, section.name), key), \
                f"[{section.name}] {key}: config.toml says {getattr(loaded, key)!r}, the dataclass default differs"


def test_partial_config_file_keeps_the_defaults_for_the_rest(tmp_path):
    config = load_config(write_config(tmp_path, "[editing]\nsteps = 7\n\n[chat]\nmax_new_tokens = 12\n"))
    assert config.editing == dataclasses.replace(Config().editing, steps=7)
    assert config.chat == dataclasses.replace(Config().chat, max_new_tokens=12)
    assert config.replace("editing", steps=Config().editing.steps).replace(
        "chat", max_new_tokens=Config().chat.max_new_tokens) == load_config(DEFAULT_CONFIG_FILE)


@pytest.mark.parametrize("key, value", [("chat_prefixes", '[""]'), ("lead_in_echoes", "false"),
                                        ("quote_variants", "false"), ("lead_in_asks", '["{}"]'),
                                        ("weakened_delta", "0.0"), ("question_variants", "0")])
def test_a_removed_key_is_named_as_removed_with_where_it_was_measured(tmp_path, key, value):
    path = write_config(tmp_path, f"[editing]\nsteps = 7\n{key} = {value}\n")
    for load in (lambda: load_config(path), lambda: with_overrides(Config(), [f"editing.{key}={value}"])):
        with pytest.raises(ConfigError) as error:
            load()
        message = str(error.value)
        assert f"[editing] {key} was removed" in message and "measured without gain" in message
        assert "benchmarks/RESULTS.md" in message and "delete it" in message
