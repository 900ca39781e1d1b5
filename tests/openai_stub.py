"""A small OpenAI-compatible server for the voice agent's room tests: real HTTP on 127.0.0.1,
scripted answers, and a record of every request.

- `POST /v1/audio/transcriptions` (what livekit-plugins-openai's non-streaming STT sends: a
  multipart form with a WAV `file`, `model`, `language`, `response_format`) answers
  `{"text": ...}` from `transcribe(audio, sample_rate)`.
- `POST /v1/chat/completions` with `"stream": true` answers the scripted reply for the
  conversation's last user message as server-sent `chat.completion.chunk` events, a word per
  event (a usage chunk and `data: [DONE]` last), the way the openai SDK parses them.

Replies are looked up by the user's text, not taken in turn: the agent may ask twice for
one turn (preemptive generation, then the committed turn), and both must get the same answer.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soundfile as sf
from aiohttp import web

NOTHING_TO_SAY = "I have nothing to add."


@dataclass
class Transcription:
    audio: np.ndarray  # float32 mono, as the STT received it
    sample_rate: int
    form: dict[str, str]  # the other form fields (model, language, response_format...)
    text: str  # what the stub answered
    received_at: float  # time.monotonic()

    @property
    def duration(self) -> float:
        return self.audio.size / self.sample_rate


@dataclass
class ChatRequest:
    body: dict[str, Any]
    reply: str
    received_at: float  # time.monotonic()

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    def texts(self, role: str) -> list[str]:
        """The text of every message of `role` (content given as a string or as parts)."""
        texts = []
        for message in self.messages:
            if message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            texts.append(content or "")
        return texts


@dataclass
class OpenAIStub:
    """Start with `await stub.start()`, point OPENAI_BASE_URL at `stub.base_url`."""

    transcribe: Callable[[np.ndarray, int], str] = lambda audio, rate: ""
    replies: dict[str, str] = field(default_factory=dict)  # user text -> the agent's answer
    word_interval_s: float = 0.01  # pace of the streamed reply (an LLM's tokens)
    transcriptions: list[Transcription] = field(default_factory=list)
    chats: list[ChatRequest] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/audio/transcriptions", self._transcriptions)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reply_to(self, user_text: str) -> str:
        return self.replies.get(user_text.strip(), NOTHING_TO_SAY)

    async def _transcriptions(self, request: web.Request) -> web.Response:
        form: dict[str, str] = {}
        audio, rate = np.zeros(0, np.float32), 0
        async for part in await request.multipart():
            if part.name == "file":
                wav = await part.read()  # type: ignore[union-attr]
                audio, rate = sf.read(io.BytesIO(bytes(wav)), dtype="float32")
                if audio.ndim > 1:
                    audio = audio.mean(axis=1)
            elif part.name:
                form[part.name] = await part.text()  # type: ignore[union-attr]
        if not rate:
            return web.json_response({"error": {"message": "no audio file"}}, status=400)
        text = self.transcribe(audio, rate)
        self.transcriptions.append(Transcription(audio, rate, form, text, time.monotonic()))
        if form.get("response_format") == "verbose_json":
            return web.json_response({"text": text, "language": "english", "duration": 0.0})
        return web.json_response({"text": text})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        chat = ChatRequest(body, "", time.monotonic())
        last_user = chat.texts("user")[-1] if users else ""
        chat.reply = self.reply_to(last_user)
        self.chats.append(chat)
        if not body.get("stream"):
            return web.json_response({"error": {"message": "only streaming is scripted"}}, 400)

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        model = str(body.get("model", "scripted"))
        completion_id = f"chatcmpl-{len(self.chats)}"

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": choices,
                **extra,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        words = chat.reply.split(" ")
        for i, word in enumerate(words):
            delta = {"content": word if i == 0 else f" {word}"}
            if i == 0:
                delta["role"] = "assistant"
            await send([{"index": 0, "delta": delta, "finish_reason": None}])
            await asyncio.sleep(self.word_interval_s)
        await send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        usage = {
            "prompt_tokens": 10,
            "completion_tokens": len(words),
            "total_tokens": 10 + len(words),
        }
        await send([], usage=usage)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
