"""Bot API transport for python-telegram-bot on aiohttp: one pooled keep-alive session per bot.

PTB's default httpx transport costs several times more CPU per call on loopback; this one only moves bytes.
It must never put the request URL into an error or a log line: the URL carries the bot token.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Conflict,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TimedOut,
)
from telegram.request import BaseRequest, RequestData

from bot import jsoncodec

_JSON_HEADERS = {"Content-Type": "application/json", "User-Agent": BaseRequest.USER_AGENT}


class AiohttpRequest(BaseRequest):
    """A `telegram.request.BaseRequest` on an aiohttp ClientSession.

    One instance per use: PTB gives getUpdates its own request object so that a long poll never takes a
    connection that a send is waiting for.
    """

    __slots__ = ("_connect_timeout", "_limit", "_pool_timeout", "_read_timeout", "_session")

    def __init__(self, *, connection_pool_size: int = 64, read_timeout: float | None = 10.0,
                 connect_timeout: float | None = 5.0, pool_timeout: float | None = 5.0) -> None:
        self._limit = connection_pool_size
        self._read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._session: aiohttp.ClientSession | None = None

    @property
    def read_timeout(self) -> float | None:
        return self._read_timeout

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=self._limit, ttl_dns_cache=300,
                                             enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(connector=connector, json_serialize=json.dumps,
                                                  skip_auto_headers=("User-Agent",))

    async def shutdown(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _pick(self, value: Any, default: float | None) -> float | None:
        return default if value is BaseRequest.DEFAULT_NONE else value

    async def do_request(self, url: str, method: str, request_data: RequestData | None = None,
                         read_timeout: Any = BaseRequest.DEFAULT_NONE, write_timeout: Any = BaseRequest.DEFAULT_NONE,
                         connect_timeout: Any = BaseRequest.DEFAULT_NONE,
                         pool_timeout: Any = BaseRequest.DEFAULT_NONE) -> tuple[int, bytes]:
        if self._session is None or self._session.closed:
            await self.initialize()
        assert self._session is not None
        read = self._pick(read_timeout, self._read_timeout)
        connect = self._pick(connect_timeout, self._connect_timeout)
        pool = self._pick(pool_timeout, self._pool_timeout)
        # aiohttp has no write timeout of its own; Bot API bodies (no uploads here) go out in one write.
        timeout = aiohttp.ClientTimeout(total=None, connect=None if connect is None and pool is None
                                        else (connect or 0.0) + (pool or 0.0),
                                        sock_connect=connect, sock_read=read)
        data: Any = None
        headers: dict[str, str] | None = None
        if request_data is not None:
            if request_data.contains_files:
                form = aiohttp.FormData(quote_fields=False)
                for name, value in request_data.json_parameters.items():
                    form.add_field(name, value)
                for name, part in request_data.multipart_data.items():
                    if isinstance(part, tuple):
                        filename, content = part[0], part[1]
                        mime = part[2] if len(part) > 2 else None
                        form.add_field(name, content, filename=filename, content_type=mime)
                    else:
                        form.add_field(name, part)
                data = form
                headers = {"User-Agent": BaseRequest.USER_AGENT}
            else:
                data = json.dumps(request_data.parameters, ensure_ascii=False).encode()
                headers = _JSON_HEADERS
        try:
            async with self._session.request(method, url, data=data, headers=headers, timeout=timeout) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise TimedOut("Bot API call timed out") from exc
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as exc:
            # Only the class name: str(exc) of some aiohttp errors embeds the URL, and with it the token.
            raise NetworkError(f"Bot API unreachable ({type(exc).__name__})") from None

    async def post_json(self, url: str, body: bytes, seconds: float, read_seconds: float) -> tuple[int, bytes]:
        """The send path's one call: a JSON body already encoded, no RequestData, no PTB parameter objects."""
        if self._session is None or self._session.closed:
            await self.initialize()
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds, sock_read=read_seconds)
        try:
            async with self._session.post(url, data=body, headers=_JSON_HEADERS, timeout=timeout) as resp:
                return resp.status, await resp.read()
        except TimeoutError as exc:
            raise TimedOut("Bot API call timed out") from exc
        except asyncio.CancelledError:
            raise
        except aiohttp.ClientError as exc:
            raise NetworkError(f"Bot API unreachable ({type(exc).__name__})") from None


def raise_for_answer(status: int, raw: bytes) -> Any:
    """The `result` of a Bot API answer, or the exception python-telegram-bot would raise for it (same classes,
    same messages), so the sender's handling of 429, 403, 400 and 5xx does not depend on which path sent."""
    try:
        answer = jsoncodec.loads(raw)
    except ValueError:
        answer = None
    if 200 <= status <= 299 and isinstance(answer, dict) and answer.get("ok"):
        return answer.get("result")
    if not isinstance(answer, dict):
        raise NetworkError(f"Unparseable Bot API answer ({status})")
    message = str(answer.get("description") or f"HTTP {status}")
    parameters = answer.get("parameters")
    if isinstance(parameters, dict):
        if parameters.get("migrate_to_chat_id"):
            raise ChatMigrated(int(parameters["migrate_to_chat_id"]))
        if parameters.get("retry_after"):
            raise RetryAfter(int(parameters["retry_after"]))
    if status == 403:
        raise Forbidden(message)
    if status in (401, 404):
        raise InvalidToken(message)
    if status == 400:
        raise BadRequest(message)
    if status == 409:
        raise Conflict(message)
    raise NetworkError(message)
