"""Token rows for keys and targets: where each fact's subject ends, and what follows.

A fact is seen through several prompt forms: its cloze prompt after each context
prefix, and, when it has a natural question, the chat-template form of that question.
Keys and residuals are averaged over these forms; the target optimisation trains the
new object after each of them.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from assistant.model.chat import chat_prompt, encode_chat_prompt
from assistant.errors import InvalidFact
from assistant.facts import Fact


@dataclass(frozen=True)
class Row:
    fact: int              # index of the fact in its batch
    ids: list[int]         # prompt tokens (+ target tokens when training)
    subject_pos: int       # index of the subject's last token
    target_len: int = 0    # the last target_len tokens of ids are the target
    echoes: tuple[int, ...] = ()   # later indices where the subject's last token recurs (in a lead-in)
    delta_scale: float = 1.0       # the share of the fact's delta this row is trained with


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
        chosen = keep[self.fact].nonzero().squeeze(1)
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
    """How a fact is put to the model: [editing]'s prompt settings and the chat's system prompt."""
    context_prefixes: tuple[str, ...] = ("",)   # one cloze form after each
    chat_prefixes: tuple[str, ...] = ("",)      # one chat form of the question after each
    case_variants: bool = False                 # chat forms with the subject in Title Case and lower case too
    system_prompt: str = ""
    end_chat_answer: bool = False               # the chat answer is the object, then end of turn
    lead_in_tokens: int = 0                     # room kept in the chat form for a lead-in
    lead_in_echoes: bool = False                # mark where a lead-in repeats the subject
    question_variants: int = 0                  # chat forms of the question with some other words left out
    weakened_delta: float = 0.0                 # chat rows again with this share of the delta; 0 = off
    quote_variants: bool = False                # chat forms with the subject in double quotes too

    @classmethod
    def from_config(cls, config) -> "PromptSettings":
        cfg = config.editing
        return cls(tuple(cfg.context_prefixes), tuple(cfg.chat_prefixes), cfg.case_variants,
                   config.chat.system_prompt, cfg.end_chat_answer, cfg.lead_in_tokens, cfg.lead_in_echoes,
                   cfg.question_variants, cfg.weakened_delta, cfg.quote_variants)


def title_case(text: str) -> str:
    return " ".join(word[:1].upper() + word[1:] for word in text.split(" "))


def subject_casings(subject: str) -> list[str]:
    """The subject in Title Case and in lower case, where they differ from it (and keep
    its length, so its place in the question stays the same)."""
    return [variant for variant in dict.fromkeys([title_case(subject), subject.lower()])
            if variant != subject and len(variant) == len(subject)]


def quoted_subjects(question: str, subject_at: int, subject: str, titled: bool) -> list[tuple[str, int]]:
    """The question with the subject (as written and, if ``titled``, in Title Case) in double
    quotes, as (question, subject start char): a title is often asked about in quotes
    ("who wrote you must have been a beautiful baby?" and 'Who is the author of the song "You
    Must Have Been a Beautiful Baby"?'). None where the question already quotes it."""
    after = subject_at + len(subject)
    if subject.startswith('"') or question[subject_at - 1:subject_at] == '"' or question[after:after + 1] == '"':
        return []
    spellings = [subject, *(casing for casing in subject_casings(subject) if titled and casing == title_case(subject))]
    return [(f'{question[:subject_at]}"{spelling}"{question[after:]}', subject_at + 1) for spelling in spellings]


def question_variants(question: str, subject_at: int, subject_length: int, count: int,
                      drop: float = 0.3) -> list[tuple[str, int]]:
    """Up to ``count`` rewordings of a question, each with some words other than the
    subject's, the first and the last left out (the same ones for the same question), as (question,
    subject start char). They train the edit in question contexts other than the one
    given, as a rephrased question brings other words around the subject."""
    words, starts, position = question.split(" "), [], 0
    for word in words:
        starts.append(position)
        position += len(word) + 1
    subject_end = subject_at + subject_length
    optional = [i for i, (word, start) in enumerate(zip(words, starts))
                if 0 < i < len(words) - 1 and word and not (start < subject_end and subject_at < start + len(word) + 1)]
    chooser, seen, variants = random.Random(question), {question}, []
    for _ in range(8 * count):
        if len(variants) == count or len(optional) < 2:
            break
        dropped = {i for i in optional if chooser.random() < drop}
        if not dropped or len(dropped) > len(optional) // 2:
            continue
        kept = [i for i in range(len(words)) if i not in dropped]
        text = " ".join(words[i] for i in kept)
        at = subject_at - sum(len(words[i]) + 1 for i in dropped if starts[i] < subject_at)
        if text not in seen:
            seen.add(text)
            variants.append((text, at))
    return variants


def subject_spellings(tokenizer, subject: str) -> list[list[int]]:
    """The token ids of the subject as running text may hold it: as written and in its
    other casings, each after a space and at the start of a line."""
    spellings = [subject, *subject_casings(subject)]
    encoded = [tokenizer(text, add_special_tokens=False).input_ids
               for spelling in spellings for text in (" " + spelling, spelling)]
    return [list(ids) for ids in dict.fromkeys(map(tuple, encoded)) if ids]


def subject_echoes(tokens: list[int], spellings: list[list[int]]) -> list[int]:
    """Indices in ``tokens`` where one of the subject's spellings ends."""
    ends = {start + len(spelling) - 1 for spelling in spellings
            for start in range(len(tokens) - len(spelling) + 1) if tokens[start:start + len(spelling)] == spelling}
    return sorted(ends)


def prompt_forms(fact: Fact, tokenizer, settings: PromptSettings) -> list[tuple[str, int, bool]]:
    """(text, subject start char, is_chat) for each form of the fact's prompt: the cloze
    prompt after each context prefix and, when the fact has a question, the chat-template
    form of each chat prefix + the question (and of its subject's other casings, of the
    subject in quotes, and of its rewordings)."""
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
    if settings.quote_variants:
        questions += quoted_subjects(fact.question, at, fact.subject, titled=settings.case_variants)
    questions += question_variants(fact.question, at, len(fact.subject), settings.question_variants)
    for prefix in settings.chat_prefixes:
        for question, subject_at in questions:
            asked = prefix + question
            text = chat_prompt(tokenizer, asked, settings.system_prompt)
            forms.append((text, text.rindex(asked) + len(prefix) + subject_at, True))
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


def fact_rows(index: int, fact: Fact, tokenizer, settings: PromptSettings, with_targets: bool,
              lead_ins: list[list[int]] = ()) -> list[Row]:
    """One row per prompt form. With targets, one more per lead-in (tokens of the start of
    an answer): the first chat form, the lead-in, then the object as running text; with
    ``lead_in_echoes`` it records where the lead-in repeats the subject; with
    ``weakened_delta``, every chat and lead-in row once more, trained with that share of
    the delta."""
    rows = []
    for text, start, chat in prompt_forms(fact, tokenizer, settings):
        ids, subject_pos = encode_with_subject(tokenizer, text, start, start + len(fact.subject), chat)
        target = target_ids(tokenizer, fact, chat, settings.end_chat_answer) if with_targets else []
        rows.append(Row(index, ids + target, subject_pos, len(target)))
        if chat and with_targets and lead_ins:
            running = target_ids(tokenizer, fact, chat=False)
            spellings = subject_spellings(tokenizer, fact.subject) if settings.lead_in_echoes else []
            for lead_in in lead_ins:
                echoes = subject_echoes(list(lead_in), spellings) if spellings else []
                rows.append(Row(index, ids + list(lead_in) + running, subject_pos, len(running),
                                tuple(len(ids) + i for i in echoes)))
            lead_ins = ()
    if with_targets and settings.weakened_delta and fact.question:
        chat_rows = rows[len(settings.context_prefixes):]        # prompt_forms puts the cloze forms first
        rows += [dataclasses.replace(row, delta_scale=settings.weakened_delta) for row in chat_rows]
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
