"""The SMS gateway interface. Implementations never log a full phone number or the code."""

from __future__ import annotations

from typing import Protocol


class SmsError(Exception):
    """The gateway refused or failed; `retryable` says whether trying later may help."""

    def __init__(self, message: str, *, code: str = "", retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


class SmsGateway(Protocol):
    name: str

    async def send_code(self, phone: str, code: str, ttl_minutes: int, text: str) -> None:
        """Send a verification code to `phone` (11 digits, mainland).

        `text` is the full localised message, used by gateways that send free text (the sandbox);
        template-based providers send `code` and `ttl_minutes` as template parameters instead.
        Raises SmsError on failure.
        """
        ...

    async def close(self) -> None: ...
