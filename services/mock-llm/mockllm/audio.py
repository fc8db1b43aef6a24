"""vLLM's speech-to-text routes: ``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

A multipart form, as OpenAI's: ``file`` (the audio), ``model``, and optionally
``language``, ``prompt``, ``response_format`` (``json``, the default, or
``text``), ``temperature``. The "transcript" is deterministic: a few words
drawn from a hash of the file's bytes, so a test can tell which bytes arrived
and that they arrived whole. Streamed transcription is not served.
"""

from __future__ import annotations

import hashlib

import orjson
from aiohttp import web

from mockllm.errors import BadRequest, ModelNotFound

_WORDS = ("the", "river", "blue", "morning", "quietly", "seven", "north", "bright", "stone")


def transcript(audio: bytes) -> str:
    """The words the mock "hears" in ``audio``: eight, chosen by its hash."""
    digest = hashlib.blake2b(audio, digest_size=8).digest()
    return " ".join(_WORDS[b % len(_WORDS)] for b in digest)


async def transcribe(request: web.Request, models: tuple[str, ...]) -> web.Response:
    if not request.content_type.startswith("multipart/form-data"):
        raise BadRequest("The request must be a multipart/form-data form.")
    form = await request.post()
    model = form.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: Field required")
    if model not in models:
        raise ModelNotFound(model)
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise BadRequest("file: Field required")
    audio = upload.file.read()
    text = transcript(audio)
    if form.get("response_format") == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    body = {"text": text, "usage": {"type": "duration", "seconds": max(1, len(audio) // 32_000)}}
    return web.Response(body=orjson.dumps(body), content_type="application/json")
