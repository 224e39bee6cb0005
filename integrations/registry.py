"""HTTP client for the binding registry (the carrier/CAICT system of record) and its callback signatures.

It must never put a full phone number, name or ID number into a log line or an exception message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import aiohttp

from domain.masking import mask_phone

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Registry-Signature"

Tenure = Literal["previous", "current"]
TagKind = Literal["new_holder", "clear_harassment"]

_PHONE_RE = re.compile(r"1[3-9][0-9]{9}")
# Request ids and tag codes go into URL paths; anything else could walk to another route.
_PATH_TOKEN_RE = re.compile(r"[A-Za-z0-9-]{1,64}")


class RegistryError(Exception):
    """The registry answered something we did not expect (a protocol error or an unexpected 4xx)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryUnavailable(RegistryError):
    """The registry could not be reached, timed out or failed (5xx); trying later may help."""


class UnbindRefused(RegistryError):
    """No requested platform was eligible (HTTP 422); `refused` says why, platform by platform."""

    def __init__(self, refused: tuple[RefusedItem, ...]) -> None:
        super().__init__("no platform in the unbind request is eligible", status=422, code="nothing_eligible")
        self.refused = refused


@dataclass(frozen=True)
class NumberInfo:
    phone: str
    status: str
    carrier: str
    virtual_operator: bool
    original_carrier: str
    ported: bool
    ported_at: date | None
    tenure_start: date | None
    previous_tenure_count: int
    last_released: date | None
    tagged: bool

    def __repr__(self) -> str:
        # Dataclass reprs end up in logs and tracebacks; the number must not.
        return f"NumberInfo(phone={mask_phone(self.phone)!r}, status={self.status!r}, carrier={self.carrier!r})"


@dataclass(frozen=True)
class Binding:
    platform: str
    bound_month: str
    tenure: Tenure


@dataclass(frozen=True)
class Platform:
    id: str
    name_zh: str
    name_en: str
    category: str
    unbind_supported: bool


@dataclass(frozen=True)
class RecycleCheck:
    known: bool
    reissued: bool
    released_days_ago: int | None
    previous_bindings_remain: bool


@dataclass(frozen=True)
class UnbindItem:
    platform: str
    # submitted | processing | done | rejected
    status: str
    reason: str | None = None


@dataclass(frozen=True)
class RefusedItem:
    platform: str
    # current_tenure | not_bound | unsupported
    reason: str


@dataclass(frozen=True)
class UnbindRequest:
    id: str
    # submitted | processing | done | rejected
    status: str
    created_at: datetime
    items: tuple[UnbindItem, ...]
    refused: tuple[RefusedItem, ...]

    @property
    def finished(self) -> bool:
        return self.status in ("done", "rejected")


@dataclass(frozen=True)
class Tag:
    code: str
    kind: str
    since: str
    phone_masked: str
    created_at: datetime | None


def sign_callback(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Registry-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify_callback(secret: str, body: bytes, header: str, now: float, tolerance: int = 300) -> bool:
    """True if `header` signs exactly `body` with `secret` and was made within `tolerance` s of `now`.

    The timestamp window stops an attacker replaying a captured callback later.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = sign_callback(secret, body, timestamp).partition(",v1=")[2].encode("ascii")
    matched = False
    # Compare against every v1 (secret rotation sends several) without stopping early.
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate.encode("utf-8", "replace"))
    return matched


def parse_unbind_request(data: Any) -> UnbindRequest:
    """Reads an unbind request from a response or a status callback body (already JSON-decoded)."""
    try:
        return UnbindRequest(
            id=_str(data["id"]),
            status=_str(data["status"]),
            created_at=datetime.fromisoformat(_str(data["created_at"])),
            items=tuple(
                UnbindItem(_str(i["platform"]), _str(i["status"]), _opt_str(i.get("reason")))
                for i in data["items"]
            ),
            refused=_refused(data.get("refused", [])),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistryError("malformed unbind request") from exc


def parse_callback(body: bytes) -> UnbindRequest:
    """Decodes a status callback body; verify its signature with `verify_callback` first."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise RegistryError("callback body is not JSON") from exc
    return parse_unbind_request(data)


class RegistryClient:
    """One registry base URL, e.g. `http://127.0.0.1:8080/sandbox/registry`."""

    def __init__(self, base_url: str, *, session: aiohttp.ClientSession | None = None, timeout: float = 5.0,
                 token: str = "") -> None:
        self._base = base_url.rstrip("/")
        # A bearer token for registries that ask for one (the standalone sandbox always does).
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._platforms: list[Platform] | None = None

    async def close(self) -> None:
        """Closes the session this client made; a session passed in stays open for its owner."""
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def health(self) -> bool:
        """True when the registry answers and says it is fine; never raises."""
        try:
            status, data = await self._request("GET", "/v1/health", allow=(200,))
        except RegistryError:
            return False
        return status == 200 and isinstance(data, dict) and data.get("ok") is True

    async def platforms(self) -> list[Platform]:
        if self._platforms is None:
            _, data = await self._request("GET", "/v1/platforms")
            try:
                self._platforms = [
                    Platform(_str(p["id"]), _str(p["name_zh"]), _str(p["name_en"]), _str(p["category"]),
                             _bool(p["unbind_supported"]))
                    for p in data["platforms"]
                ]
            except (KeyError, TypeError, ValueError) as exc:
                raise RegistryError("malformed platform list") from exc
        return list(self._platforms)

    async def number_info(self, phone: str) -> NumberInfo | None:
        """None when the registry does not know the number."""
        status, data = await self._request("GET", f"/v1/numbers/{_phone(phone)}", allow=(200, 404), phone=phone)
        if status == 404:
            _check_not_found(data, "unknown_number")
            return None
        try:
            tenures = data["previous_tenures"]
            return NumberInfo(
                phone=_str(data["phone"]),
                status=_str(data["status"]),
                carrier=_str(data["carrier"]),
                virtual_operator=_bool(data["virtual_operator"]),
                original_carrier=_str(data["original_carrier"]),
                ported=_bool(data["ported"]),
                ported_at=_opt_date(data["ported_at"]),
                tenure_start=_opt_date(data["tenure_start"]),
                previous_tenure_count=_int(tenures["count"]),
                last_released=_opt_date(tenures["last_released"]),
                tagged=_bool(data["tagged"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError("malformed number info") from exc

    async def holder_check(self, phone: str, name: str, id_number: str) -> bool:
        """Whether `name` and `id_number` are the number's current holder; False for unknown numbers."""
        _, data = await self._request(
            "POST", f"/v1/numbers/{_phone(phone)}/holder-check", json_body={"name": name, "id_number": id_number},
            phone=phone,
        )
        try:
            return _bool(data["match"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError("malformed holder check") from exc

    async def bindings(self, phone: str) -> tuple[date | None, list[Binding]]:
        """The current tenure start and the bindings still in place. Unknown numbers raise RegistryError."""
        _, data = await self._request("GET", f"/v1/numbers/{_phone(phone)}/bindings", phone=phone)
        try:
            items = [
                Binding(_str(b["platform"]), _str(b["bound_month"]), _tenure(b["tenure"]))
                for b in data["bindings"]
            ]
            return _opt_date(data["tenure_start"]), items
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError("malformed bindings") from exc

    async def recycle_check(self, phone: str) -> RecycleCheck:
        _, data = await self._request("GET", f"/v1/numbers/{_phone(phone)}/recycle-check", phone=phone)
        try:
            days = data["released_days_ago"]
            return RecycleCheck(
                known=_bool(data["known"]),
                reissued=_bool(data["reissued"]),
                released_days_ago=None if days is None else _int(days),
                previous_bindings_remain=_bool(data["previous_bindings_remain"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError("malformed recycle check") from exc

    async def create_unbind_request(
        self,
        phone: str,
        platforms: list[str] | tuple[str, ...],
        requester_tenure_start: date,
        idempotency_key: str,
        callback_url: str | None = None,
    ) -> UnbindRequest:
        """Submits (or, with a key seen before, replays) an unbind request.

        Raises UnbindRefused when no platform is eligible, with the reason for each.
        """
        body: dict[str, Any] = {
            "phone": _phone(phone),
            "platforms": list(platforms),
            "requester_tenure_start": requester_tenure_start.isoformat(),
        }
        if callback_url is not None:
            body["callback_url"] = callback_url
        status, data = await self._request(
            "POST", "/v1/unbind-requests", json_body=body, allow=(200, 201, 422),
            headers={"Idempotency-Key": idempotency_key}, phone=phone,
        )
        if status == 422:
            try:
                refused = _refused(data["refused"])
            except (KeyError, TypeError, ValueError) as exc:
                raise RegistryError("malformed refusal") from exc
            raise UnbindRefused(refused)
        return parse_unbind_request(data)

    async def get_unbind_request(self, request_id: str) -> UnbindRequest:
        _, data = await self._request("GET", f"/v1/unbind-requests/{_token(request_id)}")
        return parse_unbind_request(data)

    async def create_tag(self, phone: str, kind: TagKind, since: str, idempotency_key: str | None = None) -> Tag:
        """Files a 号码标记 tag; `since` is `YYYY-MM`. Returns the code callers can look up. A retry with the same
        `idempotency_key` returns the tag first filed under it."""
        _, data = await self._request(
            "POST", f"/v1/numbers/{_phone(phone)}/tags", json_body={"kind": kind, "since": since},
            allow=(200, 201), phone=phone,
            headers={"Idempotency-Key": idempotency_key} if idempotency_key else None,
        )
        return _tag(data)

    async def get_tag(self, code: str) -> Tag | None:
        if not _PATH_TOKEN_RE.fullmatch(code):
            return None
        status, data = await self._request("GET", f"/v1/tags/{code}", allow=(200, 404))
        if status == 404:
            _check_not_found(data, "unknown_tag")
            return None
        return _tag(data)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        allow: tuple[int, ...] = (200,),
        headers: dict[str, str] | None = None,
        phone: str | None = None,
    ) -> tuple[int, Any]:
        # What identifies this call in logs and errors: the route shape, with the number masked.
        label = f"{method} {path if phone is None else path.replace(phone, mask_phone(phone))}"
        session = self._ensure_session()
        try:
            async with session.request(
                method, self._base + path, json=json_body, headers={**self._auth, **(headers or {})},
                timeout=self._timeout,
            ) as response:
                status = response.status
                raw = await response.read()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("registry unreachable: %s (%s)", label, type(exc).__name__)
            raise RegistryUnavailable(f"registry unreachable: {label}") from exc
        if status >= 500:
            log.warning("registry failed: %s -> %d", label, status)
            raise RegistryUnavailable(f"registry failed with {status}: {label}", status=status)
        try:
            data = json.loads(raw) if raw else None
        except ValueError as exc:
            raise RegistryError(f"registry sent non-JSON ({status}): {label}", status=status) from exc
        if status not in allow:
            code = data.get("error") if isinstance(data, dict) else None
            code = code if isinstance(code, str) else None
            log.info("registry refused: %s -> %d %s", label, status, code)
            raise RegistryError(f"registry answered {status} {code or ''}: {label}".rstrip(), status=status, code=code)
        log.debug("registry: %s -> %d", label, status)
        return status, data


def _check_not_found(data: Any, expected: str) -> None:
    # A 404 without the registry's own error code means a wrong base URL, not an unknown record.
    if not isinstance(data, dict) or data.get("error") != expected:
        raise RegistryError("registry answered 404 without a registry error code; check the base URL", status=404)


def _phone(phone: str) -> str:
    if not _PHONE_RE.fullmatch(phone):
        # The value itself stays out of the message: it may be a mistyped real number.
        raise ValueError("phone must be 11 digits starting 13-19")
    return phone


def _token(value: str) -> str:
    if not _PATH_TOKEN_RE.fullmatch(value):
        raise ValueError("malformed identifier")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected a boolean")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError("expected an integer")
    return value


def _opt_date(value: Any) -> date | None:
    return None if value is None else date.fromisoformat(_str(value))


def _tenure(value: Any) -> Tenure:
    if value == "previous":
        return "previous"
    if value == "current":
        return "current"
    raise ValueError("unknown tenure")


def _refused(values: Any) -> tuple[RefusedItem, ...]:
    return tuple(RefusedItem(_str(r["platform"]), _str(r["reason"])) for r in values)


def _tag(data: Any) -> Tag:
    try:
        created = data.get("created_at")
        return Tag(
            code=_str(data["code"]),
            kind=_str(data["kind"]),
            since=_str(data["since"]),
            phone_masked=_str(data["phone_masked"]),
            created_at=None if created is None else datetime.fromisoformat(_str(created)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RegistryError("malformed tag") from exc
