"""Keyed hashes and encryption at rest for phone and ID numbers. Never returns or logs a plain value
except `reveal`, whose callers pass it straight to the registry or the SMS gateway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading
import weakref

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=b"haoqing-v1", info=purpose).derive(secret)


_NONCE_BYTES = 12
_NONCES_PER_DRAW = 340  # one os.urandom call of 4,080 bytes
_VAULTS: weakref.WeakSet[Vault] = weakref.WeakSet()


def _forget_nonces_after_fork() -> None:
    # A forked worker must never use nonces its parent (or a sibling) may use too: AES-GCM under one key is broken
    # by a single repeated nonce.
    for vault in list(_VAULTS):
        vault._drop_nonces()


os.register_at_fork(after_in_child=_forget_nonces_after_fork)


class Vault:
    def __init__(self, secret: bytes) -> None:
        # Random 96-bit nonces, drawn from the OS in batches: os.urandom lets go of the GIL, and taking it back on
        # the Telegram hot path (a new user is sealed) cost more than the draw.
        self._nonces = b""
        self._next_nonce = 0
        self._nonce_lock = threading.Lock()
        _VAULTS.add(self)
        # The keyed state, copied for each hash: no key set-up per call, and no call that lets go of the GIL
        # (hmac.digest's one-shot does, and on the Telegram hot path getting it back cost more than the hash).
        self._keyed = hmac.new(_derive(secret, b"keyed-hash"), digestmod=hashlib.sha256)
        self._aead = AESGCM(_derive(secret, b"phone-at-rest"))
        self.session_key = _derive(secret, b"web-session")

    def keyed_hash(self, value: str, *, purpose: str = "phone") -> str:
        keyed = self._keyed.copy()
        keyed.update(f"{purpose}:{value}".encode())
        return keyed.hexdigest()

    def seal(self, value: str) -> str:
        nonce = self._nonce()
        return base64.urlsafe_b64encode(nonce + self._aead.encrypt(nonce, value.encode(), b"phone")).decode()

    def _nonce(self) -> bytes:
        with self._nonce_lock:
            start = self._next_nonce
            if start + _NONCE_BYTES > len(self._nonces):
                self._nonces, start = os.urandom(_NONCE_BYTES * _NONCES_PER_DRAW), 0
            self._next_nonce = start + _NONCE_BYTES
            return self._nonces[start:start + _NONCE_BYTES]

    def _drop_nonces(self) -> None:
        self._nonces, self._next_nonce = b"", 0
        self._nonce_lock = threading.Lock()  # a lock held by another thread at the fork stays held in the child

    def reveal(self, sealed: str) -> str:
        raw = base64.urlsafe_b64decode(sealed.encode())
        return self._aead.decrypt(raw[:12], raw[12:], b"phone").decode()
