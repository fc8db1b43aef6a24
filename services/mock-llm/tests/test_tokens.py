"""The token generator: deterministic, prompt- and model-dependent, readable."""

from mockllm.tokens import VOCABULARY, estimate_tokens, generate_tokens


def test_same_model_and_prompt_give_the_same_tokens() -> None:
    assert generate_tokens("m", "hello there", 50) == generate_tokens("m", "hello there", 50)


def test_prompt_and_model_change_the_tokens() -> None:
    base = generate_tokens("m", "hello there", 32)
    assert generate_tokens("m", "hello there!", 32) != base
    assert generate_tokens("other", "hello there", 32) != base


def test_count_is_exact_and_shorter_output_is_a_prefix() -> None:
    long = generate_tokens("m", "p", 200)  # spans several digest blocks
    assert len(long) == 200
    assert generate_tokens("m", "p", 7) == long[:7]
    assert generate_tokens("m", "p", 0) == ()


def test_tokens_are_vocabulary_words_spaced_like_bpe() -> None:
    tokens = generate_tokens("m", "p", 100)
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" ") for t in tokens[1:])
    assert {t.strip() for t in tokens} <= set(VOCABULARY)
    assert len(set(tokens)) > 20  # not one word repeated


def test_vocabulary_has_one_distinct_word_per_byte() -> None:
    assert len(VOCABULARY) == 256 == len(set(VOCABULARY))


def test_prompt_estimate_is_stable_and_grows_with_the_prompt() -> None:
    assert estimate_tokens("") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("word " * 100) == estimate_tokens("word " * 100) == 125
