"""Tencent Cloud SMS (API 3.0 SendSms, version 2021-01-11) with TC3-HMAC-SHA256 request signing.

Never puts a full phone number, the code or a secret into a log line or an exception.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NoReturn

import aiohttp
from yarl import URL

from domain.masking import mask_phone, scrub
from integrations.sms.base import SmsError

logger = logging.getLogger(__name__)

ALGORITHM = "TC3-HMAC-SHA256"
CONTENT_TYPE = "application/json; charset=utf-8"
# Signing x-tc-action as well as the two required headers follows the current published example,
# and stops a captured signature from being replayed against another action.
SIGNED_HEADERS = "content-type;host;x-tc-action"

SMS_SERVICE = "sms"
SMS_ACTION = "SendSms"
SMS_VERSION = "2021-01-11"

_MAINLAND_MOBILE = re.compile(r"^1[3-9]\d{9}$")
# InternalError codes that say our request or configuration is wrong: sending it again cannot help.
_INTERNAL_BUT_PERMANENT = frozenset(
    {
        "InternalError.SigVerificationFail",
        "InternalError.SigFieldMissing",
        "InternalError.RestApiInterfaceNotExist",
        "InternalError.RequestTimeException",
    }
)


def _hmac_sha256(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def tc3_date(timestamp: int) -> str:
    """The credential-scope date: the UTC date of the timestamp, never the local one."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")


def tc3_signing_key(secret_key: str, date: str, service: str) -> bytes:
    """SecretSigning = HMAC(HMAC(HMAC("TC3" + SecretKey, Date), Service), "tc3_request")."""
    secret_date = _hmac_sha256(("TC3" + secret_key).encode("utf-8"), date)
    secret_service = _hmac_sha256(secret_date, service)
    return _hmac_sha256(secret_service, "tc3_request")


def tc3_canonical_request(host: str, action: str, payload: bytes) -> str:
    """The POST canonical request over content-type, host and x-tc-action."""
    canonical_headers = f"content-type:{CONTENT_TYPE}\nhost:{host.lower()}\nx-tc-action:{action.lower()}\n"
    hashed_payload = hashlib.sha256(payload).hexdigest()
    return f"POST\n/\n\n{canonical_headers}\n{SIGNED_HEADERS}\n{hashed_payload}"


def tc3_string_to_sign(canonical_request: str, timestamp: int, service: str) -> str:
    scope = f"{tc3_date(timestamp)}/{service}/tc3_request"
    hashed_request = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{hashed_request}"


def tc3_sign(
    secret_id: str,
    secret_key: str,
    service: str,
    host: str,
    action: str,
    version: str,
    payload: bytes,
    timestamp: int,
    region: str | None,
) -> dict[str, str]:
    """The headers of a signed Tencent Cloud API 3.0 POST; send `payload` byte for byte as the body."""
    date = tc3_date(timestamp)
    string_to_sign = tc3_string_to_sign(tc3_canonical_request(host, action, payload), timestamp, service)
    signature = hmac.new(
        tc3_signing_key(secret_key, date, service), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()
    headers = {
        "Authorization": (
            f"{ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, "
            f"SignedHeaders={SIGNED_HEADERS}, Signature={signature}"
        ),
        "Content-Type": CONTENT_TYPE,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Version": version,
    }
    if region:
        headers["X-TC-Region"] = region
    return headers


def is_retryable(code: str) -> bool:
    """Whether a Tencent error code may clear up by itself.

    Rate limits (LimitExceeded.*, RequestLimitExceeded*) are not: they last long enough that the
    user must be told to wait, rather than the same code being re-sent behind their back. Balance,
    template, signature and parameter errors need an operator.
    """
    return code.startswith("InternalError") and code not in _INTERNAL_BUT_PERMANENT


def _host_of(endpoint: URL) -> str:
    host = endpoint.host or ""
    if endpoint.port is not None and not endpoint.is_default_port():
        return f"{host}:{endpoint.port}"
    return host


class TencentSmsGateway:
    """Sends a verification code through an approved Tencent Cloud SMS template: {1} code, {2} minutes."""

    name = "tencent"

    def __init__(
        self,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        sign_name: str,
        template_id: str,
        *,
        region: str = "ap-guangzhou",
        endpoint: str = "https://sms.tencentcloudapi.com",
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (secret_id and secret_key and sdk_app_id and sign_name and template_id):
            raise ValueError("Tencent SMS needs a secret id, secret key, SDK app id, sign name and template id")
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._sdk_app_id = sdk_app_id
        self._sign_name = sign_name
        self._template_id = template_id
        self._region = region
        self._endpoint = URL(endpoint)
        self._host = _host_of(self._endpoint)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = session
        self._owns_session = session is None
        self._clock = clock

    def __repr__(self) -> str:
        # The default repr would print the secret key into any traceback that shows locals.
        return f"TencentSmsGateway(endpoint={str(self._endpoint)!r}, region={self._region!r})"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    async def send_code(self, phone: str, code: str, ttl_minutes: int, text: str) -> None:
        masked = mask_phone(phone)
        digits = "".join(ch for ch in phone if ch.isdigit())
        if not _MAINLAND_MOBILE.match(digits):
            raise SmsError("tencent sms: not an 11-digit mainland mobile number", code="InvalidPhoneNumber")
        payload = json.dumps(
            {
                "PhoneNumberSet": [f"+86{digits}"],
                "SmsSdkAppId": self._sdk_app_id,
                "SignName": self._sign_name,
                "TemplateId": self._template_id,
                "TemplateParamSet": [code, str(ttl_minutes)],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        headers = tc3_sign(
            self._secret_id,
            self._secret_key,
            SMS_SERVICE,
            self._host,
            SMS_ACTION,
            SMS_VERSION,
            payload,
            int(self._clock()),
            self._region,
        )
        try:
            async with self._get_session().post(
                self._endpoint, data=payload, headers=headers, timeout=self._timeout
            ) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError:
            logger.warning("tencent sms to %s: timed out after %ss", masked, self._timeout.total)
            raise SmsError(
                f"tencent sms: no answer within {self._timeout.total}s", code="Timeout", retryable=True
            ) from None
        except aiohttp.ClientError as exc:
            # The exception text can carry request details; its class name is enough to act on.
            logger.warning("tencent sms to %s: %s", masked, type(exc).__name__)
            raise SmsError(
                f"tencent sms: connection failed ({type(exc).__name__})", code="NetworkError", retryable=True
            ) from None

        if status >= 500:
            logger.warning("tencent sms to %s: HTTP %s", masked, status)
            raise SmsError(f"tencent sms: HTTP {status}", code=f"HTTP{status}", retryable=True)
        if status != 200:
            logger.warning("tencent sms to %s: HTTP %s", masked, status)
            raise SmsError(f"tencent sms: HTTP {status}", code=f"HTTP{status}")
        self._check_answer(raw, masked, code)

    def _check_answer(self, raw: bytes, masked: str, code: str) -> None:
        try:
            body = json.loads(raw)
            answer: dict[str, Any] = body["Response"]
            if not isinstance(answer, dict):
                raise TypeError("Response is not an object")
        except (ValueError, KeyError, TypeError):
            logger.warning("tencent sms to %s: unreadable answer", masked)
            raise SmsError("tencent sms: unreadable answer", code="BadResponse", retryable=True) from None

        request_id = str(answer.get("RequestId", ""))
        error = answer.get("Error")
        if isinstance(error, dict):
            self._fail(str(error.get("Code", "")), error.get("Message"), masked, code, request_id)

        statuses = answer.get("SendStatusSet")
        if not isinstance(statuses, list) or not statuses or not isinstance(statuses[0], dict):
            logger.warning("tencent sms to %s: no send status (request %s)", masked, request_id)
            raise SmsError("tencent sms: answer without a send status", code="BadResponse", retryable=True)
        first = statuses[0]
        status_code = str(first.get("Code", ""))
        if status_code != "Ok":
            self._fail(status_code, first.get("Message"), masked, code, request_id)
        logger.info("tencent sms to %s: accepted (request %s)", masked, request_id)

    @staticmethod
    def _fail(error_code: str, message: object, masked: str, code: str, request_id: str) -> NoReturn:
        # Provider messages sometimes echo the number; mask it, and the code, before keeping any of it.
        detail = scrub(str(message or ""))
        if code:
            detail = detail.replace(code, "******")
        detail = detail[:200]
        retryable = is_retryable(error_code)
        logger.warning("tencent sms to %s: %s (request %s, retryable=%s)", masked, error_code, request_id, retryable)
        raise SmsError(
            f"tencent sms: {error_code or 'unknown error'}: {detail}".rstrip(": "),
            code=error_code or "Unknown",
            retryable=retryable,
        )

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None
