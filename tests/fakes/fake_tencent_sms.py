"""A fake Tencent Cloud SMS endpoint on a loopback port: checks TC3 signatures, records calls, misbehaves on cue.

Its signature check is written separately from integrations/sms/tencent.py and reads what arrived
on the wire, so a signing bug in the gateway cannot hide behind a matching bug here.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web

Mode = Literal["ok", "api_error", "status_error", "http_500", "stall"]


@dataclass
class RecordedCall:
    headers: dict[str, str]
    body: bytes
    verified: bool
    rejection: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


class FakeTencentSms:
    """`endpoint` is set by start(); the answer_* and stall methods choose what the next calls get."""

    def __init__(self, secret_id: str = "AKIDfakeSecretId", secret_key: str = "fake-secret-key") -> None:
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.calls: list[RecordedCall] = []
        self.endpoint = ""
        self._mode: Mode = "ok"
        self._error_code = ""
        self._error_message = ""
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # --- what to answer -------------------------------------------------------------------
    def answer_ok(self) -> None:
        self._mode = "ok"

    def answer_error(self, code: str, message: str = "fake failure", *, per_number: bool = False) -> None:
        """Top-level Response.Error, or (per_number) a SendStatusSet entry whose Code is not Ok."""
        self._mode = "status_error" if per_number else "api_error"
        self._error_code = code
        self._error_message = message

    def answer_http_500(self) -> None:
        self._mode = "http_500"

    def stall(self) -> None:
        """Hold every request open until close()."""
        self._mode = "stall"

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.endpoint = f"http://127.0.0.1:{port}"
        return self.endpoint

    async def close(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the API ----------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {key: value for key, value in request.headers.items()}
        rejection = self._verify(request, body)
        call = RecordedCall(headers=headers, body=body, verified=not rejection, rejection=rejection)
        self.calls.append(call)
        if rejection:
            return self._error(rejection, "The provided credentials could not be validated.")
        try:
            call.payload = json.loads(body)
        except ValueError:
            return self._error("FailedOperation.FailResolvePacket", "body is not JSON")

        if self._mode == "stall":
            try:
                await asyncio.wait_for(self._release.wait(), timeout=30)
            except TimeoutError:
                pass
            return self._error("InternalError.Timeout", "stalled")
        if self._mode == "http_500":
            return web.Response(status=500, text="Internal Server Error")
        if self._mode == "api_error":
            return self._error(self._error_code, self._error_message)

        phones = call.payload.get("PhoneNumberSet") or [""]
        ok = self._mode == "ok"
        status = {
            "SerialNo": f"fake:{uuid.uuid4().hex}",
            "PhoneNumber": phones[0],
            "Fee": 1 if ok else 0,
            "SessionContext": "",
            "Code": "Ok" if ok else self._error_code,
            "Message": "send success" if ok else self._error_message,
            "IsoCode": "CN",
        }
        return web.json_response({"Response": {"SendStatusSet": [status], "RequestId": str(uuid.uuid4())}})

    @staticmethod
    def _error(code: str, message: str) -> web.Response:
        # Tencent answers API errors with HTTP 200 and a Response.Error object.
        return web.json_response(
            {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": str(uuid.uuid4())}}
        )

    def _verify(self, request: web.Request, body: bytes) -> str:
        """An empty string when the request is properly signed, else the Tencent error code."""
        authorization = request.headers.get("Authorization", "")
        algorithm, _, rest = authorization.partition(" ")
        parts = dict(item.strip().partition("=")[::2] for item in rest.split(","))
        credential = parts.get("Credential", "").split("/")
        if algorithm != "TC3-HMAC-SHA256" or len(credential) != 4 or credential[3] != "tc3_request":
            return "AuthFailure.InvalidAuthorization"
        secret_id, date, service, _ = credential
        if secret_id != self.secret_id:
            return "AuthFailure.SecretIdNotFound"
        try:
            timestamp = int(request.headers.get("X-TC-Timestamp", ""))
        except ValueError:
            return "AuthFailure.InvalidAuthorization"
        if abs(time.time() - timestamp) > 300:
            return "AuthFailure.SignatureExpire"
        if date != datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d") or service != "sms":
            return "AuthFailure.SignatureFailure"
        if request.headers.get("X-TC-Action") != "SendSms" or request.headers.get("X-TC-Version") != "2021-01-11":
            return "InvalidAction"
        signed = parts.get("SignedHeaders", "").split(";")
        if "content-type" not in signed or "host" not in signed or signed != sorted(signed):
            return "AuthFailure.SignatureFailure"
        canonical_headers = "".join(f"{name}:{request.headers.get(name, '').strip().lower()}\n" for name in signed)
        canonical = "\n".join(["POST", "/", "", canonical_headers, ";".join(signed), hashlib.sha256(body).hexdigest()])
        to_sign = "\n".join(
            [
                "TC3-HMAC-SHA256",
                str(timestamp),
                f"{date}/{service}/tc3_request",
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        key = ("TC3" + self.secret_key).encode()
        for step in (date, service, "tc3_request"):
            key = hmac.new(key, step.encode(), hashlib.sha256).digest()
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, parts.get("Signature", "")):
            return "AuthFailure.SignatureFailure"
        return ""


def codes_to(fake: FakeTencentSms, phone: str) -> list[str]:
    """The verification codes the fake was asked to send to mainland number `phone`, oldest first."""
    return [str(call.payload["TemplateParamSet"][0]) for call in fake.calls
            if call.payload.get("PhoneNumberSet") == [f"+86{phone}"]]
