"""The sandbox SMS gateway: keeps "sent" texts in memory for demos and tests, and sends nothing.

Memory only, so no phone number lands in a file; never logs a full phone number or the text.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from domain.masking import mask_phone
from integrations.sms.base import SmsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _SentText:
    phone: str
    text: str
    sent_at: str


class SandboxSmsGateway:
    """Records each message instead of sending it; `fail_next` makes the next sends fail."""

    name = "sandbox"

    def __init__(self, *, capacity: int = 1000, fail_next: int = 0) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self._outbox: deque[_SentText] = deque(maxlen=capacity)
        self.fail_next = fail_next

    async def send_code(self, phone: str, code: str, ttl_minutes: int, text: str) -> None:
        if self.fail_next > 0:
            self.fail_next -= 1
            logger.info("sandbox sms to %s: simulated failure", mask_phone(phone))
            raise SmsError("sandbox gateway: simulated failure", code="Sandbox.SimulatedFailure", retryable=True)
        sent_at = datetime.now(UTC).isoformat(timespec="seconds")
        self._outbox.append(_SentText(phone=phone, text=text, sent_at=sent_at))
        logger.info("sandbox sms to %s recorded", mask_phone(phone))

    def sent(self, phone: str) -> list[dict[str, str]]:
        """Texts "sent" to `phone`, oldest first, as fresh dicts the caller may keep."""
        return [
            {"phone": item.phone, "text": item.text, "sent_at": item.sent_at}
            for item in self._outbox
            if item.phone == phone
        ]

    def clear(self) -> None:
        self._outbox.clear()

    async def close(self) -> None:
        # Nothing to release; the outbox stays readable until the process ends.
        return None
