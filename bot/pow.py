"""A self-hosted proof of work (hashcash) the web chat asks of a client sending many codes: it costs a real
browser a second or two once in a while, and a script sending thousands an hour its CPU. No third party.

A challenge is stateless (signed with the server key, bound to the client, expiring); a solved one is
spent once, recorded in the abuse counters by its hash. Never logs a challenge or the client.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from bot.abuse import Limits, Rule

TTL_SECONDS = 300
_SPENT = Rule("pow.spent", 1, TTL_SECONDS + 60)


def _signature(key: bytes, client: str, expires: int, nonce: str) -> str:
    return hmac.new(key, f"pow:{client}:{expires}:{nonce}".encode(), hashlib.sha256).hexdigest()[:32]


def challenge(key: bytes, client: str, now: datetime) -> str:
    expires = int(now.timestamp()) + TTL_SECONDS
    nonce = secrets.token_hex(8)
    return f"{expires}.{nonce}.{_signature(key, client, expires, nonce)}"


def leading_zero_bits(digest: bytes) -> int:
    bits = 0
    for byte in digest:
        if byte == 0:
            bits += 8
            continue
        return bits + 8 - byte.bit_length()
    return bits


def solve(challenge_text: str, bits: int) -> str:
    """What the page does in JavaScript; here for tests and tools."""
    counter = 0
    while True:
        answer = str(counter)
        if leading_zero_bits(hashlib.sha256(f"{challenge_text}:{answer}".encode()).digest()) >= bits:
            return answer
        counter += 1


async def verify(key: bytes, limits: Limits, client: str, challenge_text: str, answer: str, bits: int,
                 now: datetime) -> bool:
    """True once for a challenge issued to `client`, unexpired, whose answer has `bits` leading zero bits."""
    if len(challenge_text) > 80 or len(answer) > 32:
        return False
    parts = challenge_text.split(".")
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 12:
        return False
    expires, nonce, signature = int(parts[0]), parts[1], parts[2]
    if expires < now.timestamp() or not hmac.compare_digest(signature, _signature(key, client, expires, nonce)):
        return False
    if leading_zero_bits(hashlib.sha256(f"{challenge_text}:{answer}".encode()).digest()) < bits:
        return False
    # Spent once: a solved challenge replayed for a second code is refused.
    return await limits.take([(_SPENT, limits.subject("pow", challenge_text))], now) is None
