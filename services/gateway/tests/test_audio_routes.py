"""vLLM's speech-to-text routes through the gateway: the official openai client's
multipart forms, routed by the form's model, forwarded byte for byte, failed over."""

from __future__ import annotations

import os

import httpx
import openai
import pytest

from gwkit import FirstTry, MakeBackend, MakeGateway, backend, metric
from mockllm.audio import transcript

WHISPER = "whisper-small"


def sdk(gw: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key="unused", http_client=gw, max_retries=0
    )


async def test_the_openai_client_transcribes_and_translates_through_the_pool_of_its_model(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    failing = await make_backend(models=WHISPER, fault="status:503")
    serving = await make_backend(models=WHISPER)
    chat_only = await make_backend()
    gw = await make_gateway(
        [backend(failing, WHISPER), backend(serving, WHISPER), backend(chat_only)],
        pool=FirstTry(first=failing),
    )
    audio = os.urandom(3 * 1024 * 1024)  # above the 1 MiB JSON body limit
    client = sdk(gw)
    for _ in range(3):  # each tried first on the failing replica, then failed over
        heard = await client.audio.transcriptions.create(
            model=WHISPER, file=("speech.wav", audio, "audio/wav"), language="en"
        )
        assert heard.text == transcript(audio)  # every byte arrived
    translated = await gw.post(
        "/v1/audio/translations",
        data={"model": WHISPER, "response_format": "text"},
        files={"file": ("speech.wav", audio[:1000], "audio/wav")},
    )
    assert translated.status_code == 200
    assert translated.headers["content-type"].startswith("text/plain")
    assert translated.text.strip() == transcript(audio[:1000])
    page = (await gw.get("/metrics")).text
    route = "/v1/audio/transcriptions"
    assert metric(page, "gateway_requests_total", route=route, status="200") == 3
    assert metric(page, "gateway_upstream_attempts_total", endpoint=failing) == 4
    assert metric(page, "gateway_upstream_attempts_total", endpoint=chat_only) == 0


async def test_a_form_without_a_model_or_for_an_unknown_one_is_refused(
    make_backend: MakeBackend, make_gateway: MakeGateway
) -> None:
    gw = await make_gateway([backend(await make_backend(models=WHISPER), WHISPER)])
    files = {"file": ("a.wav", b"RIFF", "audio/wav")}
    nameless = await gw.post("/v1/audio/transcriptions", files=files)
    assert nameless.status_code == 400 and "model" in nameless.json()["error"]["message"]
    as_json = await gw.post("/v1/audio/transcriptions", json={"model": WHISPER})
    assert as_json.status_code == 400
    with pytest.raises(openai.NotFoundError):
        await sdk(gw).audio.transcriptions.create(model="nope", file=("a.wav", b"RIFF"))
    huge = await gw.post(
        "/v1/audio/transcriptions",
        data={"model": WHISPER},
        files={"file": ("a.wav", b"x" * (26 * 1024 * 1024), "audio/wav")},
    )
    assert huge.status_code == 413
