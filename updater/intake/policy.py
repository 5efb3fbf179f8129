"""How a chat correction relates to the curated store, and what may happen to it.

A correction is untrusted input. It only ever enters the edit queue, and:
- it *agrees* when the curated fact with the same subject and relation has the same
  object (after normalisation, or as one of its aliases): the store already says so,
  so it may be approved without a curator when ``[updater]
  auto_approve_agreeing_corrections`` is true;
- it *contradicts* when that fact has another object, and it is *unsupported* when no
  retrieved fact has the same subject and relation: both wait for a curator.

The anchor of a question is the retrieved fact that the question asks about: its subject
occurs in the question, and the question shares a relation word with it (or is a near
paraphrase of it).
"""

from __future__ import annotations

from dataclasses import dataclass

from updater.store.records import CuratedFact

AGREES, CONTRADICTS, UNSUPPORTED = "agrees", "contradicts", "unsupported"
NEAR_PARAPHRASE = 0.15      # cosine distance under which a question asks what the fact states
MAX_ANCHOR_DISTANCE = 0.6   # farther facts are never the anchor
MAX_PARTIAL_DISTANCE = 0.35  # a question naming only the subject's last word must be this close
STOPWORDS = frozenset("""
a an the of in on at to for from by with about as into and or but is are was were be been being am do does did
has have had what who whom whose which where when why how that this these those it its it's he she they them his
her their i you we my your our me us not no yes s
""".split())


@dataclass(frozen=True)
class RelatedFact:
    """A curated fact that retrieval found for a correction's question."""
    fact: CuratedFact
    distance: float             # cosine distance between the question and the fact's document


@dataclass(frozen=True)
class Verdict:
    kind: str                   # agrees | contradicts | unsupported
    reason: str                 # one sentence, kept in the queue item's history
    fact: CuratedFact | None    # the curated fact with the same subject and relation


def normalize(text: str) -> str:
    """Lower case, no accents, punctuation, articles or extra spaces (assistant.evaluation.metrics' rule)."""
    from assistant.model.answers import normalize_answer
    return normalize_answer(text)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)]
    return word


def content_words(text: str, leave_out: str = "") -> set[str]:
    """Stemmed words of the text that carry meaning, without those of ``leave_out`` (the subject)."""
    dropped = set(normalize(leave_out).split())
    return {_stem(w) for w in normalize(text).replace("{}", " ").split() if w not in STOPWORDS and w not in dropped}


def subject_match(subject: str, text: str) -> str | None:
    """"full" when the subject occurs in the text, "partial" when only its last word does, else None."""
    words, haystack = normalize(subject).split(), f" {normalize(text)} "
    if not words:
        return None
    if f" {' '.join(words)} " in haystack:
        return "full"
    if len(words) > 1 and len(words[-1]) >= 4 and f" {words[-1]} " in haystack:
        return "partial"
    return None


def same_subject(a: str, b: str) -> bool:
    """Equal after normalisation, or one is the other's trailing words ("Bach", "Johann Sebastian Bach")."""
    x, y = normalize(a).split(), normalize(b).split()
    if not x or not y or x == y:
        return bool(x) and x == y
    shorter, longer = sorted((x, y), key=len)
    return len(" ".join(shorter)) >= 4 and longer[len(longer) - len(shorter):] == shorter


def shares_relation(question: str, fact: CuratedFact) -> bool:
    """Whether the question and the fact's prompt or question share a word besides the subject's."""
    fact_words = content_words(f"{fact.prompt} {fact.question or ''}", fact.subject)
    return bool(content_words(question, fact.subject) & fact_words)


def pick_anchor(question: str, related: list[RelatedFact]) -> RelatedFact | None:
    """The nearest retrieved fact that the question asks about, if any."""
    for hit in sorted(related, key=lambda r: r.distance):
        match = subject_match(hit.fact.subject, question)
        if match is None or hit.distance > MAX_ANCHOR_DISTANCE:
            continue
        if match == "partial" and hit.distance > MAX_PARTIAL_DISTANCE:
            continue
        if hit.distance <= NEAR_PARAPHRASE or shares_relation(question, hit.fact):
            return hit
    return None


def same_template(a: str, b: str) -> bool:
    return normalize(a.replace("{}", " SUBJECT ")) == normalize(b.replace("{}", " SUBJECT "))


def accepted_objects(fact: CuratedFact) -> set[str]:
    return {normalize(name) for name in (fact.object, *fact.aliases) if normalize(name)}


def judge(subject: str, template: str, new_object: str, related: list[RelatedFact],
          anchor_id: str | None) -> Verdict:
    """Whether the store agrees with, contradicts or says nothing about subject/template -> new_object."""
    matching = [r.fact for r in sorted(related, key=lambda r: r.distance)
                if same_subject(subject, r.fact.subject)
                and (r.fact.id == anchor_id or same_template(template, r.fact.prompt))]
    if not matching:
        return Verdict(UNSUPPORTED, "no curated fact has this subject and relation; a curator must review it", None)
    fact = matching[0]
    label = f"curated fact {fact.id!r} v{fact.version}"
    if normalize(new_object) in accepted_objects(fact):
        return Verdict(AGREES, f"agrees with {label} ({fact.object!r})", fact)
    return Verdict(CONTRADICTS, f"contradicts {label}, which says {fact.object!r}; a curator must review it", fact)


def auto_approves(verdict: Verdict, enabled: bool) -> bool:
    """Only a correction that agrees with the store, and only when the setting allows it."""
    return enabled and verdict.kind == AGREES
