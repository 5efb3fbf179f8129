"""config.toml as one frozen dataclass per section.

Unknown sections and keys are errors that name the section and the key. Each
dataclass checks its own values in ``__post_init__`` and says how to fix them.
The dataclass defaults are the one source of defaults (the measured ones); config.toml
states every one of them, and a test keeps the two equal, so a partial file or none
runs the same settings.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from assistant.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG_FILE = PROJECT_ROOT / "config.toml"
METHODS = ("d4s", "d4s-null", "memit-seq", "alphaedit", "memit")
REFINE_CHECKS = ("said", "probability", "every_form")   # what a refinement round re-checks a fact by
GATE_BY = ("sum", "edit")          # what the gate weighs at a token: the chat edits' summed change, or each edit's
# An operations-console user: "name:pbkdf2_sha256$ITERATIONS$SALT$HASH" (ui.auth makes and checks them).
ADMIN_ENTRY = re.compile(r"[^:\s]{1,64}:pbkdf2_sha256\$\d+\$[0-9a-f]{16,}\$[0-9a-f]{64}")


def _help(text: str, default):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class PathsConfig:
    home: str = _help("livedit's data directory; LIVEDIT_HOME overrides it", "")
    shared_data: str = _help("folder of public corpora and evaluation data", "")

    def home_dir(self) -> Path:
        chosen = os.environ.get("LIVEDIT_HOME") or self.home
        return Path(chosen).expanduser() if chosen else Path.home() / ".local/share/livedit"

    def shared_data_dir(self) -> Path:
        chosen = os.environ.get("LIVEDIT_SHARED_DATA") or self.shared_data
        return Path(chosen).expanduser() if chosen else PROJECT_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class ModelConfig:
    path: str = _help("local Hugging Face model directory; empty = default SmolLM2", "")
    device: str = _help("auto, cpu, cuda, cuda:N or mps", "auto")
    dtype: str = _help("float32, bfloat16 or float16", "float32")
    threads: int = _help("torch CPU threads; 0 keeps torch's default", 0)

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"[model] dtype = {self.dtype!r}: use float32, bfloat16 or float16")
        if not (self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps")):
            raise ConfigError(f"[model] device = {self.device!r}: use auto, cpu, cuda, cuda:N or mps")
        if self.threads < 0:
            raise ConfigError("[model] threads must be 0 (torch default) or a positive count")


COVARIANCE_CORPORA = ("wikitext2_raw", "me_ppl", "zsre_chat", "zsre_own_chat")


@dataclass(frozen=True)
class CovarianceConfig:
    corpora: list = _help("corpora of shared_data: wikitext2_raw, me_ppl (text/), zsre_chat (zsRE questions "
                          "and answers through the chat template), zsre_own_chat (zsRE questions with the "
                          "model's own greedy answers)", ["wikitext2_raw", "me_ppl", "zsre_chat"])
    tokens: int = _help("number of corpus tokens the statistics are taken over", 60000)
    sequence_length: int = _help("tokens per forward pass while collecting keys", 256)
    batch_size: int = _help("sequences per forward pass", 8)

    def __post_init__(self):
        unknown = sorted(set(self.corpora) - set(COVARIANCE_CORPORA))
        if unknown or not self.corpora:
            raise ConfigError(f"[covariance] corpora {unknown or '[]'}: choose from {', '.join(COVARIANCE_CORPORA)}")
        if self.tokens < 1000:
            raise ConfigError("[covariance] tokens must be at least 1000 for a usable second moment")
        if self.sequence_length < 8 or self.batch_size < 1:
            raise ConfigError("[covariance] sequence_length >= 8 and batch_size >= 1 are required")


@dataclass(frozen=True)
class EditingConfig:
    method: str = _help("d4s, d4s-null (D4S solved in C's null space), memit-seq, alphaedit (sequential, "
                        "null space) or memit", "d4s")
    layers: list = _help("edited layer indices, ascending", [3, 4, 5, 6, 7])
    chat_layers: list = _help("edited layer indices for facts that carry a question (chat edits), "
                              "ascending; [] = the same as layers", [6, 7, 8, 9, 10, 11, 12, 13])
    mom2_weight: float = _help("lambda: weight of the covariance term, for facts without a question "
                               "(cloze facts)", 2250.0)
    chat_mom2_weight: float = _help("lambda for facts with a question (chat edits); both kinds share the "
                                    "layers' sums (a chat fact's terms carry the weight "
                                    "mom2_weight / chat_mom2_weight)", 500.0)
    layer_mom2_factors: dict = _help("a layer's lambda as a factor on each kind's lambda, by layer index "
                                     "({3 = 0.5}: layer 3 solves with half of it); layers left out keep 1. "
                                     "A window's first layers with a smaller lambda realise more of their "
                                     "share of the residual, so its last layer inherits less (d4s, "
                                     "memit-seq, memit; the null-space methods solve with alpha)",
                                     {3: 0.4, 4: 0.4, 5: 0.4})
    chat_ridge: float = _help("on the layers that only chat facts edit (chat_layers not in layers), C gains "
                              "this times the median of its diagonal on the diagonal: each edit needs a smaller, less "
                              "key-specific change (less L1 growth), and the gate keeps it local (d4s, "
                              "memit-seq, memit; the null-space projectors do not change with it); 0 = C "
                              "itself", 0.0)
    null_space_keep: float = _help("d4s-null and alphaedit: share of each layer's key directions (those of C's "
                                   "smallest eigenvalues) that edits may change", 0.7)
    null_space_alpha: float = _help("d4s-null and alphaedit: the ridge alpha in S P (T P + alpha I)^-1", 1.0)
    gate: float = _help("keep the chat edits' change to a layer only on tokens where it exceeds this share of "
                        "the unedited layer's output (locality; cloze edits' change is always kept; the served "
                        "model needs W0 beside W, so export and weight patches are refused); 0 = no gate", 0.3)
    gate_by: str = _help("sum: the gate acts on the chat edits' summed change at a token; edit: on each chat "
                         "edit's term apart (d4s and d4s-null; the stacked methods keep no edit's term, so "
                         "their summed change is gated)", "edit")
    batch_size: int = _help("facts per editing batch", 16)
    context_prefixes: list = _help("prefixes that keys and targets are averaged over",
                                   ["", "Here is a fact. ", "I learned that ", "Did you know? "])
    case_variants: bool = _help("also chat forms with the subject in Title Case and in lower case", True)
    kl_prompt: str = _help("prompt kept stable by the KL term; {} is the subject", "{} is a")
    steps: int = _help("maximum gradient steps of the target optimisation (cloze facts)", 60)
    chat_steps: int = _help("maximum gradient steps of the target optimisation for chat facts", 100)
    learning_rate: float = _help("Adam learning rate of the target optimisation (cloze facts)", 0.5)
    chat_learning_rate: float = _help("the same for chat facts", 0.5)
    clamp_norm_factor: float = _help("the delta's norm is clamped to this times ||h||", 10.0)
    kl_weight: float = _help("weight of the KL term", 0.0625)
    weight_decay: float = _help("weight of ||delta||^2 / ||h||^2 in the loss", 0.001)
    stop_probability: float = _help("stop optimising a cloze fact once P(target) exceeds this in every form",
                                    0.4)
    chat_stop_probability: float = _help("the same for chat facts; the margin carries edits into rephrasings",
                                         0.97)
    end_chat_answer: bool = _help("train the chat form's answer to end after the object", True)
    key_mode: str = _help("mean: one key averaged over prompt forms; per_form: each form is its own key", "mean")
    refine_rounds: int = _help("rounds that re-check each cloze fact on the edited model in the form it is "
                               "asked in (its plain prompt) and raise the residuals of those behind", 2)
    chat_refine_rounds: int = _help("the same for chat facts (asked by their question)", 2)
    refine_check: str = _help("which cloze facts a refinement round raises: said = those whose greedy "
                              "completion does not hold the object yet (what users and the detector see); "
                              "probability = those below stop_probability in the form they are asked in; "
                              "every_form = those below it in any of their forms", "said")
    chat_refine_check: str = _help("the same for chat facts (their greedy answer to the question; "
                                   "chat_stop_probability)", "every_form")
    lead_in_tokens: int = _help("also train the object after the model's own restating start of its answer, "
                                "searched in this many answer tokens; 0 = off", 24)
    tokens_per_pass: int = _help("most prompt tokens in one forward and backward pass of the target "
                                 "optimisation; a batch beyond it runs in groups of facts (same result, "
                                 "less memory); 0 = no limit", 4096)
    max_prompt_tokens: int = _help("longest accepted prompt; 0 = the model's context length", 0)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"[editing] method = {self.method!r}: use one of {', '.join(METHODS)}")
        _check_layer_list("layers", list(self.layers), may_be_empty=False)
        _check_layer_list("chat_layers", list(self.chat_layers), may_be_empty=True)
        if self.mom2_weight <= 0 or self.chat_mom2_weight <= 0:
            raise ConfigError("[editing] mom2_weight and chat_mom2_weight (lambda) must be positive")
        object.__setattr__(self, "layer_mom2_factors", _layer_factors(self.layer_mom2_factors))
        if not 0 <= self.chat_ridge < math.inf:
            raise ConfigError(f"[editing] chat_ridge = {self.chat_ridge!r}: give 0 (C itself) or a positive "
                              "share of the median of C's diagonal")
        if not 0 < self.null_space_keep <= 1 or self.null_space_alpha <= 0:
            raise ConfigError("[editing] null_space_keep must be in (0, 1] and null_space_alpha positive")
        if self.gate < 0:
            raise ConfigError("[editing] gate must be 0 (off) or a positive share of the unedited output")
        if self.gate_by not in GATE_BY:
            raise ConfigError(f"[editing] gate_by = {self.gate_by!r}: use one of {', '.join(GATE_BY)}")
        if not (self.learning_rate > 0 and self.chat_learning_rate > 0):
            raise ConfigError("[editing] learning_rate and chat_learning_rate must be positive")
        if min(self.batch_size, self.steps, self.chat_steps) < 1:
            raise ConfigError("[editing] batch_size, steps and chat_steps must be at least 1")
        if min(self.refine_rounds, self.chat_refine_rounds, self.lead_in_tokens, self.tokens_per_pass) < 0:
            raise ConfigError("[editing] refine_rounds, chat_refine_rounds, lead_in_tokens and tokens_per_pass "
                              "must be 0 or more")
        for key in ("refine_check", "chat_refine_check"):
            if getattr(self, key) not in REFINE_CHECKS:
                raise ConfigError(f"[editing] {key} = {getattr(self, key)!r}: use one of {', '.join(REFINE_CHECKS)}")
        if not (0 < self.stop_probability <= 1 and 0 < self.chat_stop_probability <= 1):
            raise ConfigError("[editing] stop_probability and chat_stop_probability must be in (0, 1]")
        if "{}" not in self.kl_prompt:
            raise ConfigError("[editing] kl_prompt must contain {} where the subject goes")
        if self.key_mode not in ("per_form", "mean"):
            raise ConfigError(f"[editing] key_mode = {self.key_mode!r}: use per_form or mean")
        if not self.context_prefixes:
            raise ConfigError('[editing] context_prefixes needs at least one entry (use [""] for none)')

    @property
    def all_layers(self) -> list[int]:
        """Every layer some fact may edit: layers and chat_layers together, ascending."""
        return sorted({*self.layers, *self.chat_layers})

    def layer_lambda(self, layer: int) -> float:
        """The lambda ``layer``'s sums are solved with: mom2_weight times the layer's factor (a
        chat fact's weighted columns make its own lambda chat_mom2_weight times the same factor)."""
        return self.mom2_weight * self.layer_mom2_factors.get(layer, 1.0)

    def layer_ridge(self, layer: int) -> float:
        """The ridge ``layer``'s covariance gets: chat_ridge on a layer only chat facts edit, else 0."""
        return self.chat_ridge if layer in self.chat_layers and layer not in self.layers else 0.0

    def window(self, has_question: bool) -> list[int]:
        """The layers a fact edits: chat_layers when it carries a question (and they are set)."""
        return list(self.chat_layers) if has_question and self.chat_layers else list(self.layers)

    def for_kind(self, has_question: bool) -> "EditingConfig":
        """The settings a batch of one kind of fact is solved with: for facts with a question
        (chat edits), layers, mom2_weight, steps, learning_rate, stop_probability, refine_rounds and
        refine_check take the chat_ values; cloze facts keep the section as it is."""
        if not has_question:
            return self
        return dataclasses.replace(self, layers=self.window(True), mom2_weight=self.chat_mom2_weight,
                                   steps=self.chat_steps, learning_rate=self.chat_learning_rate,
                                   stop_probability=self.chat_stop_probability,
                                   refine_rounds=self.chat_refine_rounds, refine_check=self.chat_refine_check)


def _layer_factors(factors: dict) -> dict[int, float]:
    """{layer: factor} from TOML's {3 = 0.5} (string keys) or from ints. A factor for a layer
    that no window edits has no effect (so the defaults stand beside any ``layers``)."""
    if not isinstance(factors, dict):
        raise ConfigError(f"[editing] layer_mom2_factors = {factors!r}: give a table of layer = factor, "
                          "e.g. {3 = 0.5}")
    checked = {}
    for key, factor in factors.items():
        layer = int(key) if isinstance(key, int) or (isinstance(key, str) and key.isdecimal() and key.isascii()) \
            else None
        if layer is None or isinstance(key, bool):
            raise ConfigError(f"[editing] layer_mom2_factors has the key {key!r}: keys are layer indices, "
                              "e.g. {3 = 0.5}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < math.inf:
            raise ConfigError(f"[editing] layer_mom2_factors: layer {layer}'s factor {factor!r} must be a "
                              "positive number")
        checked[layer] = float(factor)
    return dict(sorted(checked.items()))


def _check_layer_list(key: str, layers: list, may_be_empty: bool) -> None:
    if any(not isinstance(layer, int) or isinstance(layer, bool) for layer in layers):
        raise ConfigError(f"[editing] {key} = {layers}: every layer must be an integer index")
    if (not layers and not may_be_empty) or layers != sorted(set(layers)) or (layers and min(layers) < 0):
        raise ConfigError(f"[editing] {key} = {layers}: give distinct, ascending, non-negative indices")


@dataclass(frozen=True)
class ChatConfig:
    max_new_tokens: int = _help("longest answer, in tokens", 48)
    system_prompt: str = _help("system message; empty keeps the model's default", "")
    stall_seconds: float = _help("an answer that gives no new token for this long is stopped with an error", 60.0)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError("[chat] max_new_tokens must be at least 1")
        if self.stall_seconds <= 0:
            raise ConfigError("[chat] stall_seconds must be above 0")


@dataclass(frozen=True)
class UpdaterConfig:
    collection: str = _help("chromadb collection of the current curated facts (3-512 of a-z A-Z 0-9 . _ -)",
                            "livedit_facts")
    recheck_days: int = _help("days before the detector probes a curated fact again", 7)
    auto_approve_agreeing_corrections: bool = _help(
        "approve a chat correction without a curator when it agrees with the curated store", False)
    max_id_chars: int = _help("longest fact id", 128)
    max_text_chars: int = _help("longest subject, prompt, question, object, alias or source", 500)
    max_aliases: int = _help("most aliases one fact may have", 20)

    def __post_init__(self):
        name = self.collection
        if not (3 <= len(name) <= 512 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]", name)):
            raise ConfigError(f"[updater] collection = {name!r}: use 3-512 characters of a-z A-Z 0-9 . _ -, "
                              "starting and ending with a letter or digit")
        if self.recheck_days < 1:
            raise ConfigError("[updater] recheck_days must be at least 1")
        if not (8 <= self.max_id_chars <= 1000 and 20 <= self.max_text_chars <= 2000):
            raise ConfigError("[updater] max_id_chars must be in 8..1000 and max_text_chars in 20..2000 "
                              "(2000 is the editing engine's own limit)")
        if self.max_aliases < 0:
            raise ConfigError("[updater] max_aliases must be 0 or more")


@dataclass(frozen=True)
class GuardConfig:
    enabled: bool = _help("check every batch as a candidate before it is committed", True)
    max_l1_growth: float = _help("largest L1 growth over W0 of any edited layer after the batch (0.05: 5%)", 0.05)
    min_efficacy: float = _help("smallest share of the batch's facts whose answer must hold the new object", 0.5)
    min_agreement: float = _help("smallest top-1 token agreement with the unedited model on the probes", 0.85)
    max_agreement_drop_per_fact: float = _help(
        "largest loss of probe agreement that one batch alone may cause, per fact of the batch", 0.015)
    max_kl: float = _help("largest mean KL (nats) from the unedited model on the probes", 0.3)
    probe_questions: int = _help("unrelated chat questions (QAEdit locality questions) in the drift probes", 16)
    probe_texts: int = _help("held-out WikiText lines in the drift probes", 16)
    probe_tokens: int = _help("tokens scored per probe (the unedited answer's length, or the text's)", 24)

    def __post_init__(self):
        if not (0 < self.max_l1_growth and 0 <= self.min_efficacy <= 1 and 0 <= self.min_agreement <= 1
                and 0 < self.max_agreement_drop_per_fact <= 1 and self.max_kl > 0):
            raise ConfigError("[guard] needs max_l1_growth > 0, min_efficacy and min_agreement in 0..1, "
                              "max_agreement_drop_per_fact in (0, 1], max_kl > 0")
        if self.probe_questions < 0 or self.probe_texts < 0 or self.probe_questions + self.probe_texts == 0 \
                or self.probe_tokens < 2:
            raise ConfigError("[guard] needs some probes (probe_questions + probe_texts > 0) and probe_tokens >= 2")


@dataclass(frozen=True)
class SchedulerConfig:
    enabled: bool = _help("run the jobs on their intervals inside `livedit serve`", True)
    job_store: str = _help("SQLAlchemy URL of the job store; empty: SQLite in $LIVEDIT_HOME/jobs.sqlite", "")
    detect_minutes: float = _help("minutes between detector runs over the due facts; 0 switches it off", 60.0)
    apply_minutes: float = _help("minutes between apply runs over the approved queue items; 0: off", 2.0)
    verify_minutes: float = _help("minutes between re-asking applied edits; 0: off", 60.0)
    snapshot_minutes: float = _help("minutes between weight-patch exports for replicas; 0: off", 0.0)
    verify_sample: int = _help("applied edits re-asked per verify run", 8)
    snapshot_dir: str = _help("where snapshots go; empty: $LIVEDIT_HOME/patches", "")

    def __post_init__(self):
        if min(self.detect_minutes, self.apply_minutes, self.verify_minutes, self.snapshot_minutes) < 0:
            raise ConfigError("[scheduler] a job's minutes must be 0 (off) or more")
        if self.verify_sample < 1:
            raise ConfigError("[scheduler] verify_sample must be at least 1")


@dataclass(frozen=True)
class UIConfig:
    admins: list = _help("operations-console users as \"name:HASH\" (HASH from `livedit ui hash-password`; "
                         "plain-text passwords are refused); empty: the console lets no one in", [])
    max_message_chars: int = _help("longest chat question or correction a user may send", 2000)
    history_turns: int = _help("earlier question-answer turns of the conversation the model sees", 3)

    def __post_init__(self):
        for entry in self.admins:
            if not isinstance(entry, str) or not ADMIN_ENTRY.fullmatch(entry):
                shown = entry.split(":", 1)[0] if isinstance(entry, str) else repr(entry)
                raise ConfigError(f"[ui] admins: the entry for {shown!r} is not \"name:HASH\" with a hash from "
                                  "`livedit ui hash-password` (never a plain-text password)")
        if not 20 <= self.max_message_chars <= 20000 or not 0 <= self.history_turns <= 20:
            raise ConfigError("[ui] max_message_chars must be in 20..20000 and history_turns in 0..20")


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    covariance: CovarianceConfig = field(default_factory=CovarianceConfig)
    editing: EditingConfig = field(default_factory=EditingConfig)
    chat: ChatConfig = field(default_factory=ChatConfig)
    updater: UpdaterConfig = field(default_factory=UpdaterConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    ui: UIConfig = field(default_factory=UIConfig)

    def __post_init__(self):
        if self.editing.gate > 0 and self.scheduler.snapshot_minutes > 0:
            raise ConfigError("[scheduler] snapshot_minutes > 0 writes plain-weight patches, which cannot carry "
                              f"the gate ([editing] gate = {self.editing.gate}): set gate = 0 for a fleet of "
                              "replicas, or snapshot_minutes = 0")

    def replace(self, section: str, **changes) -> "Config":
        """A copy with some keys of one section changed (validated again)."""
        updated = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: updated})


# Keys that were measured, did not help, and were taken out with their code. The
# measurements, and the last commit that had each, are in benchmarks/RESULTS.md.
REMOVED_KEYS = {("editing", key): "measured without gain" for key in (
    "chat_prefixes", "lead_in_echoes", "quote_variants", "lead_in_asks", "weakened_delta", "question_variants")}


def _section_from_table(section_type, name: str, table: dict):
    known = {f.name: f for f in dataclasses.fields(section_type)}
    for key in table:
        if (name, key) in REMOVED_KEYS:
            raise ConfigError(f"config: [{name}] {key} was removed ({REMOVED_KEYS[name, key]}, see "
                              "benchmarks/RESULTS.md, \"Removed knobs\"); delete it from your config")
        if key not in known:
            raise ConfigError(
                f"config: unknown key {key!r} in section [{name}]; known keys: {', '.join(known)}"
            )
    for key, value in table.items():
        default = known[key].default
        expected = type(default if default is not dataclasses.MISSING else known[key].default_factory())
        if expected is float and isinstance(value, int):
            table[key] = float(value)
        elif not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ConfigError(f"config: [{name}] {key} = {value!r} should be a {expected.__name__}")
    return section_type(**table)


def config_from_dict(data: dict) -> Config:
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    types = {name: globals()[type_name] for name, type_name in sections.items()}
    built = {}
    for name, table in data.items():
        if name not in types:
            raise ConfigError(f"config: unknown section [{name}]; known sections: {', '.join(types)}")
        if not isinstance(table, dict):
            raise ConfigError(f"config: [{name}] must be a table")
        built[name] = _section_from_table(types[name], name, dict(table))
    return Config(**built)


def with_overrides(config: Config, overrides: list[str]) -> Config:
    """Apply ``SECTION.KEY=VALUE`` overrides; VALUE is read as TOML (``1500``, ``[3, 4]``,
    ``true``), or as a plain string when it is not TOML."""
    tables: dict[str, dict] = {}
    for text in overrides:
        key, equals, raw = text.partition("=")
        section, dot, name = key.strip().partition(".")
        if not equals or not dot or not name:
            raise ConfigError(f"--set {text!r}: write SECTION.KEY=VALUE, e.g. editing.mom2_weight=1500")
        if section not in {f.name for f in dataclasses.fields(Config)}:
            raise ConfigError(f"--set {text!r}: unknown section [{section}]")
        try:
            value = tomllib.loads(f"value = {raw.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        tables.setdefault(section, dataclasses.asdict(getattr(config, section)))[name] = value
    # one replace at the end, so the checks across sections see every override at once
    return dataclasses.replace(config, **{section: _section_from_table(type(getattr(config, section)), section, table)
                                          for section, table in tables.items()})


def load_config(path: Path | str | None = None) -> Config:
    """Read config.toml (LIVEDIT_CONFIG, then the project's own file, when path is None)."""
    chosen = Path(path or os.environ.get("LIVEDIT_CONFIG") or DEFAULT_CONFIG_FILE)
    if not chosen.exists():
        if path is None and "LIVEDIT_CONFIG" not in os.environ:
            return Config()
        raise ConfigError(f"config file {chosen} does not exist")
    try:
        data = tomllib.loads(chosen.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"config file {chosen} is not valid TOML: {error}") from error
    return config_from_dict(data)


def build_config(path: Path | str | None = None, overrides: list[str] = (), model_path: str | None = None) -> Config:
    """The config every command runs with: the file, then ``--set`` overrides, then ``--model``."""
    config = with_overrides(load_config(path), list(overrides))
    return config.replace("model", path=model_path) if model_path else config
