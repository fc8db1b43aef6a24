"""Verification of a semantic-cache candidate after the vector search.

A cosine threshold alone serves wrong answers: "lose 5 kg" and "lose 10 kg" sit at
cosine 0.97. So every candidate FAISS returns goes through, in order:

1. the cosine floor of the score in use;
2. hard rules that no similarity overrides: the numbers, the negation, the
   named entities and the polarity words ("best" / "worst") of the two
   questions must agree;
3. a calibrated score against its threshold. Given both unit vectors, the
   vector score: a learned metric over the embedding (a weight per dimension of
   u*v and of |u-v|) plus the cosine and cheap text features. Without them, the
   text score: a logistic function of the cosine, named entities present on one
   side only, the question word and the length ratio. Both are fitted offline
   by `bench/cache_fit.py` (semcache/calibration.py).

When the pair verifier is loaded (the default; semcache.pair_verify), step 3
is not used, and step 1's floor is the pair verifier's own (lower) cosine
floor: every candidate above it that passes the hard rules (`screen`) goes to
a cross-encoder that reads both questions together, and its calibrated
probability decides.

This module makes no model call: about 40 microseconds of CPU to analyse a question not seen
before (an LRU cache keeps the query across its candidates and frequent
candidates), and under 10 more for the vector score's two dot products.
The measured precision and recall, and what still fails: docs/cache-quality.md.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

import numpy as np

from semcache.calibration import FEATURES, Calibration, TextScore, VectorScore


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

# Words whose swap turns a question into another one ("arguments for" / "against").
# A pair only counts when each side has its own word and not the other's, so
# "pros and cons" and "good or bad" never trigger it.
_ANTONYM_PAIRS = """for/against before/after best/worst better/worse good/bad increase/decrease
    advantage/disadvantage pro/con more/less positive/negative male/female man/woman
    men/women boy/girl rich/poor cheap/expensive cheapest/costliest buy/sell win/lose
    love/hate like/dislike legal/illegal possible/impossible high/low higher/lower
    easy/hard easy/difficult fast/slow strong/weak true/false import/export upload/download
    maximum/minimum north/south east/west private/public hot/cold husband/wife
    boyfriend/girlfriend mother/father son/daughter brother/sister right/wrong
    success/failure inside/outside big/small large/small long/short agree/disagree
    accept/reject pass/fail safe/dangerous happy/sad"""
ANTONYMS = tuple(tuple(pair.split("/")) for pair in _ANTONYM_PAIRS.split())

# "one" is left out: far more often a pronoun ("which one", "no one") than a count.
_UNITS = (
    "zero _ two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS = {word: float(value) for value, word in enumerate(_UNITS.split()) if word != "_"}
NUMBER_WORDS.update(
    {
        "thirty": 30,
        "forty": 40,
        "fifty": 50,
        "sixty": 60,
        "seventy": 70,
        "eighty": 80,
        "ninety": 90,
        "hundred": 100,
        "thousand": 1000,
        "million": 1000000,
        "billion": 1000000000,
        "lakh": 100000,
        "crore": 10000000,
        "half": 0.5,
        "dozen": 12,
    }
)

_QWORDS = _wordset("what which who whom whose when where why how")

# Words that give the words after them a role: a swap of two words' roles
# ("from X to Y" / "from Y to X", "X faster than Y" / "Y faster than X", "how
# many X is 5 Y" / "how many Y is 5 X", "in X when it is noon in Y") asks the
# other question. Only a full exchange counts, so moved phrases ("to Y
# from X") and roles on one side only ("the cache in Chrome" / "Chrome's
# cache") are not swaps.
DIRECTIONAL = _wordset(
    """to into onto toward towards from than in per vs versus instead over before
    after with for is are was were"""
)

_WORD = re.compile(r"[A-Za-z0-9]+(?:[.'][A-Za-z0-9]+)*(?:\+\+|#)?")  # C++, C#
_LOWER_WORD = re.compile(r"[a-z]+")
_HYPHENATED = re.compile(r"\w+(?:-\w+)+")
# A number and an optional one-letter suffix: "10k" (thousands), "5s" (a model), "5g".
_NUMBER = re.compile(r"(\d+(?:,\d{3}(?!\d))*(?:\.\d+)?)([a-z]\b)?", re.IGNORECASE)

_NT = re.compile(r"n't\b", re.IGNORECASE)
# "Why or why not?", "not only", "No. 1": a "not" that does not negate the question.
_NOT_A_NEGATION = re.compile(r"\bwhy or why not\b|\bor not\b|\bwhy not\b|\bnot only\b|\bno\.")
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
    numbers: tuple[str, ...]  # normalised numeric values, sorted, repeats kept
    negations: int  # how many negation words ("not" twice is not "not" once)
    entities: frozenset[str]  # stems of capitalised names, acronyms, camelCase
    qword: str  # first question word (what/how/why/...), "" if none
    length: int  # number of words
    # Each content word's role: the nearest directional word before it and
    # which one of its kind ("to#1", "in#2"), "" if none. "Fahrenheit to
    # Celsius": fahrenheit "", celsius "to#1".
    roles: tuple[tuple[str, str], ...] = ()


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


def _numbers(text: str) -> tuple[str, ...]:
    """Numeric values, sorted: "1,000" "1000" "1k" "thousand" -> "1000"; "5s" stays "5s"."""
    values = []
    for digits, suffix in _NUMBER.findall(text):
        value = float(digits.replace(",", ""))
        if suffix.lower() == "k":
            value, suffix = value * 1000, ""
        if math.isfinite(value):
            values.append(f"{value:.12g}{suffix.lower()}")
    words = _LOWER_WORD.findall(text.lower())
    values += [f"{NUMBER_WORDS[w]:.12g}" for w in words if w in NUMBER_WORDS]
    return tuple(sorted(values))


def _negations(text: str) -> int:
    text = _NOT_A_NEGATION.sub(" ", text.lower())
    return sum(1 for w in _LOWER_WORD.findall(text) if w in NEGATIONS)


def _is_entity(token: str, sentence_start: bool, title_case: bool) -> bool:
    if token.islower():
        return False  # the common case, first; "A" and "I" are stopwords below
    lower = token.lower()
    if lower in STOPWORDS or lower in NEGATIONS:
        return False
    if token.isupper() and sum(c.isalpha() for c in token) >= 2:
        return True  # acronym: USA, IIT, CSE
    if token[1:] != token[1:].lower():
        return True  # camelCase: iPhone, YouTube
    return token[0].isupper() and not sentence_start and not title_case


def _words(text: str) -> list[tuple[str, bool]]:
    """Words of `text` with whether each starts a sentence."""
    starts = {m.end() for m in _SENTENCE_END.finditer(text)}
    out: list[tuple[str, bool]] = []
    for m in _WORD.finditer(text):
        out.append((m.group(), m.start() in starts or not out))
    return out


def _is_title_case(words: list[tuple[str, bool]]) -> bool:
    """ "What Is The Best Way To Learn Python?": there, capitals say nothing."""
    inner = [w for w, start in words if not start and w.lower() in STOPWORDS and w != "I"]
    capitalised = sum(1 for w in inner if w[:1].isupper())
    return capitalised >= max(1, len(inner) / 2)


@lru_cache(maxsize=4096)
def analyse(text: str) -> Analysis:
    text = _NT.sub(" not", text.replace("\u2019", "'"))
    words = _words(text)
    title_case = _is_title_case(words)
    stems = [_stem(w) for w, _ in words]
    # "Wi-Fi" also matches "WiFi", "e-mail" also "email".
    joined = [_stem(h.replace("-", "")) for h in _HYPHENATED.findall(text)]
    return Analysis(
        stems=frozenset(stems + joined),
        numbers=_numbers(text),
        negations=_negations(text),
        entities=frozenset(_stem(w) for w, start in words if _is_entity(w, start, title_case)),
        qword=next((s for s in stems if s in _QWORDS), ""),
        length=len(words),
        roles=_roles(stems),
    )


def _roles(stems: list[str]) -> tuple[tuple[str, str], ...]:
    """(content word, the directional word before it and which one of its kind it is:
    "in#2" for the second "in"), first occurrence of each word."""
    role, out, seen, counts = "", [], set(), dict[str, int]()
    for stem in stems:
        if stem in DIRECTIONAL:
            counts[stem] = counts.get(stem, 0) + 1
            role = f"{stem}#{counts[stem]}"
        elif stem not in STOPWORDS and stem not in NEGATIONS and stem not in seen:
            seen.add(stem)
            out.append((stem, role))
    return tuple(out)


def _swapped(a: Analysis, b: Analysis) -> bool:
    """Two words shared by both questions that exchanged their roles."""
    roles_b = dict(b.roles)
    shared = [(w, r, roles_b[w]) for w, r in a.roles if w in roles_b]
    return any(
        ra != rv and ra == rb_v and rv == rb_a
        for i, (_, ra, rb_a) in enumerate(shared)
        for _, rv, rb_v in shared[i + 1 :]
    )


def features(a: Analysis, b: Analysis, similarity: float) -> tuple[float, ...]:
    """The score's inputs, in the order of `calibration.FEATURES`."""
    values = {
        "cosine": similarity,
        # A name on one side only: "capital of France" vs "the capital".
        "unmatched_entities": float(len(a.entities - b.stems) + len(b.entities - a.stems)),
        "same_qword": 1.0 if a.qword == b.qword else 0.0,
        "length_ratio": min(a.length, b.length) / max(a.length, b.length, 1),
    }
    return tuple(values[name] for name in FEATURES)


def _opposed(a: frozenset[str], b: frozenset[str]) -> bool:
    return any(
        (x in a and y in b and y not in a and x not in b)
        or (y in a and x in b and x not in a and y not in b)
        for x, y in ANTONYMS
    )


def hard_rule(a: Analysis, b: Analysis) -> str | None:
    """The reason two questions cannot mean the same, or None."""
    if a.numbers != b.numbers:
        return "number_mismatch"
    if a.negations != b.negations:
        return "negation_mismatch"
    if (a.entities - b.stems) and (b.entities - a.stems):
        return "entity_mismatch"  # each side names something the other does not
    if _opposed(a.stems, b.stems):
        return "antonym_mismatch"
    if _swapped(a, b):
        return "swapped_arguments"
    return None


class Verifier:
    """Decides whether a cached question may answer a new one."""

    def __init__(self, calibration: Calibration) -> None:
        self.calibration = calibration

    def screen(self, query: str, candidate: str) -> str | None:
        """The hard rule that refuses the pair, or None: what the pair model is screened by."""
        return hard_rule(analyse(query), analyse(candidate))

    def check(
        self,
        query: str,
        candidate: str,
        similarity: float,
        query_vector: np.ndarray | None = None,
        candidate_vector: np.ndarray | None = None,
    ) -> Verdict:
        """Verdict on serving `candidate`'s answer to `query`.

        Given both unit vectors (float32, of the index's dimension) and a
        backend with a learned metric, the vector score decides; otherwise the
        text score, whose cosine floor is higher.
        """
        text, vector = self.calibration.text, self.calibration.vector
        if vector is None or query_vector is None or candidate_vector is None:
            return _verdict(query, candidate, similarity, text, text.score)
        return _verdict(
            query,
            candidate,
            similarity,
            vector,
            partial(vector.score, query_vector, candidate_vector),
        )


def _verdict(
    query: str,
    candidate: str,
    similarity: float,
    limits: TextScore | VectorScore,
    score_of: Callable[[tuple[float, ...]], float],
) -> Verdict:
    """The floor, the hard rules, then the score against the threshold, in that order."""
    if not similarity >= limits.min_similarity:  # also rejects NaN
        return Verdict(False, 0.0, "below_min_similarity")
    a, b = analyse(query), analyse(candidate)
    reason = hard_rule(a, b)
    if reason is not None:
        return Verdict(False, 0.0, reason)
    score = score_of(features(a, b, similarity))
    if score < limits.score_threshold:
        return Verdict(False, score, "below_threshold")
    return Verdict(True, score, "ok")
