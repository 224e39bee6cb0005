"""Tencent Cloud SMS: TC3 signing against Tencent's published example, and the gateway against a fake."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from integrations.sms.base import SmsError, SmsGateway
from integrations.sms.tencent import (
    TencentSmsGateway,
    is_retryable,
    tc3_canonical_request,
    tc3_sign,
    tc3_signing_key,
    tc3_string_to_sign,
)
from tests.fakes.fake_tencent_sms import FakeTencentSms

# Tencent Cloud API 3.0 "签名方法 v3" worked example (CVM DescribeInstances, ap-guangzhou).
# The document masks its demo credentials as these literal strings, and its published derived
# keys and signature are exactly what those literal strings produce.
DOC_SECRET_ID = "AKID" + "*" * 32
DOC_SECRET_KEY = "*" * 32
DOC_TIMESTAMP = 1551113065
DOC_PAYLOAD = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
DOC_HASHED_PAYLOAD = "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
DOC_CANONICAL_REQUEST = (
    "POST\n/\n\n"
    "content-type:application/json; charset=utf-8\n"
    "host:cvm.tencentcloudapi.com\n"
    "x-tc-action:describeinstances\n\n"
    "content-type;host;x-tc-action\n"
    "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
)
DOC_STRING_TO_SIGN = (
    "TC3-HMAC-SHA256\n1551113065\n2019-02-25/cvm/tc3_request\n"
    "7019a55be8395899b900fb5564e4200d984910f34794a27cb3fb7d10ff6a1e84"
)
DOC_SECRET_SIGNING = "b596b923aad85185e2d1f6659d2a062e0a86731226e021e61bfe06f7ed05f5af"
DOC_AUTHORIZATION = (
    "TC3-HMAC-SHA256 Credential=AKID********************************/2019-02-25/cvm/tc3_request, "
    "SignedHeaders=content-type;host;x-tc-action, "
    "Signature=10b1a37a7301a02ca19a647ad722d5e43b4b3cff309d421d85b46093f6ab6c4f"
)

PHONE = "13800138000"
CODE = "472913"


def test_signing_reproduces_the_published_example_exactly() -> None:
    headers = tc3_sign(
        DOC_SECRET_ID,
        DOC_SECRET_KEY,
        "cvm",
        "cvm.tencentcloudapi.com",
        "DescribeInstances",
        "2017-03-12",
        DOC_PAYLOAD,
        DOC_TIMESTAMP,
        "ap-guangzhou",
    )
    assert headers == {
        "Authorization": DOC_AUTHORIZATION,
        "Content-Type": "application/json; charset=utf-8",
        "Host": "cvm.tencentcloudapi.com",
        "X-TC-Action": "DescribeInstances",
        "X-TC-Timestamp": "1551113065",
        "X-TC-Version": "2017-03-12",
        "X-TC-Region": "ap-guangzhou",
    }


def test_each_published_intermediate_value() -> None:
    assert hashlib.sha256(DOC_PAYLOAD).hexdigest() == DOC_HASHED_PAYLOAD
    canonical = tc3_canonical_request("cvm.tencentcloudapi.com", "DescribeInstances", DOC_PAYLOAD)
    assert canonical == DOC_CANONICAL_REQUEST
    assert tc3_string_to_sign(canonical, DOC_TIMESTAMP, "cvm") == DOC_STRING_TO_SIGN
    assert tc3_signing_key(DOC_SECRET_KEY, "2019-02-25", "cvm").hex() == DOC_SECRET_SIGNING


def test_credential_date_is_utc_not_local() -> None:
    # 1551113065 is 2019-02-26 00:44:25 in Beijing but 2019-02-25 in UTC, as the document warns.
    headers = tc3_sign("id", "key", "sms", "sms.tencentcloudapi.com", "SendSms", "2021-01-11", b"{}", 1551113065, None)
    assert "/2019-02-25/sms/tc3_request" in headers["Authorization"]
    assert "X-TC-Region" not in headers


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("InternalError.Timeout", True),
        ("InternalError.OtherError", True),
        ("InternalError", True),
        ("InternalError.SigVerificationFail", False),
        ("FailedOperation.InsufficientBalanceInSmsPackage", False),
        ("LimitExceeded.PhoneNumberDailyLimit", False),
        ("LimitExceeded.PhoneNumberThirtySecondLimit", False),
        ("RequestLimitExceeded", False),
        ("AuthFailure.SignatureFailure", False),
        ("FailedOperation.TemplateIncorrectOrUnapproved", False),
    ],
)
def test_retry_classification(code: str, retryable: bool) -> None:
    assert is_retryable(code) is retryable


@pytest.fixture
async def fake() -> AsyncIterator[FakeTencentSms]:
    server = FakeTencentSms()
    await server.start()
    yield server
    await server.close()


def make_gateway(fake: FakeTencentSms, **overrides: object) -> TencentSmsGateway:
    options: dict[str, object] = {
        "secret_id": fake.secret_id,
        "secret_key": fake.secret_key,
        "sdk_app_id": "1400000000",
        "sign_name": "号清",
        "template_id": "100001",
        "endpoint": fake.endpoint,
        "timeout": 2.0,
    }
    options.update(overrides)
    return TencentSmsGateway(**options)  # type: ignore[arg-type]


def assert_no_secrets(text: str) -> None:
    assert PHONE not in text
    assert CODE not in text


async def test_success_sends_the_template_parameters(fake: FakeTencentSms) -> None:
    gateway = make_gateway(fake)
    try:
        await gateway.send_code(PHONE, CODE, 5, "unused by template providers")
    finally:
        await gateway.close()
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call.verified, call.rejection
    assert call.payload == {
        "PhoneNumberSet": ["+8613800138000"],
        "SmsSdkAppId": "1400000000",
        "SignName": "号清",
        "TemplateId": "100001",
        "TemplateParamSet": [CODE, "5"],
    }
    assert call.headers["X-TC-Action"] == "SendSms"
    assert call.headers["X-TC-Version"] == "2021-01-11"
    assert call.headers["X-TC-Region"] == "ap-guangzhou"
    assert json.loads(call.body) == call.payload


@pytest.mark.parametrize(
    ("code", "per_number", "retryable"),
    [
        ("FailedOperation.InsufficientBalanceInSmsPackage", False, False),
        ("LimitExceeded.PhoneNumberDailyLimit", True, False),
        ("InternalError.Timeout", True, True),
        ("InternalError.OtherError", False, True),
    ],
)
async def test_provider_error_codes(fake: FakeTencentSms, code: str, per_number: bool, retryable: bool) -> None:
    # A provider that echoes the number and code back must not get them into our exception.
    fake.answer_error(code, f"failed for +86{PHONE} with params [{CODE}]", per_number=per_number)
    gateway = make_gateway(fake)
    try:
        with pytest.raises(SmsError) as caught:
            await gateway.send_code(PHONE, CODE, 5, "")
    finally:
        await gateway.close()
    assert caught.value.code == code
    assert caught.value.retryable is retryable
    assert fake.calls[0].verified
    assert_no_secrets(str(caught.value))
    assert "138****8000" in str(caught.value)


async def test_http_500_is_retryable(fake: FakeTencentSms) -> None:
    fake.answer_http_500()
    gateway = make_gateway(fake)
    try:
        with pytest.raises(SmsError) as caught:
            await gateway.send_code(PHONE, CODE, 5, "")
    finally:
        await gateway.close()
    assert caught.value.retryable
    assert caught.value.code == "HTTP500"


async def test_stalled_provider_times_out_quickly(fake: FakeTencentSms) -> None:
    fake.stall()
    gateway = make_gateway(fake, timeout=0.3)
    try:
        with pytest.raises(SmsError) as caught:
            await gateway.send_code(PHONE, CODE, 5, "")
    finally:
        await gateway.close()
    # Our own timeout fired ("Timeout"), not the stalled fake giving up after 30 s ("InternalError.Timeout").
    assert caught.value.retryable
    assert caught.value.code == "Timeout"
    assert_no_secrets(str(caught.value))


async def test_wrong_secret_is_rejected_by_the_fake(fake: FakeTencentSms) -> None:
    gateway = make_gateway(fake, secret_key="not-the-secret")
    try:
        with pytest.raises(SmsError) as caught:
            await gateway.send_code(PHONE, CODE, 5, "")
    finally:
        await gateway.close()
    assert caught.value.code == "AuthFailure.SignatureFailure"
    assert not caught.value.retryable
    assert not fake.calls[0].verified


async def test_unknown_secret_id_and_stale_clock_are_rejected(fake: FakeTencentSms) -> None:
    cases: list[tuple[dict[str, object], str]] = [
        ({"secret_id": "AKIDsomeoneElse"}, "AuthFailure.SecretIdNotFound"),
        ({"clock": lambda: time.time() - 3600}, "AuthFailure.SignatureExpire"),
    ]
    for overrides, expected in cases:
        gateway = make_gateway(fake, **overrides)
        try:
            with pytest.raises(SmsError) as caught:
                await gateway.send_code(PHONE, CODE, 5, "")
        finally:
            await gateway.close()
        assert caught.value.code == expected
        assert not caught.value.retryable


async def test_unreachable_endpoint_is_a_retryable_network_error() -> None:
    server = FakeTencentSms()
    endpoint = await server.start()
    await server.close()  # nothing listens on that port any more
    gateway = TencentSmsGateway("id", "key", "1400000000", "号清", "1", endpoint=endpoint, timeout=2.0)
    try:
        with pytest.raises(SmsError) as caught:
            await gateway.send_code(PHONE, CODE, 5, "")
    finally:
        await gateway.close()
    assert caught.value.retryable
    assert caught.value.code == "NetworkError"


async def test_not_a_mainland_mobile_is_refused_before_any_request(fake: FakeTencentSms) -> None:
    gateway = make_gateway(fake)
    try:
        for phone in ["12345", "23800138000", "1380013800"]:
            with pytest.raises(SmsError) as caught:
                await gateway.send_code(phone, CODE, 5, "")
            assert not caught.value.retryable
            assert phone not in str(caught.value)
    finally:
        await gateway.close()
    assert fake.calls == []


async def test_logs_mask_the_number_and_never_show_the_code(
    fake: FakeTencentSms, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="integrations.sms.tencent")
    gateway = make_gateway(fake)
    try:
        await gateway.send_code(PHONE, CODE, 5, "")
        fake.answer_error("LimitExceeded.PhoneNumberDailyLimit", f"{PHONE} {CODE}", per_number=True)
        with pytest.raises(SmsError):
            await gateway.send_code(PHONE, CODE, 5, "")
        fake.answer_http_500()
        with pytest.raises(SmsError):
            await gateway.send_code(PHONE, CODE, 5, "")
    finally:
        await gateway.close()
    assert "138****8000" in caplog.text
    assert_no_secrets(caplog.text)
    assert fake.secret_key not in caplog.text


async def test_a_session_passed_in_stays_open(fake: FakeTencentSms) -> None:
    async with aiohttp.ClientSession() as session:
        gateway = make_gateway(fake, session=session)
        await gateway.send_code(PHONE, CODE, 5, "")
        await gateway.close()
        assert not session.closed
    assert fake.calls[0].verified


def test_repr_hides_the_secret_and_the_protocol_holds() -> None:
    gateway: SmsGateway = TencentSmsGateway("AKIDx", "very-secret", "1400000000", "号清", "1")
    assert "very-secret" not in repr(gateway)
    assert gateway.name == "tencent"
    with pytest.raises(ValueError):
        TencentSmsGateway("", "k", "1400000000", "号清", "1")


async def test_the_fake_checks_the_body_that_arrived(fake: FakeTencentSms) -> None:
    host = fake.endpoint.removeprefix("http://")
    signed_body = b'{"PhoneNumberSet":[]}'
    headers = tc3_sign(
        fake.secret_id, fake.secret_key, "sms", host, "SendSms", "2021-01-11", signed_body, int(time.time()), None
    )
    async with aiohttp.ClientSession() as session:
        for body, expected_error in [(b'{"PhoneNumberSet":["x"]}', True), (signed_body, False)]:
            async with session.post(fake.endpoint, data=body, headers=headers) as response:
                answer = await response.json()
            assert ("Error" in answer["Response"]) is expected_error
    assert [call.verified for call in fake.calls] == [False, True]
