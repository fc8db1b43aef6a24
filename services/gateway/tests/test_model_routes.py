"""Every model route a client calls, through the gateway to mock replicas, as the
official ``openai`` client (and plain HTTP, for vLLM's own routes) sees it:
``/v1/responses`` streamed and not, ``/v1/models/{id}``, vLLM's ``/tokenize``,
``/detokenize``, rerank and score, embeddings served by a backend or the sidecar."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from fake_sidecars import FakeSidecars

from gateway.balance import Pool, PoolConfig
from gwkit import MODEL, MakeBackend, MakeGateway, backend, chat, metric


def sdk(gw: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key="unused", http_client=gw, max_retries=0
    )


async def mock_requests(url: str, path: str) -> float:
    async with httpx.AsyncClient() as client:
        return metric(
            (await client.get(f"{url}/metrics")).text, "mockllm_requests_total", endpoint=path
        )


async def test_responses_answer_what_chat_answers_streamed_and_not(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    client = sdk(gw)
    whole = await client.responses.create(model=MODEL, input="tell me")
    said = (await gw.post("/v1/chat/completions", json=chat("tell me"))).json()
    assert whole.status == "completed" and whole.id.startswith("resp_")
    assert whole.output_text == said["choices"][0]["message"]["content"]
    assert whole.usage is not None and whole.usage.output_tokens == 8

    kinds, text = [], ""
    async with await client.responses.create(model=MODEL, input="tell me", stream=True) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert text == whole.output_text

    page = (await gw.get("/metrics")).text
    ok = {"route": "/v1/responses", "status": "200", "model": MODEL}
    assert metric(page, "gateway_requests_total", **ok) == 2
    assert metric(page, "gateway_tokens_total", model=MODEL, direction="out") == 8 * 3


async def test_a_length_stop_is_an_incomplete_response_not_an_error(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    reply = await gw.post(
        "/v1/responses",
        json={"model": MODEL, "input": "hi", "max_output_tokens": 2, "stream": True},
    )
    assert "event: response.incomplete" in reply.text
    assert "event: error" not in reply.text


async def test_a_responses_stream_cut_by_its_replica_ends_with_an_error_the_sdk_raises(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend())])
    cut = {"X-Mock-Fault": "cut:3"}
    reply = await gw.post(
        "/v1/responses", json={"model": MODEL, "input": "hi", "stream": True}, headers=cut
    )
    assert reply.text.count("event: response.output_text.delta") == 3
    assert reply.text.rstrip().split("\n\n")[-1].startswith("event: error\ndata: ")
    with pytest.raises(openai.APIError, match="ended the stream"):
        stream = await sdk(gw).responses.create(
            model=MODEL, input="hi", stream=True, extra_headers=cut
        )
        async for _ in stream:
            pass
    page = (await gw.get("/metrics")).text
    assert metric(page, "gateway_requests_total", route="/v1/responses", status="200") == 2


@pytest.mark.parametrize("fault", ["status:503", "error-event:0"])
async def test_responses_fail_over_before_the_first_byte(
    make_backend: MakeBackend, make_gateway: MakeGateway, fault: str
) -> None:
    bad = await make_backend(fault=fault)
    good = await make_backend()
    gw = await make_gateway([backend(bad), backend(good)])
    for stream in (True, False) * 4:
        reply = await gw.post(
            "/v1/responses", json={"model": MODEL, "input": "hi", "stream": stream}
        )
        assert reply.status_code == 200
        assert ("response.completed" in reply.text) if stream else reply.json()["status"]
        assert "response.failed" not in reply.text


async def test_a_follow_up_goes_to_the_replica_that_stored_the_response(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    """Each mock replica keeps the responses it made, as vLLM does, and answers 404 to
    a previous_response_id it lacks: unpinned, two follow-ups in three would fail."""
    urls = [await make_backend() for _ in range(3)]
    gw = await make_gateway([backend(url) for url in urls])
    first = (await gw.post("/v1/responses", json={"model": MODEL, "input": "hi"})).json()
    where = [await mock_requests(url, "/v1/responses") for url in urls]
    holder = where.index(1)
    for stream in (False, True) * 5:
        body = {"model": MODEL, "input": "and then?", "previous_response_id": first["id"]}
        reply = await gw.post("/v1/responses", json={**body, "stream": stream})
        assert reply.status_code == 200, reply.text
    after = [await mock_requests(url, "/v1/responses") for url in urls]
    assert after[holder] == 11 and sum(after) == 11
    stored = await sdk(gw).responses.retrieve(first["id"])
    assert (
        stored.id == first["id"] and stored.output_text == first["output"][0]["content"][0]["text"]
    )
    page = (await gw.get("/metrics")).text
    assert metric(page, "gateway_requests_total", route="/v1/responses/{id}", status="200") == 1
    # An id nobody answered is routed as any request (and the replica says it lacks it);
    # asked for by id, the gateway says so itself.
    for _ in range(6):
        body = {"model": MODEL, "input": "x", "previous_response_id": "resp_unknown"}
        reply = await gw.post("/v1/responses", json=body)
        assert reply.status_code == 404 and "resp_unknown" in reply.json()["error"]["message"]
    spread = [await mock_requests(url, "/v1/responses") for url in urls]
    assert sum(1 for a, b in zip(after, spread, strict=True) if b > a) >= 2
    with pytest.raises(openai.NotFoundError):
        await sdk(gw).responses.retrieve("resp_unknown")


async def test_models_are_retrieved_by_id_and_unknown_ones_are_404(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    url = await make_backend(models="org/model-a,mock-llama-3-8b")
    gw = await make_gateway([backend(url, "org/model-a", MODEL)])
    model = await sdk(gw).models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    assert (await gw.get("/v1/models/org/model-a")).json()["id"] == "org/model-a"
    with pytest.raises(openai.NotFoundError):
        await sdk(gw).models.retrieve("gpt-nothing")
    missing = await gw.get("/v1/models/gpt-nothing")
    assert missing.json()["error"]["code"] == "model_not_found"


async def test_vllm_routes_pass_through_to_the_models_pool_with_failover(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway(
        [backend(await make_backend(fault="status:503")), backend(await make_backend())]
    )
    for _ in range(3):  # whichever replica is tried first, the answer comes
        tokens = await gw.post("/tokenize", json={"model": MODEL, "prompt": "héllo"})
        assert tokens.status_code == 200 and tokens.json()["count"] == len("héllo".encode())
        back = await gw.post(
            "/detokenize", json={"model": MODEL, "tokens": tokens.json()["tokens"]}
        )
        assert back.json()["prompt"] == "héllo"
    docs = ["a blue river", "the red car", "blue car"]
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        ranked = await gw.post(path, json={"model": MODEL, "query": "blue car", "documents": docs})
        assert ranked.json()["results"][0]["index"] == 2
    scored = await gw.post(
        "/v1/score", json={"model": MODEL, "text_1": "a b", "text_2": ["a", "c"]}
    )
    assert [d["score"] for d in scored.json()["data"]] == [0.5, 0.0]
    unknown = await gw.post("/tokenize", json={"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    nameless = await gw.post("/tokenize", json={"prompt": "x"})
    assert nameless.status_code == 400 and "model" in nameless.json()["error"]["message"]
    page = (await gw.get("/metrics")).text
    assert metric(page, "gateway_requests_total", route="/tokenize", status="200") == 3
    assert metric(page, "gateway_requests_total", route="/v1/rerank", status="200") == 1


async def test_embeddings_go_to_the_backend_serving_the_model_or_to_the_sidecar(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    url = await make_backend(models="mock-embed")
    gw = await make_gateway(
        [backend(await make_backend()), backend(url, "mock-embed")],
        embedder_target=sidecars.target,
    )
    client = sdk(gw)
    served = await client.embeddings.create(model="mock-embed", input=["a", "b"])
    assert len(served.data) == 2 and len(served.data[0].embedding) == 16
    assert await mock_requests(url, "/v1/embeddings") == 1
    own = await client.embeddings.create(model="all-MiniLM-L6-v2", input="a")
    assert len(own.data[0].embedding) == 64  # the sidecar's
    for _ in range(50):  # the sidecar's model is listed once the gateway has asked it
        listed = [m.id async for m in client.models.list()]
        if "all-MiniLM-L6-v2" in listed:
            break
        await asyncio.sleep(0.1)
    assert sorted(listed) == sorted(["all-MiniLM-L6-v2", MODEL, "mock-embed"])
    assert (await client.models.retrieve("all-MiniLM-L6-v2")).owned_by == "llmgw-embedder"
    with pytest.raises(openai.NotFoundError):
        await client.embeddings.create(model="nobody-serves-this", input="a")


async def test_the_openai_client_works_unchanged_through_the_cache(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await make_gateway(
        [backend(await make_backend())],
        cache_target=sidecars.target,
        embedder_target=sidecars.target,
        cache_lookup_budget_ms=2000,
        cache_speculative=False,
    )
    client = sdk(gw)
    ask = {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}
    first = await client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
    await sidecars.wait_stores(1)
    again = await client.chat.completions.with_raw_response.create(**ask)  # type: ignore[call-overload]
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT-EXACT")
    said = first.parse().choices[0].message.content
    assert again.parse().choices[0].message.content == said
    streamed = await client.chat.completions.create(**ask, stream=True)  # type: ignore[call-overload]
    assert "".join([c.choices[0].delta.content or "" async for c in streamed if c.choices]) == said

    once = {"model": MODEL, "prompt": "once", "temperature": 0}
    text = (await client.completions.create(**once)).choices[0].text
    await sidecars.wait_stores(2)
    hit = await client.completions.with_raw_response.create(**once)
    assert hit.headers["x-cache"] == "HIT-EXACT" and hit.parse().choices[0].text == text

    vectors = await client.embeddings.create(model="all-MiniLM-L6-v2", input=["a", "b"])
    assert len(vectors.data) == 2
    answer = await client.responses.with_raw_response.create(model=MODEL, input="hi")
    assert "x-cache" not in answer.headers  # not cached (api.model_routes says why)
    assert (
        answer.parse().output_text
        == (await client.responses.create(model=MODEL, input="hi")).output_text
    )
    assert (await client.models.retrieve(MODEL)).id == MODEL


async def test_a_response_whose_replica_left_the_pool_is_a_404_not_a_503(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    """What a replica stored leaves with it: an SDK must not retry a 503 for it."""
    urls = [await make_backend() for _ in range(2)]
    pool = Pool(PoolConfig())
    gw = await make_gateway([backend(url) for url in urls], pool=pool)
    first = (await gw.post("/v1/responses", json={"model": MODEL, "input": "hi"})).json()
    where = [await mock_requests(url, "/v1/responses") for url in urls]
    holder = urls[where.index(1)]
    pool.update([spec for spec in pool.specs(MODEL) if spec.url != holder])
    body = {"model": MODEL, "input": "and then?", "previous_response_id": first["id"]}
    for reply in (
        await gw.post("/v1/responses", json=body),
        await gw.get(f"/v1/responses/{first['id']}"),
    ):
        assert reply.status_code == 404, reply.text
        assert "left the pool" in reply.json()["error"]["message"]
