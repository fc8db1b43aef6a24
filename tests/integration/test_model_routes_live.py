"""The other model routes through the real gateway process (uvicorn, the streaming
data plane), as the official openai client and plain HTTP see them."""

from __future__ import annotations

import httpx
import openai
import pytest

from deploy.local.harness import MOCK_MODEL, Stack
from mockllm.audio import transcript


def test_responses_streamed_whole_and_cut_through_the_real_gateway(stack: Stack) -> None:
    _, mock = stack.mock(output_tokens=16, ttft_ms=5, inter_token_ms=2)
    _, other = stack.mock("mock-2", output_tokens=16, ttft_ms=5, inter_token_ms=2)
    _, gw = stack.gateway([mock, other])
    client = openai.OpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0)
    whole = client.responses.create(model=MOCK_MODEL, input="Say something")
    assert whole.status == "completed" and whole.usage is not None
    text, kinds = "", []
    for event in client.responses.create(model=MOCK_MODEL, input="Say something", stream=True):
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
    assert text == whole.output_text and kinds[-1] == "response.completed"
    # A follow-up reaches the replica that stored the first response (the other 404s).
    for _ in range(6):
        follow = client.responses.create(
            model=MOCK_MODEL, input="and?", previous_response_id=whole.id, stream=True
        )
        assert [e.type for e in follow][-1] == "response.completed"
    assert client.responses.retrieve(whole.id).output_text == whole.output_text
    # Cut by its replica after 3 tokens: the client's stream ends with an error event
    # (a Responses stream is not continued), which the SDK raises.
    with pytest.raises(openai.APIError, match="ended the stream"):
        for _ in client.responses.create(
            model=MOCK_MODEL, input="x", stream=True, extra_headers={"X-Mock-Fault": "cut:3"}
        ):
            pass


def test_vllm_routes_and_model_lookup_through_the_real_gateway(stack: Stack) -> None:
    _, mock = stack.mock(models=f"{MOCK_MODEL},embed-small")
    _, gw = stack.gateway([{"url": mock, "models": [MOCK_MODEL, "embed-small"]}])
    tokens = httpx.post(f"{gw}/tokenize", json={"model": MOCK_MODEL, "prompt": "hello"}).json()
    assert tokens["count"] == 5
    back = httpx.post(f"{gw}/detokenize", json={"model": MOCK_MODEL, "tokens": tokens["tokens"]})
    assert back.json() == {"prompt": "hello"}
    client = openai.OpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0)
    vectors = client.embeddings.create(model="embed-small", input=["a", "b", "c"])
    assert [len(d.embedding) for d in vectors.data] == [16, 16, 16]
    assert client.models.retrieve("embed-small").id == "embed-small"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    heard = client.audio.transcriptions.create(model=MOCK_MODEL, file=("a.wav", b"RIFF" * 9))
    assert heard.text == transcript(b"RIFF" * 9)
    page = httpx.get(f"{gw}/metrics").text
    assert 'route="/tokenize"' in page and 'route="/v1/embeddings"' in page
    assert 'route="/v1/audio/transcriptions"' in page


def test_stored_responses_are_found_through_every_gateway_replica_sharing_redis(
    stack: Stack, redis_url: str
) -> None:
    """Two gateway processes that share only Redis, two replicas: a response created
    through one gateway is followed up and retrieved through the other. The
    follow-up must reach the replica that stored it (the other answers 404); without
    shared pins the second gateway would route it as any request, and half would fail."""
    _, one = stack.mock(output_tokens=8, ttft_ms=2, inter_token_ms=0)
    _, two = stack.mock("mock-2", output_tokens=8, ttft_ms=2, inter_token_ms=0)
    gateways = [stack.gateway([one, two], redis_url=redis_url)[1] for _ in range(2)]
    made, other = (
        openai.OpenAI(base_url=f"{gw}/v1", api_key="unused", max_retries=0) for gw in gateways
    )
    for i in range(12):
        first = made.responses.create(model=MOCK_MODEL, input=f"question {i}", stream=i % 2 == 0)
        if i % 2 == 0:
            first = next(e for e in first if e.type == "response.completed").response
        follow = other.responses.create(
            model=MOCK_MODEL, input="and then?", previous_response_id=first.id
        )
        assert follow.status == "completed"
        assert other.responses.retrieve(first.id).id == first.id
    with pytest.raises(openai.NotFoundError):  # an id no gateway answered: its own 404
        other.responses.retrieve("resp_nobody_made")
