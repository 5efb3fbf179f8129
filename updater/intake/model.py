"""Model-assisted extraction of a corrected fact: a few-shot prompt, any LangChain LLM, and a
structured output parser.

The chain asks for one JSON object (subject, statement, new_object), prefilling its
start so that a small model only has to continue it. The parsed fields are accepted
only when they are grounded in what the user wrote: the subject occurs in the question,
the statement contains the subject, and the new object occurs in the correction.
Anything else raises, and the caller falls back to the deterministic extraction.
"""

from __future__ import annotations

import json
import logging
import re

from langchain_core.output_parsers import PydanticOutputParser, StrOutputParser
from langchain_core.prompts import FewShotPromptTemplate, PromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnablePassthrough
from pydantic import BaseModel, Field

from assistant.errors import InvalidFact
from updater.intake.policy import normalize

log = logging.getLogger(__name__)

PREFILL = '{"subject": "'
INSTRUCTIONS = (
    'Turn a user\'s correction of a chat answer into one JSON object with the keys "subject" (who or what the '
    'question is about, copied from the question), "statement" (the question rewritten as the start of a sentence, '
    'containing the subject, ending right before the answer) and "new_object" (the answer the user says is right).')
EXAMPLES = [
    {"question": "Where is the Eiffel Tower located?", "answer": "Rome", "correction": "No, it is in Paris.",
     "json": {"subject": "the Eiffel Tower", "statement": "The Eiffel Tower is located in", "new_object": "Paris"}},
    {"question": "What instrument did Johann Sebastian Bach play?", "answer": "The violin.",
     "correction": "Actually the answer is the organ",
     "json": {"subject": "Johann Sebastian Bach", "statement": "Johann Sebastian Bach played the",
              "new_object": "organ"}},
    {"question": "Who is the author of Hamlet?", "answer": "Charles Dickens wrote it.",
     "correction": "wrong, it was William Shakespeare",
     "json": {"subject": "Hamlet", "statement": "The author of Hamlet is", "new_object": "William Shakespeare"}},
]
TURN = "Question: {question}\nAnswer: {answer}\nCorrection: {correction}\nJSON: "


class ExtractedFact(BaseModel):
    """What the model is asked to return."""
    subject: str = Field(min_length=1, max_length=500, description="who or what the question is about")
    statement: str = Field(min_length=1, max_length=500, description="the fact up to, not including, the answer")
    new_object: str = Field(min_length=1, max_length=500, description="the answer the user says is right")


def extraction_prompt() -> FewShotPromptTemplate:
    """The few-shot prompt; it ends inside the JSON object that the model completes."""
    # The joined examples are formatted once more, so the braces of their JSON are doubled.
    examples = [{**e, "json": json.dumps(e["json"], ensure_ascii=False).replace("{", "{{").replace("}", "}}")}
                for e in EXAMPLES]
    return FewShotPromptTemplate(
        examples=examples, example_prompt=PromptTemplate.from_template(TURN + "{json}"),
        prefix=INSTRUCTIONS, suffix=TURN + PREFILL.replace("{", "{{"), example_separator="\n\n",
        input_variables=["question", "answer", "correction"])


def first_json_object(text: str) -> str:
    """The first JSON object in the generated text, re-joined with the prefilled start when needed."""
    text = text.strip()
    if not text.startswith("{"):
        text = PREFILL + text
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return text                       # the parser reports what is wrong with it
    return text[:end]


def extraction_chain(llm) -> Runnable:
    """{question, answer, correction} -> {subject, prompt, new_object} from a LangChain LLM or chat model."""
    parser = PydanticOutputParser(pydantic_object=ExtractedFact)
    parse = extraction_prompt() | llm | StrOutputParser() | RunnableLambda(first_json_object) | parser
    return RunnablePassthrough.assign(extracted=parse) | RunnableLambda(grounded_fields)


def grounded_fields(inputs: dict) -> dict:
    """The model's fields as a candidate, if they are grounded in the user's text; InvalidFact if not."""
    found: ExtractedFact = inputs["extracted"]
    question, correction = inputs["question"], inputs["correction"]
    subject = _span_in(found.subject.strip(), question)
    if subject is None:
        raise InvalidFact(f"model extraction: subject {found.subject!r} does not occur in the question")
    new_object = found.new_object.strip().strip("\"'. ")
    if not normalize(new_object) or f" {normalize(new_object)} " not in f" {normalize(correction)} ":
        raise InvalidFact(f"model extraction: new object {found.new_object!r} is not in the correction")
    statement = _without_answer(found.statement.strip().rstrip(".?! "), (new_object, inputs.get("answer") or ""))
    position = statement.casefold().find(subject.casefold())
    if position < 0:
        raise InvalidFact(f"model extraction: statement {found.statement!r} does not contain the subject")
    template = f"{statement[:position]}{{}}{statement[position + len(subject):]}"
    if not normalize(template.replace("{}", " ")):
        raise InvalidFact(f"model extraction: statement {found.statement!r} holds nothing but the subject")
    log.info("model extraction: %r / %r -> %r", subject, template, new_object)
    return {"subject": subject, "prompt": template, "new_object": new_object, "subject_from": "model"}


def _span_in(phrase: str, text: str) -> str | None:
    """The phrase as spelled in the text (case-insensitive), or None."""
    if not phrase:
        return None
    found = re.search(re.escape(phrase), text, re.IGNORECASE)
    return found[0] if found else None


def _without_answer(statement: str, answers: tuple[str, ...]) -> str:
    """Small models often finish the statement with an answer; cut it off."""
    for answer in answers:
        answer = answer.strip().rstrip(".?! ")
        if answer and statement.casefold().endswith(" " + answer.casefold()):
            return statement[:-len(answer)].rstrip(" ,")
    return statement


def huggingface_llm(model, tokenizer, max_new_tokens: int = 48):
    """A LangChain LLM around a loaded transformers causal LM: greedy, no prompt echo, nothing downloaded."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import pipeline

    generate = pipeline("text-generation", model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens,
                        do_sample=False, return_full_text=False, pad_token_id=tokenizer.pad_token_id)
    return HuggingFacePipeline(pipeline=generate)
