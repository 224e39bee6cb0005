"""The sandbox SMS gateway keeps texts in memory, bounded, and never logs a number or a code."""

from __future__ import annotations

import logging
from datetime import datetime

import pytest

from integrations.sms.base import SmsError, SmsGateway
from integrations.sms.sandbox import SandboxSmsGateway

PHONE = "13800138000"
OTHER = "13900139000"


async def test_records_texts_per_phone_newest_last() -> None:
    gateway = SandboxSmsGateway()
    await gateway.send_code(PHONE, "111111", 5, "code 111111")
    await gateway.send_code(OTHER, "222222", 5, "code 222222")
    await gateway.send_code(PHONE, "333333", 5, "code 333333")
    sent = gateway.sent(PHONE)
    assert [item["text"] for item in sent] == ["code 111111", "code 333333"]
    assert all(item["phone"] == PHONE for item in sent)
    assert datetime.fromisoformat(sent[0]["sent_at"]).tzinfo is not None
    assert gateway.sent("13700137000") == []


async def test_returned_items_are_copies() -> None:
    gateway = SandboxSmsGateway()
    await gateway.send_code(PHONE, "111111", 5, "code 111111")
    gateway.sent(PHONE)[0]["text"] = "tampered"
    assert gateway.sent(PHONE)[0]["text"] == "code 111111"


async def test_outbox_is_bounded() -> None:
    gateway = SandboxSmsGateway(capacity=3)
    for i in range(5):
        await gateway.send_code(PHONE, f"{i:06d}", 5, f"text {i}")
    assert [item["text"] for item in gateway.sent(PHONE)] == ["text 2", "text 3", "text 4"]
    with pytest.raises(ValueError):
        SandboxSmsGateway(capacity=0)


async def test_default_capacity_is_a_thousand() -> None:
    gateway = SandboxSmsGateway()
    for i in range(1005):
        await gateway.send_code(PHONE, "000000", 5, f"text {i}")
    sent = gateway.sent(PHONE)
    assert len(sent) == 1000 and sent[-1]["text"] == "text 1004"


async def test_fail_next_fails_that_many_sends_then_recovers() -> None:
    gateway = SandboxSmsGateway(fail_next=2)
    for _ in range(2):
        with pytest.raises(SmsError) as caught:
            await gateway.send_code(PHONE, "123456", 5, "code 123456")
        assert caught.value.retryable
        assert PHONE not in str(caught.value) and "123456" not in str(caught.value)
    await gateway.send_code(PHONE, "123456", 5, "code 123456")
    assert len(gateway.sent(PHONE)) == 1
    gateway.fail_next = 1
    with pytest.raises(SmsError):
        await gateway.send_code(PHONE, "654321", 5, "code 654321")


async def test_never_logs_the_number_or_the_code(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = SandboxSmsGateway(fail_next=1)
    with pytest.raises(SmsError):
        await gateway.send_code(PHONE, "987654", 5, "您的验证码是 987654")
    await gateway.send_code(PHONE, "987654", 5, "您的验证码是 987654")
    assert caplog.records, "the gateway should say something, masked"
    assert PHONE not in caplog.text and "987654" not in caplog.text
    assert "138****8000" in caplog.text


async def test_clear_and_close() -> None:
    gateway = SandboxSmsGateway()
    await gateway.send_code(PHONE, "111111", 5, "t")
    gateway.clear()
    assert gateway.sent(PHONE) == []
    await gateway.close()


def test_satisfies_the_gateway_protocol() -> None:
    gateway: SmsGateway = SandboxSmsGateway()
    assert gateway.name == "sandbox"
