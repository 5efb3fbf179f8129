"""The correction intake: a user's correction in chat becomes a candidate fact, shown for
confirmation, and only then a queue item (origin "chat").

    question, answer, correction
      -> retrieve related curated facts (langchain-chroma over the store's collection)
      -> pick the anchor (the fact that the question asks about)
      -> extract subject, cloze prompt and new object: the model through a structured
         output parser, falling back to the deterministic extraction
      -> validate with the store's rules, judge against the store    = Candidate (nothing written)
    confirm(candidate, who) -> queue item (proposed; approved at once only when it agrees
                               with the store and [updater] auto_approve_agreeing_corrections)

A correction never reaches the model's weights by itself: it only enters the queue, and
leaves "proposed" through a curator, or through the policy in updater.intake.policy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from langchain_core.exceptions import OutputParserException
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough

from assistant.errors import InvalidFact, ModelNotReady
from updater.intake.fallback import fallback_fields
from updater.intake.policy import (AGREES, MAX_ANCHOR_DISTANCE, RelatedFact, Verdict, auto_approves, judge, normalize,
                                   pick_anchor)
from updater.queue import EditQueue, QueueItem
from updater.store.records import clean_text, content_id
from updater.store.knowledge import KnowledgeStore

log = logging.getLogger(__name__)

MODEL_PATH, FALLBACK_PATH = "model", "fallback"
POLICY_WHO = "intake-policy"
ANSWER_LIMIT = 2000
# What falls back to the deterministic extraction: the model's output does not parse, is not
# grounded in the user's text or breaks the store's rules, or the model is not there. Any other
# exception (a TypeError, a RuntimeError) is a bug and surfaces.
MODEL_ERRORS = (OutputParserException, InvalidFact, ModelNotReady)


@dataclass(frozen=True)
class Candidate:
    """A proposed correction, validated but not stored; confirm() queues it."""
    question: str
    answer: str                       # what the model said
    correction: str                   # what the user wrote
    subject: str
    prompt: str                       # cloze template with one "{}" for the subject
    new_object: str
    path: str                         # "model" or "fallback": which extraction produced it
    fallback_reason: str | None       # why the model's extraction was not used
    subject_from: str                 # "anchor:<fact id>", "question", "model" or "user"
    related: tuple[RelatedFact, ...]  # retrieved curated facts, nearest first
    anchor_id: str | None
    verdict: Verdict
    auto_approve: bool                # confirm() approves it at once

    @property
    def filled_prompt(self) -> str:
        return self.prompt.replace("{}", self.subject)

    def describe(self) -> list[str]:
        """Lines to show before asking for confirmation."""
        lines = [f"subject    {self.subject!r}", f"prompt     {self.filled_prompt!r}",
                 f"new object {self.new_object!r}", f"question   {self.question!r}",
                 f"extracted  by the {self.path}" + (f" ({_short(self.fallback_reason, 120)})" if self.fallback_reason
                                                    else ""),
                 f"store      {self.verdict.kind}: {self.verdict.reason}"]
        near = [r for r in self.related if r.distance <= MAX_ANCHOR_DISTANCE][:3]
        lines += [f"related    {r.fact.id} ({r.distance:.3f}): {r.fact.filled_prompt!r} -> {r.fact.object!r}"
                  for r in near]
        lines.append("on confirm " + ("queued and approved (it agrees with the store)" if self.auto_approve
                                      else "queued for a curator's review (state proposed)"))
        return lines


class CorrectionIntake:
    """Turns chat corrections into candidates, and confirmed candidates into queue items."""

    def __init__(self, store: KnowledgeStore, queue: EditQueue, llm=None, embeddings=None, k: int = 4):
        self.store, self.queue, self.llm, self.k = store, queue, llm, k
        self._embeddings = embeddings
        self._retriever = None

    @property
    def retriever(self):
        """The langchain-chroma retriever over the store's collection (opened on first use)."""
        if self._retriever is None:
            from updater.intake.retrieval import fact_retriever
            self._retriever = fact_retriever(self.store, self._embeddings, self.k)
        return self._retriever

    # -- proposing -------------------------------------------------------------------------
    def propose_correction(self, question: str, answer: str, correction: str, use_model: bool = True) -> Candidate:
        """The candidate fact for a correction; nothing is written. InvalidFact says what is wrong."""
        inputs = self._clean_inputs(question, answer, correction)
        result = self.pipeline(use_model and self.llm is not None).invoke(inputs)
        fields = result["fields"]
        anchor = result["anchor"]
        return self._candidate(inputs, fields, tuple(result["related"]), anchor.fact.id if anchor else None)

    def pipeline(self, use_model: bool = True) -> Runnable:
        """{question, answer, correction} -> {..., related, anchor, fields} as LangChain runnables."""
        retrieve = RunnableLambda(lambda x: x["question"]) | self.retriever | RunnableLambda(self._related_facts)
        return (RunnablePassthrough.assign(related=retrieve)
                | RunnablePassthrough.assign(anchor=RunnableLambda(lambda x: pick_anchor(x["question"], x["related"])))
                | RunnablePassthrough.assign(fields=self._extraction(use_model)))

    def _extraction(self, use_model: bool) -> Runnable:
        fallback = RunnableLambda(self._fallback)
        if not use_model:
            return fallback
        from updater.intake.model import extraction_chain

        model = extraction_chain(self.llm) | RunnableLambda(self._accept_model_fields)
        return model.with_fallbacks([fallback], exceptions_to_handle=MODEL_ERRORS, exception_key="model_error")

    def _accept_model_fields(self, fields: dict) -> dict:
        self._validate(fields, "model extraction")      # store rules; raising here falls back
        return fields | {"path": MODEL_PATH, "fallback_reason": None}

    @staticmethod
    def _fallback(inputs: dict) -> dict:
        error = inputs.get("model_error")
        reason = f"model extraction failed: {_short(error)}" if error is not None else "model extraction off"
        if error is not None:
            log.info("correction intake: %s; using the deterministic extraction", reason)
        fields = fallback_fields(inputs["question"], inputs["answer"], inputs["correction"], inputs["anchor"])
        return fields | {"path": FALLBACK_PATH, "fallback_reason": reason}

    def _related_facts(self, documents) -> list[RelatedFact]:
        """Documents -> current curated facts (SQLite is the authority), nearest first."""
        related = []
        for doc in documents:
            fact = self.store.find(doc.metadata.get("id") or doc.id)
            if fact is not None:
                related.append(RelatedFact(fact, float(doc.metadata["distance"])))
        return sorted(related, key=lambda r: r.distance)

    def _candidate(self, inputs: dict, fields: dict, related: tuple[RelatedFact, ...],
                   anchor_id: str | None) -> Candidate:
        fact = self._validate(fields, "correction", inputs["question"])
        if normalize(fact.object) == normalize(inputs["answer"]):
            raise InvalidFact(f"correction: the new answer {fact.object!r} is what the model said already; "
                              "nothing to correct")
        verdict = judge(fact.subject, fact.prompt, fact.object, list(related), anchor_id)
        return Candidate(question=inputs["question"], answer=inputs["answer"], correction=inputs["correction"],
                         subject=fact.subject, prompt=fact.prompt, new_object=fact.object, path=fields["path"],
                         fallback_reason=fields["fallback_reason"], subject_from=fields["subject_from"],
                         related=related, anchor_id=anchor_id, verdict=verdict,
                         auto_approve=auto_approves(verdict, self.store.config.auto_approve_agreeing_corrections))

    def revise(self, candidate: Candidate, subject: str | None = None, prompt: str | None = None,
               new_object: str | None = None) -> Candidate:
        """The candidate with fields the user changed, validated and judged again; nothing is written."""
        changed = {name: value for name, value in (("subject", subject), ("prompt", prompt),
                                                    ("new_object", new_object)) if value is not None}
        if not changed:
            return candidate
        prompt_now = candidate.prompt
        if "subject" in changed and changed["subject"].strip().casefold() in candidate.filled_prompt.casefold():
            prompt_now = candidate.filled_prompt          # re-cut the template around the new subject
        fields = {"subject": candidate.subject, "prompt": prompt_now, "new_object": candidate.new_object} | changed
        fields |= {"path": candidate.path, "fallback_reason": candidate.fallback_reason,
                   "subject_from": "user" if {"subject", "prompt"} & set(changed) else candidate.subject_from}
        inputs = {"question": candidate.question, "answer": candidate.answer, "correction": candidate.correction}
        return self._candidate(inputs, fields, candidate.related, candidate.anchor_id)

    # -- confirming ------------------------------------------------------------------------
    def confirm(self, candidate: Candidate, who: str) -> QueueItem:
        """Queue the confirmed candidate (origin "chat"); the policy decides whether it is approved at once."""
        fact = self._validate({"subject": candidate.subject, "prompt": candidate.prompt,
                               "new_object": candidate.new_object}, "correction", candidate.question)
        related = [RelatedFact(current, r.distance) for r in candidate.related
                   if (current := self.store.find(r.fact.id)) is not None]
        verdict = judge(fact.subject, fact.prompt, fact.object, related, candidate.anchor_id)
        if verdict.kind != candidate.verdict.kind:
            log.warning("correction intake: the store changed since the candidate was made: %s", verdict.reason)
        approve = auto_approves(verdict, self.store.config.auto_approve_agreeing_corrections)
        evidence = _evidence(candidate, verdict, who, approve)
        if verdict.kind == AGREES:
            curated = verdict.fact
            proposal = self.queue.propose(
                fact_id=curated.id, fact_version=curated.version, subject=curated.subject, prompt=curated.prompt,
                question=curated.question or candidate.question, new_object=curated.object, origin="chat", who=who,
                old_answer=candidate.answer, evidence=evidence, why=f"chat correction {verdict.reason}")
        else:
            proposal = self.queue.propose(
                fact_id=content_id(fact.subject, fact.prompt, "chat"), subject=fact.subject, prompt=fact.prompt,
                question=candidate.question, new_object=fact.object, origin="chat", who=who,
                old_answer=candidate.answer, evidence=evidence, why=f"chat correction {verdict.reason}")
        item = proposal.item
        if approve and item.state == "proposed":
            item = self.queue.approve(item.id, who=POLICY_WHO,
                                      why=f"{verdict.reason}; [updater] auto_approve_agreeing_corrections is on")
        return item

    # -- validation ------------------------------------------------------------------------
    def _clean_inputs(self, question, answer, correction) -> dict:
        limit = self.store.config.max_text_chars
        return {"question": clean_text(question, "question", "correction", limit),
                "answer": clean_text(answer, "answer", "correction", ANSWER_LIMIT, setting=None),
                "correction": clean_text(correction, "correction", "correction", limit)}

    def _validate(self, fields: dict, where: str, question: str | None = None):
        """The fields as a CuratedFact checked by the store's rules (not stored)."""
        return self.store.validate({"subject": fields.get("subject"), "prompt": fields.get("prompt"),
                                    "object": fields.get("new_object"), "question": question}, "chat", where)


def _evidence(candidate: Candidate, verdict: Verdict, who: str, approve: bool) -> dict:
    curated = verdict.fact
    return {"question": candidate.question, "correction": candidate.correction, "extraction": candidate.path,
            "fallback_reason": candidate.fallback_reason, "subject_from": candidate.subject_from,
            "proposed_object": candidate.new_object, "policy": verdict.kind, "policy_reason": verdict.reason,
            "curated_fact": curated.id if curated else None, "curated_version": curated.version if curated else None,
            "curated_object": curated.object if curated else None, "auto_approved": approve, "confirmed_by": who,
            "related": [{"id": r.fact.id, "distance": round(r.distance, 4)} for r in candidate.related]}


def _short(error, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."

