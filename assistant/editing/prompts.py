"""Token rows for keys and targets: where each fact's subject ends, and what follows.

A fact is seen through several prompt forms: its cloze prompt after each context
prefix, and, when it has a natural question, the chat-template form of that question.
Keys and residuals are averaged over these forms; the target optimisation trains the
new object after each of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from assistant.model.chat import chat_prompt
from assistant.errors import InvalidFact
from assistant.facts import Fact


@dataclass(frozen=True)
class Row:
    fact: int              # index of the fact in its batch
    ids: list[int]         # prompt tokens (+ target tokens when training)
    subject_pos: int       # index of the subject's last token
    target_len: int = 0    # the last target_len tokens of ids are the target
    asked: bool = False    # the form the fact is asked in: its question, or else its plain cloze prompt


@dataclass
class RowBatch:
    input_ids: torch.Tensor       # (B, T), right-padded
    attention_mask: torch.Tensor  # (B, T)
    fact: torch.Tensor            # (B,) fact index per row
    subject_pos: torch.Tensor     # (B,)
    lengths: torch.Tensor         # (B,) unpadded lengths
    rows: list[Row]

    def only_facts(self, keep: torch.Tensor) -> "RowBatch":
        """The rows of the facts where ``keep`` (n_facts,) is True, trimmed to their width."""
        return self.only_rows(keep[self.fact])

    def only_rows(self, keep: torch.Tensor) -> "RowBatch":
        """The rows where ``keep`` (n_rows,) is True, trimmed to their width."""
        chosen = keep.nonzero().squeeze(1)
        width = int(self.lengths[chosen].max())
        return RowBatch(self.input_ids[chosen, :width], self.attention_mask[chosen, :width], self.fact[chosen],
                        self.subject_pos[chosen], self.lengths[chosen], [self.rows[i] for i in chosen.tolist()])


def _token_at(offsets: list[tuple[int, int]], char: int) -> int:
    for index, (start, end) in enumerate(offsets):
        if start <= char < end:
            return index
    for index in range(len(offsets) - 1, -1, -1):   # a char the tokenizer folded away
        if offsets[index][0] <= char:
            return index
    raise ValueError(char)


def encode_with_subject(tokenizer, text: str, subject_start: int, subject_end: int, chat: bool) -> tuple[list[int], int]:
    """The text's token ids and the index of the token holding the subject's last character."""
    special = not (chat and getattr(tokenizer, "chat_template", None))
    encoded = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    return list(encoded.input_ids), _token_at(encoded.offset_mapping, subject_end - 1)


@dataclass(frozen=True)
class PromptSettings:
    """How a fact is put to the model. The defaults are the plainest forms (for tests);
    the engine builds its settings from [editing] and the chat's system prompt."""
    context_prefixes: tuple[str, ...] = ("",)   # one cloze form after each
    case_variants: bool = False                 # chat forms with the subject in Title Case and lower case too
    system_prompt: str = ""
    end_chat_answer: bool = False               # the chat answer is the object, then end of turn
    lead_in_tokens: int = 0                     # room kept in the chat form for a lead-in

    @classmethod
    def from_editing(cls, editing, system_prompt: str) -> "PromptSettings":
        """The values of an [editing] section (EditingConfig) that prompts use."""
        return cls(tuple(editing.context_prefixes), editing.case_variants, system_prompt,
                   editing.end_chat_answer, editing.lead_in_tokens)


def title_case(text: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def subject_casings(subject: str) -> list[str]:
    """The subject in Title Case and in lower case, where they differ from it (and keep
    its length, so its place in the question stays the same)."""
    return [variant for variant in dict.fromkeys([title_case(subject), subject.lower()])
            if variant != subject and len(variant) == len(subject)]


def prompt_forms(fact: Fact, tokenizer, settings: PromptSettings) -> list[tuple[str, int, bool]]:
    """(text, subject start char, is_chat) for each form of the fact's prompt: the cloze
    prompt after each context prefix and, when the fact has a question, the chat-template
    form of the question (and of it with its subject's other casings)."""
    forms = []
    for prefix in settings.context_prefixes:
        text = prefix + fact.filled_prompt
        forms.append((text, len(prefix) + fact.prompt.index("{}"), False))
    if not fact.question:
        return forms
    if fact.subject not in fact.question:
        raise InvalidFact(f"fact {fact.id}: subject {fact.subject!r} does not occur in its question")
    at = fact.question.rindex(fact.subject)
    questions = [(fact.question, at)]
    casings = subject_casings(fact.subject) if settings.case_variants else []
    after = at + len(fact.subject)
    questions += [(fact.question[:at] + variant + fact.question[after:], at) for variant in casings]
    for question, subject_at in questions:
        text = chat_prompt(tokenizer, question, settings.system_prompt)
        forms.append((text, text.rindex(question) + subject_at, True))
    return forms


def target_ids(tokenizer, fact: Fact, chat: bool, end_chat_answer: bool = False) -> list[int]:
    """The new object's tokens; in chat form, optionally followed by the end-of-turn token,
    so the edited model answers with the object and stops instead of running on into
    a longer word ("EAGLE" -> "EAGLEE...")."""
    text = fact.target_new if chat else " " + fact.target_new
    ids = tokenizer(text, add_special_tokens=False).input_ids
    templated = bool(getattr(tokenizer, "chat_template", None))
    if chat and end_chat_answer and templated and tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    return ids


def asked_form(fact: Fact, forms: list[tuple[str, int, bool]]) -> int:
    """Which of the fact's forms it is asked in (as users and the updater's detector ask
    it): the first chat form when it has a question, else the unprefixed cloze prompt (or
    the first cloze form when no context prefix is empty)."""
    if fact.question:
        return next(i for i, (_, _, chat) in enumerate(forms) if chat)
    return next((i for i, (text, _, _) in enumerate(forms) if text == fact.filled_prompt), 0)


def fact_rows(index: int, fact: Fact, tokenizer, settings: PromptSettings, with_targets: bool,
              lead_ins: list[list[int]] = ()) -> list[Row]:
    """One row per prompt form. With targets, one more per lead-in (tokens of the start of
    an answer): the first chat form, the lead-in, then the object as running text."""
    rows = []
    forms = prompt_forms(fact, tokenizer, settings)
    asked = asked_form(fact, forms)
    for form, (text, start, chat) in enumerate(forms):
        ids, subject_pos = encode_with_subject(tokenizer, text, start, start + len(fact.subject), chat)
        target = target_ids(tokenizer, fact, chat, settings.end_chat_answer) if with_targets else []
        rows.append(Row(index, ids + target, subject_pos, len(target), form == asked))
        if chat and with_targets and lead_ins:
            running = target_ids(tokenizer, fact, chat=False)
            rows += [Row(index, ids + list(lead_in) + running, subject_pos, len(running)) for lead_in in lead_ins]
            lead_ins = ()
    return rows


def kl_row(index: int, fact: Fact, tokenizer, kl_prompt: str) -> Row:
    text = kl_prompt.replace("{}", fact.subject)
    start = kl_prompt.index("{}")
    ids, subject_pos = encode_with_subject(tokenizer, text, start, start + len(fact.subject), False)
    return Row(index, ids, subject_pos)


def collate(rows: list[Row], pad_id: int, device: torch.device) -> RowBatch:
    width = max(len(row.ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, :len(row.ids)] = torch.tensor(row.ids)
        mask[i, :len(row.ids)] = 1
    as_tensor = lambda values: torch.tensor(values, dtype=torch.long, device=device)  # noqa: E731
    return RowBatch(input_ids.to(device), mask.to(device), as_tensor([r.fact for r in rows]),
                    as_tensor([r.subject_pos for r in rows]), as_tensor([len(r.ids) for r in rows]), rows)


def check_lengths(facts: list[Fact], tokenizer, settings: PromptSettings, max_tokens: int) -> None:
    """Reject, naming the fact, any prompt form longer than the model's context (a chat
    form with room for a lead-in)."""
    for index, fact in enumerate(facts):
        room = [tokenizer.eos_token_id or 0] * settings.lead_in_tokens
        for row in fact_rows(index, fact, tokenizer, settings, True, [room]):
            if len(row.ids) > max_tokens:
                raise InvalidFact(
                    f"fact {fact.id}: a prompt form has {len(row.ids)} tokens; the model accepts {max_tokens}. "
                    "Shorten the prompt, question or target."
                )
