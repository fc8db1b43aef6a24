"""Verification of a semantic-cache candidate after the vector search.

A cosine threshold alone serves wrong answers: "lose 5 kg" and "lose 10 kg" sit at
cosine 0.97. So every candidate FAISS returns goes through, in order:

1. the backend's cosine floor (`Calibration.min_similarity`);
2. hard rules that no similarity overrides: the numbers, the negation and the
   named entities of the two questions must agree;
3. a calibrated score (a logistic regression over cheap lexical features and the
   cosine, fitted offline by `bench/cache_quality.py`) against the backend's
   threshold.

Everything here is pure Python over two short strings: no model call, tens of
microseconds per check. The query side is analysed once per lookup (cached).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from semcache.calibration import FEATURES, Calibration


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Function words: they carry grammar, not the topic of the question.
STOPWORDS = _wordset(
    """a an the and or but if then so than that this these those there here of in on at
    to for from by with about as into onto over under between through during before after
    up down out off again further once is are was were be been being am do does did doing
    have has had having i me my mine myself we us our ours you your yours he him his she
    her hers it its they them their theirs what which who whom whose when where why how
    can could should would will shall may might must also just very too more most much
    many some any each every all both other such own same only get gets got getting
    one's someone something anyone anything way ways"""
)

# Spellings of negation once "n't" has been split off ("can't" -> "ca" "not").
NEGATIONS = _wordset(
    """not no never nothing nobody none neither nor cannot without nowhere
    dont doesnt didnt cant couldnt wont wouldnt shouldnt isnt arent wasnt werent
    havent hasnt hadnt aint"""
)

_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS = {word: str(value) for value, word in enumerate(_UNITS.split())}
NUMBER_WORDS.update(
    {
        "thirty": "30",
        "forty": "40",
        "fifty": "50",
        "sixty": "60",
        "seventy": "70",
        "eighty": "80",
        "ninety": "90",
        "hundred": "100",
        "thousand": "1000",
        "million": "1000000",
        "billion": "1000000000",
        "lakh": "100000",
        "crore": "10000000",
        "half": "0.5",
        "dozen": "12",
    }
)

_QWORDS = _wordset("what which who whom whose when where why how")

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'\u2019][A-Za-z0-9]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SENTENCE_END = re.compile(r"[.?!:;\"()\[\]]\s+|^")


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    score: float  # calibrated score in [0, 1]; 0.0 when a hard rule rejects
    reason: str  # "ok", "below_min_similarity", "number_mismatch", ...


@dataclass(frozen=True)
class Analysis:
    """What the checks need from one question, computed once."""

    stems: frozenset[str]  # every word, lower-cased and lightly stemmed
    content: frozenset[str]  # stems that are not function words
    numbers: frozenset[str]  # normalised numeric values ("5", "1000", "2.5")
    negated: bool
    entities: frozenset[str]  # stems of capitalised names, acronyms, camelCase
    qword: str  # first question word (what/how/why/...), "" if none
    length: int  # number of words


def _stem(word: str) -> str:
    word = word.lower().replace("\u2019", "'")
    if word.endswith("'s"):
        word = word[:-2]
    word = word.replace(".", "").replace("'", "")
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _number(text: str) -> str:
    text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:g}" if math.isfinite(value) else text


def _is_entity(token: str, sentence_start: bool, title_case: bool) -> bool:
    if len(token) < 2 or token.lower() in STOPWORDS or token.lower() in NEGATIONS:
        return False
    letters = [c for c in token if c.isalpha()]
    if len(letters) >= 2 and all(c.isupper() for c in letters):
        return True  # acronym: USA, IIT, CSE
    if any(c.isupper() for c in token[1:]) and token[1:].lower() != token[1:]:
        return True  # camelCase: iPhone, YouTube
    return token[0].isupper() and not sentence_start and not title_case


def _words(text: str) -> list[tuple[str, bool]]:
    """Words of `text` with whether each starts a sentence."""
    starts = {m.end() for m in _SENTENCE_END.finditer(text)}
    out: list[tuple[str, bool]] = []
    for m in _WORD.finditer(text):
        out.append((m.group(), m.start() in starts or not out))
    return out


@lru_cache(maxsize=4096)
def analyse(text: str) -> Analysis:
    text = text.replace("\u2019", "'")
    expanded = re.sub(r"n't\b", " not", text, flags=re.IGNORECASE)
    words = _words(expanded)
    # "What Is The Best Way To Learn Python?": capitals say nothing in Title Case.
    inner_stop = [w for w, start in words if not start and w.lower() in STOPWORDS and w != "I"]
    capitalised_stop = sum(1 for w in inner_stop if w[:1].isupper())
    title_case = capitalised_stop >= max(1, len(inner_stop) / 2)
    stems = [_stem(w) for w, _ in words]
    numbers = {_number(n) for n in _NUMBER.findall(expanded)}
    numbers |= {NUMBER_WORDS[s] for s in stems if s in NUMBER_WORDS}
    qword = next((s for s in stems if s in _QWORDS), "")
    return Analysis(
        stems=frozenset(stems),
        content=frozenset(s for s in stems if s not in STOPWORDS and s not in NEGATIONS),
        numbers=frozenset(numbers),
        negated=any(s in NEGATIONS for s in stems),
        entities=frozenset(_stem(w) for w, start in words if _is_entity(w, start, title_case)),
        qword=qword,
        length=len(words),
    )


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def features(a: Analysis, b: Analysis, similarity: float) -> tuple[float, ...]:
    """The score's inputs, in the order of `calibration.FEATURES`."""
    only_a, only_b = a.content - b.content, b.content - a.content
    values = {
        "cosine": similarity,
        "jaccard": _jaccard(a.stems, b.stems),
        "content_jaccard": _jaccard(a.content, b.content),
        "unmatched_content": float(min(len(only_a), 4) + min(len(only_b), 4)),
        "unmatched_entities": float(len(a.entities - b.stems) + len(b.entities - a.stems)),
        "length_ratio": min(a.length, b.length) / max(a.length, b.length, 1),
        "same_qword": 1.0 if a.qword == b.qword else 0.0,
    }
    return tuple(values[name] for name in FEATURES)


def hard_rule(a: Analysis, b: Analysis) -> str | None:
    """The reason two questions cannot mean the same, or None."""
    if a.numbers != b.numbers:
        return "number_mismatch"
    if a.negated != b.negated:
        return "negation_mismatch"
    if (a.entities - b.stems) and (b.entities - a.stems):
        return "entity_mismatch"
    return None


class Verifier:
    """Decides whether a cached question may answer a new one."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration

    def check(self, query: str, candidate: str, similarity: float) -> Verdict:
        cal = self.calibration
        if not similarity >= cal.min_similarity:  # also rejects NaN
            return Verdict(False, 0.0, "below_min_similarity")
        a, b = analyse(query), analyse(candidate)
        reason = hard_rule(a, b)
        if reason is not None:
            return Verdict(False, 0.0, reason)
        score = cal.score(features(a, b, similarity))
        if score < cal.score_threshold:
            return Verdict(False, score, "below_threshold")
        return Verdict(True, score, "ok")
