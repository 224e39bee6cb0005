"""The WeChat server API the bot calls: access token, customer-service and template messages, the custom menu.

The access token is fetched by one holder at a time and shared through a TokenStore, because every fetch
invalidates the previous token for all holders. 40001/42001/40014 (a token WeChat no longer accepts) cause
one refresh and one retry, never a loop.
It must never log the AppSecret or a token (both travel in URLs), nor the text it sends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.weixin.qq.com"
# Refresh this long before WeChat's expiry (7200 s), so a token never dies in flight.
REFRESH_MARGIN_SECONDS = 300.0
TOKEN_REJECTED = frozenset({40001, 40014, 42001})
# 45015: the 48 h reply window is over; 45047: the window's message count is used up.
OUT_OF_WINDOW = frozenset({45015, 45047})
# 43004: the user no longer follows the account (their messages wait for a re-follow).
UNFOLLOWED = 43004
# 40003: not an openid of this account. Retrying cannot help.
BAD_RECIPIENT = frozenset({40003})
NOT_AUTHORIZED = 48001
# Answers no retry can change: the operator has to fix a setting or the account. Each names what to fix.
CONFIG_ERRORS: dict[int, str] = {
    NOT_AUTHORIZED: "WeChat refuses this API for the account (48001 api unauthorized): customer-service "
                    "messages need a verified account and template messages a verified service account; "
                    "set WECHAT_ACCOUNT to what the account is (unverified, verified_subscription, "
                    "verified_service) and unset WECHAT_TEMPLATE_ID unless it is a verified service account",
    40164: "this server's IP address is not on the account's IP whitelist (40164): add it in the WeChat admin "
           "console (Settings and Development > Basic Configuration > IP whitelist) for WECHAT_APP_ID",
    61004: "this server's IP address is not on the account's IP whitelist (61004): add it in the WeChat admin "
           "console (Settings and Development > Basic Configuration > IP whitelist) for WECHAT_APP_ID",
    40125: "WECHAT_APP_SECRET is not the account's AppSecret (40125 invalid appsecret)",
    40013: "WECHAT_APP_ID is not a valid AppID (40013 invalid appid)",
    40037: "WECHAT_TEMPLATE_ID is not a template of this account (40037 invalid template_id)",
    47003: "the template refused a field (47003 argument invalid): check WECHAT_TEMPLATE_FIELDS against the "
           "template's field names",
}


class WeChatApiError(RuntimeError):
    def __init__(self, errcode: int, errmsg: str = "") -> None:
        super().__init__(f"WeChat API error {errcode}")
        self.errcode = errcode
        self.errmsg = errmsg[:200]

    @property
    def config_hint(self) -> str | None:
        """What the operator must change, when this answer is a configuration error rather than bad luck."""
        return CONFIG_ERRORS.get(self.errcode)


class WeChatUnavailable(RuntimeError):
    """Network failure, timeout or a non-JSON answer: worth retrying later."""


@dataclass(frozen=True)
class CachedToken:
    value: str
    expires_at: float  # epoch seconds


class TokenStore(Protocol):
    """Where the current access token lives, and the lock that makes one holder at a time refresh it."""

    async def load(self) -> CachedToken | None: ...

    async def save(self, token: CachedToken) -> None: ...

    async def discard(self, value: str) -> None:
        """Forgets the token only if it is still `value`: a newer one fetched meanwhile stays."""

    def refresh_lock(self) -> AbstractAsyncContextManager[None]: ...


class MemoryTokenStore:
    """One process. Several workers need the `wechat_access_tokens` table (or Redis) instead; see the report."""

    def __init__(self) -> None:
        self._token: CachedToken | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> CachedToken | None:
        return self._token

    async def save(self, token: CachedToken) -> None:
        self._token = token

    async def discard(self, value: str) -> None:
        if self._token is not None and self._token.value == value:
            self._token = None

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    def refresh_lock(self) -> AbstractAsyncContextManager[None]:
        return self._locked()


class WeChatApi:
    def __init__(self, base_url: str, app_id: str, app_secret: str, store: TokenStore | None = None, *,
                 timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.app_id = app_id
        self._secret = app_secret
        self.store: TokenStore = store or MemoryTokenStore()
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def token(self) -> str:
        cached = await self.store.load()
        if cached is not None and cached.expires_at - REFRESH_MARGIN_SECONDS > self._clock():
            return cached.value
        async with self.store.refresh_lock():
            # Whoever held the lock before us may have refreshed already.
            cached = await self.store.load()
            if cached is not None and cached.expires_at - REFRESH_MARGIN_SECONDS > self._clock():
                return cached.value
            fresh = await self._fetch_token()
            await self.store.save(fresh)
            return fresh.value

    async def _fetch_token(self) -> CachedToken:
        data = await self._request("GET", "/cgi-bin/token", params={
            "grant_type": "client_credential", "appid": self.app_id, "secret": self._secret})
        value = data.get("access_token")
        if not isinstance(value, str) or not value:
            raise WeChatUnavailable("token answer without access_token")
        expires_in = data.get("expires_in", 7200)
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 7200.0
        log.info("wechat access token refreshed", extra={"expires_in": lifetime})
        return CachedToken(value, self._clock() + lifetime)

    async def call(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POSTs (GETs without a body) to an access-token API; a rejected token is refreshed once and the call
        made once more."""
        method = "GET" if body is None else "POST"
        token = await self.token()
        try:
            return await self._request(method, path, params={"access_token": token}, body=body)
        except WeChatApiError as exc:
            if exc.errcode not in TOKEN_REJECTED:
                raise
            log.info("wechat rejected the access token; refreshing once", extra={"errcode": exc.errcode})
            await self.store.discard(token)
        token = await self.token()
        return await self._request(method, path, params={"access_token": token}, body=body)

    async def _request(self, method: str, path: str, *, params: dict[str, str],
                       body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8"} if payload is not None else None
        try:
            async with self._http().request(method, self.base_url + path, params=params, data=payload,
                                            headers=headers) as response:
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            # The URL carries the secret or the token: name only the path.
            raise WeChatUnavailable(f"{path}: {type(exc).__name__}") from None
        if status >= 500:
            raise WeChatUnavailable(f"{path}: HTTP {status}")
        try:
            data = json.loads(raw)
        except ValueError:
            raise WeChatUnavailable(f"{path}: non-JSON answer (HTTP {status})") from None
        if not isinstance(data, dict):
            raise WeChatUnavailable(f"{path}: unexpected answer")
        errcode = data.get("errcode", 0)
        if isinstance(errcode, int) and errcode != 0:
            if errcode == -1:  # "system busy"
                raise WeChatUnavailable(f"{path}: system busy")
            raise WeChatApiError(errcode, str(data.get("errmsg", "")))
        return data

    async def send_text(self, openid: str, text: str) -> None:
        await self.call("/cgi-bin/message/custom/send",
                        {"touser": openid, "msgtype": "text", "text": {"content": text}})

    async def send_template(self, openid: str, template_id: str, data: dict[str, dict[str, str]],
                            url: str = "") -> None:
        body: dict[str, Any] = {"touser": openid, "template_id": template_id, "data": data}
        if url:
            body["url"] = url
        await self.call("/cgi-bin/message/template/send", body)

    async def create_menu(self, menu: dict[str, Any]) -> dict[str, Any]:
        return await self.call("/cgi-bin/menu/create", menu)

    async def customer_service_accounts(self) -> dict[str, Any]:
        """The customer-service API's cheapest read: 48001 when the account has no customer-service API."""
        return await self.call("/cgi-bin/customservice/getkflist")

    async def templates(self) -> list[dict[str, Any]]:
        """The account's templates (id, title, content with `{{thing1.DATA}}` placeholders); 48001 without them."""
        data = await self.call("/cgi-bin/template/get_all_private_template")
        found = data.get("template_list")
        return [t for t in found if isinstance(t, dict)] if isinstance(found, list) else []
