"""The verification step: wrong hits are refused whatever the cosine, paraphrases pass.

Every hard-rule test runs on both paths: the text score (no vectors given) and
the learned metric over the two vectors. The metric's own tests use the real
model's vectors (marked ``model``) or a hand-made metric whose weights are known.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from semcache.calibration import (
    FEATURES,
    Calibration,
    TextScore,
    VectorScore,
    calibration_for,
    load_metric,
)
from semcache.verify import Verdict, Verifier, analyse, features, hard_rule

BACKENDS = ("onnx-int8", "torch")
DIM = 384
Check = Callable[[str, str, float], Verdict]


def pair_at(similarity: float, dim: int = DIM, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 unit vectors at `similarity` cosine."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(dim)
    u /= np.linalg.norm(u)
    noise = rng.standard_normal(dim)
    noise -= noise.dot(u) * u
    noise /= np.linalg.norm(noise)
    v = similarity * u + np.sqrt(max(0.0, 1 - similarity**2)) * noise
    return u.astype(np.float32), (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture(params=BACKENDS)
def verifier(request: pytest.FixtureRequest) -> Verifier:
    return Verifier(calibration_for(request.param))


@pytest.fixture(params=["text", "vectors"])
def check(verifier: Verifier, request: pytest.FixtureRequest) -> Check:
    """`verifier.check`, given no vectors or a pair of vectors at the stated cosine."""
    if request.param == "text":
        return verifier.check

    def with_vectors(query: str, candidate: str, similarity: float) -> Verdict:
        return verifier.check(query, candidate, similarity, *pair_at(similarity))

    return with_vectors


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
    check: Check, query: str, candidate: str
) -> None:
    verdict = check(query, candidate, 0.999)
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
    check: Check, query: str, candidate: str
) -> None:
    verdict = check(query, candidate, 0.999)
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
    check: Check, query: str, candidate: str
) -> None:
    verdict = check(query, candidate, 0.999)
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
def test_questions_with_opposed_words_never_match(check: Check, query: str, candidate: str) -> None:
    verdict = check(query, candidate, 0.999)
    assert not verdict.accepted
    assert verdict.reason == "antonym_mismatch"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("How do I transfer money from PayPal to my bank?",
         "How do I transfer money from my bank to PayPal?"),
        ("Is a cheetah faster than a horse?", "Is a horse faster than a cheetah?"),
        ("How many liters are in a gallon?", "How many gallons are in a liter?"),
        ("Can I replace butter with oil in a cake?", "Can I replace oil with butter in a cake?"),
        ("How do I migrate from MySQL to Postgres?", "How do I migrate from Postgres to MySQL?"),
        ("Translate good morning from English into French",
         "Translate good morning from French into English"),
    ],
)  # fmt: skip
def test_questions_whose_arguments_swapped_roles_never_match(
    check: Check, query: str, candidate: str
) -> None:
    verdict = check(query, candidate, 0.999)
    assert not verdict.accepted
    assert verdict.reason == "swapped_arguments"


@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        ("How do I move from India to Canada?", "How can I move to Canada from India?"),
        ("How do I clear the cache in Chrome?", "How can I clear Chrome's cache?"),
        ("Convert 100 Fahrenheit to Celsius", "What is 100 Fahrenheit in Celsius?"),
        ("How do I get to the airport from downtown?",
         "How do I get from downtown to the airport?"),
    ],
)  # fmt: skip
def test_a_moved_phrase_is_not_a_swap(query: str, candidate: str) -> None:
    assert hard_rule(analyse(query), analyse(candidate)) is None


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
def test_the_text_score_accepts_paraphrases_with_high_similarity(
    verifier: Verifier, query: str, candidate: str, similarity: float
) -> None:
    verdict = verifier.check(query, candidate, similarity)
    assert verdict.accepted, verdict
    assert verdict.reason == "ok"
    assert 0.0 <= verdict.score <= 1.0


def test_identical_questions_pass_at_identical_cosine(verifier: Verifier) -> None:
    assert verifier.check("How do I learn Rust?", "How do I learn Rust?", 1.0).accepted


@pytest.mark.parametrize("vectors", [False, True])
def test_a_cosine_under_the_floor_is_refused_before_anything_else(
    verifier: Verifier, vectors: bool
) -> None:
    cal = verifier.calibration
    floor = cal.vector.min_similarity if vectors and cal.vector else cal.text.min_similarity
    given = pair_at(floor - 0.01) if vectors else ()
    verdict = verifier.check("How do I learn Rust?", "How do I learn Rust?", floor - 0.01, *given)
    assert verdict == Verdict(False, 0.0, "below_min_similarity")


def test_nan_similarity_is_refused(check: Check) -> None:
    assert not check("How do I learn Rust?", "How do I learn Rust?", float("nan")).accepted


def test_unrelated_wording_at_the_text_floor_is_scored_below_threshold(verifier: Verifier) -> None:
    text = verifier.calibration.text
    verdict = verifier.check(
        "What is the best programming language to learn?",
        "Which laptop should I buy for programming?",
        text.min_similarity,
    )
    assert verdict.reason == "below_threshold"
    assert verdict.score < text.score_threshold


def test_the_text_score_rises_with_the_cosine() -> None:
    text = calibration_for("torch").text
    a, b = analyse("How can I learn Python quickly?"), analyse("Best way to learn Python?")
    low, high = text.score(features(a, b, 0.86)), text.score(features(a, b, 0.97))
    assert 0.0 <= low < high <= 1.0


def test_without_both_vectors_the_text_score_and_its_higher_floor_decide(
    verifier: Verifier,
) -> None:
    cal = verifier.calibration
    assert cal.vector is not None
    similarity = (cal.vector.min_similarity + cal.text.min_similarity) / 2
    u, v = pair_at(similarity)
    query, candidate = "How do I learn Rust?", "How can I learn Rust?"
    for partial in ((), (u, None), (None, v)):
        refused = verifier.check(query, candidate, similarity, *partial)
        assert refused.reason == "below_min_similarity"
    assert verifier.check(query, candidate, similarity, u, v).reason != "below_min_similarity"


def test_the_search_floor_is_the_lowest_either_score_accepts() -> None:
    for backend in BACKENDS:
        cal = calibration_for(backend)
        assert cal.vector is not None
        assert cal.min_similarity == cal.vector.min_similarity < cal.text.min_similarity


def known_metric(dim: int = 4) -> VectorScore:
    """A metric that only cares about dimension 0: a difference there costs 20 logits."""
    metric = np.zeros((2, dim), dtype=np.float32)
    metric[1, 0] = -20.0
    weights = (10.0,) + (0.0,) * (len(FEATURES) - 1)  # the cosine's weight
    return VectorScore(0.5, weights, -5.0, 0.5, metric)


def test_the_learned_metric_weighs_a_difference_by_its_dimension() -> None:
    score, values = known_metric(), (0.9, 0.0, 1.0, 1.0)
    u = np.full(4, 0.5, dtype=np.float32)
    apart_in_0 = np.array([0.3, 0.5, 0.7, 0.5], dtype=np.float32)
    apart_in_1 = np.array([0.5, 0.3, 0.7, 0.5], dtype=np.float32)
    apart_in_0 /= np.linalg.norm(apart_in_0)
    apart_in_1 /= np.linalg.norm(apart_in_1)
    assert u @ apart_in_0 == pytest.approx(u @ apart_in_1)  # the same cosine
    assert score.score(u, apart_in_1, values) > 0.9 > 0.5 > score.score(u, apart_in_0, values)


def test_vectors_of_another_dimension_are_refused_loudly() -> None:
    with pytest.raises(ValueError, match="vectors of shape"):
        known_metric(dim=4).score(*pair_at(0.9, dim=8), (0.9, 0.0, 1.0, 1.0))


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_backend_ships_its_metric_weights(backend: str) -> None:
    metric = load_metric(backend)
    assert metric.shape == (2, DIM)
    assert metric.dtype == np.float32
    assert np.isfinite(metric).all()
    assert (metric != 0).mean() > 0.9  # a weight per dimension, not a placeholder
    vector = calibration_for(backend).vector
    assert vector is not None and vector.metric is not None
    assert np.array_equal(vector.metric, metric)


def test_the_backends_are_calibrated_separately() -> None:
    torch, onnx = calibration_for("torch"), calibration_for("onnx-int8")
    assert torch.text != onnx.text
    assert torch.vector is not None and onnx.vector is not None
    assert not np.array_equal(torch.vector.metric, onnx.vector.metric)


def test_an_unknown_backend_gets_the_strictest_text_score_and_no_metric() -> None:
    unknown = calibration_for("some-other-model")
    known = [calibration_for(b).text for b in BACKENDS]
    assert unknown.backend == "some-other-model"
    assert unknown.vector is None  # another model's vectors mean nothing to these weights
    assert unknown.min_similarity >= max(t.min_similarity for t in known)
    assert unknown.text.score_threshold >= max(t.score_threshold for t in known)
    similarity = unknown.min_similarity - 0.01
    verdict = Verifier(unknown).check("a b", "a b", similarity, *pair_at(similarity))
    assert verdict.reason == "below_min_similarity"


def test_a_score_with_the_wrong_number_of_weights_is_refused() -> None:
    with pytest.raises(ValueError, match="weights"):
        TextScore(0.9, weights=(1.0,), bias=0.0, score_threshold=0.5)
    with pytest.raises(ValueError, match="weights"):
        VectorScore(0.9, (1.0,), 0.0, 0.5, np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        VectorScore(0.9, (0.0,) * len(FEATURES), 0.0, 0.5, np.zeros(4, dtype=np.float32))


def test_a_calibration_is_built_once_per_backend() -> None:
    assert calibration_for("onnx-int8") is calibration_for("onnx-int8")
    assert isinstance(calibration_for("torch"), Calibration)


# --- the learned metric on the real model's vectors ---------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def embedded(request: pytest.FixtureRequest) -> tuple[Verifier, Callable[[str], np.ndarray]]:
    """The backend's verifier and its real embedding function (the embedder's own code)."""
    from embedder.model import load_model
    from embedder.settings import EmbedderSettings

    model = load_model(EmbedderSettings(backend=request.param))

    def embed(text: str) -> np.ndarray:
        return np.asarray(model.embed(model.tokenize([text]))[0], dtype=np.float32)

    return Verifier(calibration_for(request.param)), embed


def _check_real(embedded: tuple[Verifier, Callable[[str], np.ndarray]], a: str, b: str) -> Verdict:
    verifier, embed = embedded
    u, v = embed(a), embed(b)
    return verifier.check(a, b, float(u @ v), u, v)


@pytest.mark.model
@pytest.mark.parametrize(
    ("query", "candidate"),
    [
        # The gateway's integration tests rely on the first three being hits.
        ("How do I learn Python quickly?", "How can I learn Python quickly?"),
        ("What is a semantic cache?", "What does a semantic cache do?"),
        ("How can I learn Python quickly?", "How can I learn Python fast?"),
        # At the text score's floor (cosine 0.92) and under its threshold.
        ("How can I learn Python quickly?", "What is the fastest way to learn Python?"),
    ],
)
def test_the_metric_accepts_real_paraphrases(
    embedded: tuple[Verifier, Callable[[str], np.ndarray]], query: str, candidate: str
) -> None:
    verdict = _check_real(embedded, query, candidate)
    assert verdict.accepted, verdict


@pytest.mark.model
@pytest.mark.parametrize(
    ("query", "candidate", "reason"),
    [
        ("Why did the dinosaurs become extinct?", "When did the dinosaurs become extinct?", None),
        ("How do I make pizza dough?", "How do I make bread dough?", None),
        ("What is machine learning?", "What is a machine learning algorithm?", None),
        ("How can I learn Python quickly?", "How can I learn Python quickly in 5 days?", "number"),
        ("Is coffee good for your health?", "Is coffee not good for your health?", "negation"),
    ],
)
def test_the_metric_refuses_real_questions_that_ask_something_else(
    embedded: tuple[Verifier, Callable[[str], np.ndarray]],
    query: str,
    candidate: str,
    reason: str | None,
) -> None:
    verdict = _check_real(embedded, query, candidate)
    assert not verdict.accepted
    assert verdict.reason == (f"{reason}_mismatch" if reason else "below_threshold")
