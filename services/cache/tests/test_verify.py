"""The verification step: wrong hits are refused whatever the cosine, paraphrases pass."""

from __future__ import annotations

import pytest

from semcache.calibration import FEATURES, Calibration, calibration_for
from semcache.verify import Verifier, analyse, features

BACKENDS = ("onnx-int8", "torch")


@pytest.fixture(params=BACKENDS)
def verifier(request: pytest.FixtureRequest) -> Verifier:
    return Verifier(calibration_for(request.param))


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("How do I lose 5 kg in a month?", "How do I lose 10 kg in a month?"),
        ("How do I lose five kg in a month?", "How do I lose 10 kg in a month?"),
        (
            "What is the best phone under 15,000 rupees?",
            "What is the best phone under 20000 rupees?",
        ),
        ("What was the population of India in 2001?", "What was the population of India in 2011?"),
        (
            "Is it safe to take 2 tablets of ibuprofen?",
            "Is it safe to take 4 tablets of ibuprofen?",
        ),
    ],
)
def test_questions_that_differ_by_a_number_never_match(
    verifier: Verifier, query: str, candidate: str
) -> None:
    verdict = verifier.check(query, candidate, similarity=0.999)
    assert not verdict.accepted
    assert verdict.reason == "number_mismatch"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("Can I use my phone abroad?", "Can't I use my phone abroad?"),
        ("Can I use my phone abroad?", "Can I not use my phone abroad?"),
        ("Why do people like Python?", "Why don't people like Python?"),
        ("Why do people like Python?", "Why dont people like Python?"),
        ("Is coffee good for health?", "Is coffee never good for health?"),
        ("How can I lose weight without exercise?", "How can I not lose weight without exercise?"),
    ],
)
def test_questions_that_differ_by_a_negation_never_match(
    verifier: Verifier, query: str, candidate: str
) -> None:
    verdict = verifier.check(query, candidate, similarity=0.999)
    assert not verdict.accepted
    assert verdict.reason == "negation_mismatch"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("What is the capital of France?", "What is the capital of Germany?"),
        ("How do I get a job at Google?", "How do I get a job at Microsoft?"),
        ("What do you think of Donald Trump?", "What do you think of Hillary Clinton?"),
        ("Is the iPhone better than the Pixel?", "Is the iPhone better than the Galaxy?"),
        ("How hard is it to get into IIT?", "How hard is it to get into MIT?"),
        ("Is C++ hard to learn for a beginner?", "Is C hard to learn for a beginner?"),
    ],
)
def test_questions_that_differ_by_a_named_entity_never_match(
    verifier: Verifier, query: str, candidate: str
) -> None:
    verdict = verifier.check(query, candidate, similarity=0.999)
    assert not verdict.accepted
    assert verdict.reason == "entity_mismatch"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("What are some arguments for veganism?", "What are some arguments against veganism?"),
        ("What is the best movie of 2016?", "What is the worst movie of 2016?"),
        ("Is it legal to record a phone call?", "Is it illegal to record a phone call?"),
    ],
)
def test_questions_with_opposed_words_never_match(
    verifier: Verifier, query: str, candidate: str
) -> None:
    verdict = verifier.check(query, candidate, similarity=0.999)
    assert not verdict.accepted
    assert verdict.reason == "antonym_mismatch"


@pytest.mark.parametrize(
    ("query", "candidate", "similarity"),
    [
        ("How can I learn Python quickly?", "What is the fastest way to learn Python?", 0.96),
        ("How do I lose weight fast?", "How can I lose weight quickly?", 0.96),
        ("What is the capital of France?", "What's the capital of France?", 0.99),
        ("How do I lose 5 kg in a month?", "How can I lose five kg in a month?", 0.97),
        ("Why can't I sleep at night?", "Why can I not sleep at night?", 0.97),
        ("What are the pros and cons of remote work?", "Remote work: pros and cons?", 0.96),
        ("Is Python worth learning? Why or why not?", "Is Python worth learning?", 0.97),
        ("How To Learn Python Quickly?", "How to learn Python quickly?", 0.99),
        ("How many grams are in 1,000 kg?", "How many grams are in 1000 kg?", 0.99),
    ],
)
def test_genuine_paraphrases_with_high_similarity_are_accepted(
    verifier: Verifier, query: str, candidate: str, similarity: float
) -> None:
    verdict = verifier.check(query, candidate, similarity)
    assert verdict.accepted, verdict
    assert verdict.reason == "ok"
    assert 0.0 <= verdict.score <= 1.0


def test_identical_questions_pass_at_identical_cosine(verifier: Verifier) -> None:
    assert verifier.check("How do I learn Rust?", "How do I learn Rust?", 1.0).accepted


def test_a_low_cosine_is_refused_before_anything_else(verifier: Verifier) -> None:
    floor = verifier.calibration.min_similarity
    verdict = verifier.check("How do I learn Rust?", "How do I learn Rust?", floor - 0.01)
    assert verdict == verdict.__class__(False, 0.0, "below_min_similarity")


def test_nan_similarity_is_refused(verifier: Verifier) -> None:
    assert not verifier.check("How do I learn Rust?", "How do I learn Rust?", float("nan")).accepted


def test_unrelated_wording_at_the_floor_is_scored_below_threshold(verifier: Verifier) -> None:
    floor = verifier.calibration.min_similarity
    verdict = verifier.check(
        "What is the best programming language to learn?",
        "Which laptop should I buy for programming?",
        floor,
    )
    assert verdict.reason == "below_threshold"
    assert verdict.score < verifier.calibration.score_threshold


def test_the_score_rises_with_the_cosine() -> None:
    cal = calibration_for("torch")
    a, b = analyse("How can I learn Python quickly?"), analyse("Best way to learn Python?")
    low, high = cal.score(features(a, b, 0.86)), cal.score(features(a, b, 0.97))
    assert 0.0 <= low < high <= 1.0


def test_each_backend_has_its_own_entry() -> None:
    for backend in BACKENDS:
        cal = calibration_for(backend)
        assert cal.backend == backend
        assert len(cal.weights) == len(FEATURES)
        assert 0.0 < cal.min_similarity < 1.0
        assert 0.0 < cal.score_threshold < 1.0


def test_the_backends_are_calibrated_separately() -> None:
    assert calibration_for("torch") != calibration_for("onnx-int8")


def test_an_unknown_backend_gets_the_strictest_known_thresholds() -> None:
    unknown = calibration_for("some-other-model")
    known = [calibration_for(b) for b in BACKENDS]
    assert unknown.backend == "some-other-model"
    assert unknown.min_similarity >= max(c.min_similarity for c in known)
    assert unknown.score_threshold >= max(c.score_threshold for c in known)


def test_a_calibration_with_the_wrong_number_of_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        Calibration("x", 0.9, weights=(1.0,), bias=0.0, score_threshold=0.5)
