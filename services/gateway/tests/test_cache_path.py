"""The cache in the request path, as a client sees it, against fake sidecars."""

from __future__ import annotations

from typing import Any

from fake_sidecars import FakeSidecars

from gwkit import MakeBackend, MakeGateway, backend, chat, content, events


def det(text: str, **extra: Any) -> dict[str, Any]:
    return chat(text, temperature=0, **extra)


async def cached_gateway(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars, **settings: Any
):  # type: ignore[no-untyped-def]
    url = await make_backend()
    # Hits must not depend on how busy the machine is: the budget is tested on its own,
    # and so is the race of a lookup against the upstream (test_cache_race.py).
    settings.setdefault("cache_lookup_budget_ms", 2000)
    settings.setdefault("cache_speculative", False)
    return await make_gateway(
        [backend(url)],
        cache_target=sidecars.target,
        embedder_target=sidecars.target,
        admin_key="admin",
        **settings,
    )


async def test_repeat_request_is_an_exact_hit_with_the_same_answer_both_ways(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    first = await gw.post("/v1/chat/completions", json=det("What is FAISS?", stream=True))
    assert first.headers["x-cache"] == "MISS"
    await sidecars.wait_stores(1)
    again = await gw.post("/v1/chat/completions", json=det("What is FAISS?", stream=True))
    assert again.headers["x-cache"] == "HIT-EXACT"
    assert content(again.text) == content(first.text)
    assert events(again.text)[-1] == "[DONE]"
    unary = await gw.post("/v1/chat/completions", json=det("What is FAISS?"))
    assert unary.headers["x-cache"] == "HIT-EXACT"
    assert unary.json()["choices"][0]["message"]["content"] == content(first.text)
    assert unary.json()["id"].startswith("chatcmpl-")


async def test_paraphrase_is_a_semantic_hit_with_its_similarity(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    await gw.post("/v1/chat/completions", json=det("how do I learn python quickly"))
    await sidecars.wait_stores(1)
    reply = await gw.post("/v1/chat/completions", json=det("quickly learn python how do I"))
    assert reply.headers["x-cache"] == "HIT-SEMANTIC"
    assert float(reply.headers["x-cache-similarity"]) > 0.95


async def test_other_model_temperature_or_conversation_does_not_hit(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    await gw.post("/v1/chat/completions", json=det("What is FAISS?"))
    await sidecars.wait_stores(1)
    other_params = await gw.post("/v1/chat/completions", json=det("What is FAISS?", max_tokens=5))
    assert other_params.headers["x-cache"] == "MISS"
    hot = await gw.post("/v1/chat/completions", json=chat("What is FAISS?", temperature=0.8))
    assert hot.headers["x-cache"] == "BYPASS"
    history = {
        "model": "mock-llama-3-8b",
        "temperature": 0,
        "messages": [
            {"role": "user", "content": "Tell me about Redis"},
            {"role": "assistant", "content": "It is a store."},
            {"role": "user", "content": "What is FAISS?"},
        ],
    }
    assert (await gw.post("/v1/chat/completions", json=history)).headers["x-cache"] == "MISS"


async def test_failed_and_truncated_streams_are_not_stored(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    for fault in ("cut:3", "error-event:3", "status:500"):
        await gw.post(
            "/v1/chat/completions",
            json=det(f"q {fault}", stream=True),
            headers={"X-Mock-Fault": fault},
        )
    await gw.post("/v1/chat/completions", json=det("fine", stream=True))
    await sidecars.wait_stores(1)
    assert sidecars.cache.count() == 1
    again = await gw.post("/v1/chat/completions", json=det("q cut:3", stream=True))
    assert again.headers["x-cache"] == "MISS"


async def test_cache_control_no_store_and_no_cache(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    no_store = await gw.post(
        "/v1/chat/completions", json=det("a"), headers={"Cache-Control": "no-store"}
    )
    assert no_store.headers["x-cache"] == "BYPASS"
    await gw.post("/v1/chat/completions", json=det("b"))
    await sidecars.wait_stores(1)
    assert sidecars.cache.count() == 1
    fresh = await gw.post(
        "/v1/chat/completions", json=det("b"), headers={"Cache-Control": "no-cache"}
    )
    assert fresh.headers["x-cache"] == "MISS"
    forced = await gw.post(
        "/v1/chat/completions", json=chat("c", temperature=1), headers={"X-LLMGW-Cache": "force"}
    )
    assert forced.headers["x-cache"] == "MISS"


async def test_slow_or_failing_sidecars_cost_a_miss_never_an_error(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars, cache_lookup_budget_ms=50)
    await gw.post("/v1/chat/completions", json=det("cached"))
    await sidecars.wait_stores(1)
    sidecars.cache.faults.delay_s = 0.5
    slow = await gw.post("/v1/chat/completions", json=det("cached"))
    assert (slow.status_code, slow.headers["x-cache"]) == (200, "MISS")
    sidecars.cache.faults.delay_s = 0
    sidecars.embedder.faults.fail = True
    no_embedder = await gw.post("/v1/chat/completions", json=det("cached"))
    assert no_embedder.headers["x-cache"] == "HIT-EXACT"  # exact lookups go on
    sidecars.cache.faults.fail = True
    for _ in range(8):
        reply = await gw.post("/v1/chat/completions", json=det("cached", stream=True))
        assert (reply.status_code, reply.headers["x-cache"]) == (200, "MISS")
    calls = sidecars.cache.faults.calls
    await gw.post("/v1/chat/completions", json=det("cached"))
    assert sidecars.cache.faults.calls == calls  # its breaker stopped calling it
    metrics = (await gw.get("/metrics")).text
    assert 'gateway_cache_lookups_total{outcome="skipped"}' in metrics


async def test_long_prompts_are_exact_only(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars, cache_max_embed_chars=100)
    long = "word " * 100
    await gw.post("/v1/chat/completions", json=det(long))
    await sidecars.wait_stores(1)
    assert (await gw.post("/v1/chat/completions", json=det(long))).headers["x-cache"] == (
        "HIT-EXACT"
    )
    assert sidecars.embedder.faults.calls == 0
    [entry] = [e for entries in sidecars.cache.entries.values() for e in entries]
    assert entry.vector == []


async def test_admin_invalidates_and_reports_stats_with_the_admin_key_only(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    await gw.post("/v1/chat/completions", json=det("x"))
    await sidecars.wait_stores(1)
    assert (await gw.get("/admin/cache/stats")).status_code == 401
    admin = {"Authorization": "Bearer admin"}
    assert (await gw.get("/admin/cache/stats", headers=admin)).json()["entries"] == 1
    removed = await gw.post(
        "/admin/cache/invalidate", headers=admin, json={"chat_request": det("anything")}
    )
    assert removed.json() == {"removed": 1}
    assert (await gw.post("/v1/chat/completions", json=det("x"))).headers["x-cache"] == "MISS"
    bad = await gw.post("/admin/cache/invalidate", headers=admin, json={})
    assert bad.status_code == 400


async def test_embeddings_endpoint_speaks_openai(
    make_backend: MakeBackend, make_gateway: MakeGateway, sidecars: FakeSidecars
) -> None:
    gw = await cached_gateway(make_backend, make_gateway, sidecars)
    reply = await gw.post(
        "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": ["a b", "c"]}
    )
    assert reply.status_code == 200
    body = reply.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == 64
    wrong = await gw.post("/v1/embeddings", json={"model": "text-embedding-3-large", "input": "x"})
    assert wrong.status_code == 404
    sidecars.embedder.faults.fail = True
    down = await gw.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "x"})
    assert down.status_code == 503
    assert down.json()["error"]["type"] == "service_unavailable"
