"""The deterministic extraction of a corrected fact: no model, only the text and the store.

- subject and prompt: from the anchor (the curated fact the question asks about) when
  there is one; otherwise a span of the question (a possessive, a run of capitalised
  words, or what follows "of") and a cloze prompt built from the question's form;
- new object: the correction with "No,", "it's", "actually", "the answer is" and the
  like stripped, and with any words that only restate the question.
"""

from __future__ import annotations

import re

from assistant.errors import InvalidFact
from updater.intake.policy import RelatedFact, normalize

PRONOUNS = frozenset("it its it's he she they his her their its this that there".split())
ARTICLES = frozenset(("a", "an", "the"))
LEADING = [re.compile(p, re.IGNORECASE) for p in (
    r"^(?:no+|nope|nah|wrong|incorrect|false|not quite|not really|not true|sorry|oops|hm+|well|ok(?:ay)?|"
    r"actually|in fact|correction|fyi|you(?:'re| are) wrong|(?:that|this)(?:'s| is) (?:not right|not correct|"
    r"wrong|incorrect|false|not true|a mistake))\b[\s,.:;!-]*",
    r"^(?:i (?:think|believe|know)|i'?m (?:pretty |quite )?sure|pretty sure)(?: that)?\b[\s,]*",
    r"^(?:the )?(?:correct |right |real |true |actual )?answer (?:is|was|should be|would be)\b[\s:,-]*",
    r"^(?:it|that|this)(?:'s| is| was| should be| must be| has to be)\b(?: actually)?[\s:,]*",
    r"^(?:should be|must be)\b[\s:,]*",
)]
TRAILING = [re.compile(p, re.IGNORECASE) for p in (
    r"[\s,;(-]+(?:not|rather than|instead of|and not)\s+.*$",
    r"[\s,]+(?:actually|instead|of course|obviously|i think|i believe|though|by the way)\s*$",
    r"\s+(?:is|was|would be) (?:the )?(?:correct|right|true|real)(?: answer| one)?\s*$",
    r"[\s.!?,;:)]+$",
)]
QUOTES = "\"'`*“”‘’«»"
QUESTION_WORDS = frozenset("what who whom whose which where when why how is was are were do does did can could "
                           "in on at name tell".split())
NAME_JOINERS = frozenset("of the de da del di von van der la le du y and".split())
TEMPLATES = [   # (pattern over the question with the subject replaced by {}, template)
    (r"(?:what|who|which) (is|was|are|were) (the .+ of) \{\}", lambda m: f"{_cap(m[2])} {{}} {m[1]}"),
    (r"(?:what|who|which) (is|was|are|were) \{\}'s (.+)", lambda m: f"{{}}'s {m[2]} {m[1]}"),
    (r"where (?:is|was) \{\} (?:located|situated)", lambda m: "{} is located in"),
    (r"where (is|was) \{\} (born|buried|based|founded|headquartered)", lambda m: f"{{}} {m[1]} {m[2]} in"),
    (r"when (?:is|was|did) \{\} (born|founded|released|published|built|die|died)",
     lambda m: f"{{}} {'died' if m[1].startswith('die') else 'was ' + m[1]} in"),
    (r"where (?:is|was) \{\}", lambda m: "{} is located in"),
    (r"(?:what|who) (is|was) \{\}", lambda m: f"{{}} {m[1]}"),
]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def fallback_fields(question: str, answer: str, correction: str, anchor: RelatedFact | None) -> dict:
    """subject, prompt (a template with "{}") and new_object, and where each came from."""
    if anchor is not None:
        subject, prompt, origin = anchor.fact.subject, anchor.fact.prompt, f"anchor:{anchor.fact.id}"
    else:
        subject = subject_from_question(question)
        prompt, origin = template_from_question(question, subject), "question"
    context = f"{question} {prompt.replace('{}', subject)}"
    return {"subject": subject, "prompt": prompt, "new_object": object_from_correction(correction, context),
            "subject_from": origin}


def subject_from_question(question: str) -> str:
    """A span of the question that names what it is about, or InvalidFact."""
    text = question.strip().rstrip("?!. ")
    possessive = re.search(r"((?:\b[A-Z][\w.&-]*\s+)*\b[A-Z][\w.&-]*)(?:'s|’s)\b", text)
    if possessive:
        return _with_article(text, possessive.start(1), possessive[1])
    span = _capitalised_span(text)
    if span:
        return span
    of_phrase = re.search(r"\bof\s+(.+)$", text, re.IGNORECASE)
    if of_phrase and normalize(of_phrase[1]):
        return of_phrase[1].strip()
    raise InvalidFact(f"correction: cannot tell who or what the question {question!r} is about; "
                      "give the subject yourself (--subject)")


def _capitalised_span(text: str) -> str | None:
    """The longest run of capitalised words (names may hold "of", "de", "von"...), with a leading "the"."""
    tokens = list(re.finditer(r"[\w.&'’-]+", text))
    best: tuple[int, int] | None = None
    i = 0
    while i < len(tokens):
        word = tokens[i][0]
        skip_first = i == 0 and word.casefold() in QUESTION_WORDS
        if not word[:1].isupper() or skip_first:
            i += 1
            continue
        j = i + 1
        while j < len(tokens) and (tokens[j][0][:1].isupper() or (
                tokens[j][0].casefold() in NAME_JOINERS and j + 1 < len(tokens) and tokens[j + 1][0][:1].isupper())):
            j += 1
        if best is None or j - i >= best[1] - best[0]:
            best = (i, j)
        i = j
    if best is None:
        return None
    start, end = tokens[best[0]].start(), tokens[best[1] - 1].end()
    return _with_article(text, start, text[start:end])


def _with_article(text: str, start: int, span: str) -> str:
    before = text[:start].rstrip()
    return f"the {span}" if before.endswith((" the", " The")) or before in ("the", "The") else span


def template_from_question(question: str, subject: str) -> str:
    """A cloze prompt for the question's form, or the question itself (which holds the subject)."""
    text = question.strip().rstrip("?!. ").strip()
    position = text.casefold().find(subject.casefold())
    if position < 0:
        raise InvalidFact(f"correction: subject {subject!r} does not occur in question {question!r}; "
                          "give a subject that the question names")
    marked = f"{text[:position]}{{}}{text[position + len(subject):]}"
    for pattern, build in TEMPLATES:
        found = re.fullmatch(pattern, marked, re.IGNORECASE)
        if found:
            return build(found)
    return f"{question.strip()}".replace(text[position:position + len(subject)], "{}", 1)


def object_from_correction(correction: str, context: str = "") -> str:
    """The new answer in the correction text, or InvalidFact when there is none to find."""
    text = correction.strip()
    previous = None
    while text != previous:
        previous = text
        text = text.strip(QUOTES + " ,.:;!-")
        for pattern in LEADING:
            text = pattern.sub("", text, count=1)
        for pattern in TRAILING:
            text = pattern.sub("", text, count=1)
    if re.match(r"^not\b", text, re.IGNORECASE) or not normalize(text):
        raise InvalidFact(f"correction: {correction!r} does not say what the right answer is; "
                          "write it, for example \"No, it's English\"")
    return _drop_restatement(text, context)


def _drop_restatement(text: str, context: str) -> str:
    """Drop leading words that only repeat the question ("Her mother tongue is English" -> "English")."""
    known = set(re.findall(r"\w+", context.casefold())) | PRONOUNS | {"is", "was", "are", "were", "in", "of", "at"}
    words = [(match.start(), re.sub(r"(?:'s|’s)$", "", match[0].casefold()).strip(QUOTES + ",.:;!?"))
             for match in re.finditer(r"\S+", text)]
    cut = 0
    while cut < len(words) - 1:
        word = words[cut][1]
        if word in ARTICLES and words[cut + 1][1] in known and cut + 1 < len(words) - 1:
            cut += 1
        elif word in known and word not in ARTICLES:
            cut += 1
        else:
            break
    return text[words[cut][0]:].strip(QUOTES + " ,.:;!-") if cut else text
