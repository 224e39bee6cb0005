"""Keyed hashes and encryption at rest for phone and ID numbers. Never returns or logs a plain value
except `reveal`, whose callers pass it straight to the registry or the SMS gateway."""

from __future__ import annotations

import base64
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=b"haoqing-v1", info=purpose).derive(secret)


class Vault:
    def __init__(self, secret: bytes) -> None:
        self._hash_key = _derive(secret, b"keyed-hash")
        self._aead = AESGCM(_derive(secret, b"phone-at-rest"))
        self.session_key = _derive(secret, b"web-session")

    def keyed_hash(self, value: str, *, purpose: str = "phone") -> str:
        return hmac.digest(self._hash_key, f"{purpose}:{value}".encode(), "sha256").hex()  # one C call

    def seal(self, value: str) -> str:
        nonce = os.urandom(12)
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, value.encode(), b"phone")).decode()

    def reveal(self, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return self._aead.decrypt(raw[:12], raw[12:], b"phone").decode()
