"""Authenticates and opens what WeChat posts to /wechat: signatures, freshness, replay refusal, entity-free XML,
and the AES envelope of safe mode (wechatpy does the AES; this module decides what reaches it).

It must never compare a signature in variable time, never accept a request older than five minutes, nor a
nonce it has already seen on anything but WeChat's byte-identical retry of that request, and never let XML with
a DOCTYPE or an entity reach a parser that would expand it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from typing import Any, Literal
from xml.etree.ElementTree import Element, ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as defused_fromstring
from wechatpy.crypto import PrpCrypto, WeChatCrypto

# WeChat's own numbers: a request older than 5 minutes is refused; a little clock skew ahead is tolerated.
MAX_AGE_SECONDS = 300
MAX_FUTURE_SECONDS = 60
_HEX40 = re.compile(r"[0-9a-f]{40}")
_DIGITS = re.compile(r"\d{1,12}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{1,64}")

log = logging.getLogger(__name__)


class BadXml(ValueError):
    """The body is not plain, entity-free XML of the expected shape."""


class BadCiphertext(ValueError):
    """Safe mode: the envelope does not decrypt to a message for this app."""


def sha1_signature(*parts: str) -> str:
    # SHA-1 over the sorted parts is WeChat's protocol, not a choice made here.
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()  # noqa: S324


def signature_matches(given: str, *parts: str) -> bool:
    """Constant-time: the time taken does not depend on how many leading characters of a forgery are right."""
    if not _HEX40.fullmatch(given):
        return False
    return hmac.compare_digest(sha1_signature(*parts).encode("ascii"), given.encode("ascii"))


def well_formed_params(timestamp: str, nonce: str) -> bool:
    return bool(_DIGITS.fullmatch(timestamp) and _NONCE.fullmatch(nonce))


def fresh(timestamp: str, now: float) -> bool:
    ts = int(timestamp)
    return now - MAX_AGE_SECONDS <= ts <= now + MAX_FUTURE_SECONDS


Seen = Literal["new", "retry", "replay"]


def request_digest(signature: str, msg_signature: str, body: bytes) -> bytes:
    """What makes a repeat of (timestamp, nonce) a retry rather than a replay: WeChat re-posts the byte-identical
    request when it got no answer in 5 s, so the same signatures and body; anything else under that nonce is not
    WeChat's retry."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (signature.encode(), msg_signature.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class NonceCache:
    """Nonces seen, with the digest of the request that carried them, filed under the request's own (signed,
    fresh) timestamp: once a timestamp is too old to pass the freshness check, its whole bucket goes.

    One process only: behind several workers a replay could land on another one, so SharedNonces adds Redis or
    the database; the inbox dedupe still keeps a replay from acting twice.
    """

    def __init__(self, max_age: int = MAX_AGE_SECONDS, max_entries: int = 1_000_000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._by_ts: dict[int, dict[int, bytes]] = {}
        self._size = 0
        self._swept = 0.0
        self.overflowed = False

    def check(self, timestamp: str, nonce: str, digest: bytes, now: float | None = None) -> Seen:
        """`new` (and recorded), `retry` (this very request again) or `replay` (another request, same nonce)."""
        now = time.time() if now is None else now
        if now - self._swept >= 1.0:
            self._sweep(now)
        ts = int(timestamp)
        bucket = self._by_ts.get(ts)
        # hash() is salted per process and 64-bit: two different nonces colliding is not a practical worry.
        key = hash(nonce)
        if bucket is not None and key in bucket:
            return "retry" if hmac.compare_digest(bucket[key], digest) else "replay"
        if self._size >= self.max_entries:
            # Full of WeChat's own signed traffic: let it through unrecorded rather than refuse real users;
            # the inbox dedupe still stops a replay from acting twice.
            self.overflowed = True
            return "new"
        if bucket is None:
            bucket = self._by_ts[ts] = {}
        bucket[key] = digest
        self._size += 1
        return "new"

    def _sweep(self, now: float) -> None:
        self._swept = now
        for ts in [ts for ts in self._by_ts if ts < now - self.max_age - 1]:
            self._size -= len(self._by_ts.pop(ts))

    def __len__(self) -> int:
        return self._size


def parse_xml(raw: bytes | str) -> Element:
    """Parses with every DTD, entity and external reference refused (billion laughs, XXE)."""
    try:
        root: Element = defused_fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (DefusedXmlException, ParseError, ValueError) as exc:
        raise BadXml(type(exc).__name__) from None
    if root.tag != "xml":
        raise BadXml("root is not <xml>")
    return root


def xml_fields(root: Element) -> dict[str, str]:
    """Top-level text fields (the first of each name); nested elements such as ScanCodeInfo are left out."""
    fields: dict[str, str] = {}
    for child in root:
        if not len(child) and child.tag not in fields:
            fields[child.tag] = child.text or ""
    return fields


def cdata_safe(text: str) -> str:
    """wechatpy wraps text in CDATA without escaping; a `]]>` in it would end the section early."""
    return text.replace("]]>", "]]]]><![CDATA[>")


class SafeModeCodec:
    """Safe (and compatible) mode for one app: the EncodingAESKey, the token and the AppID."""

    def __init__(self, token: str, encoding_aes_key: str, app_id: str) -> None:
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except ValueError:
            key = b""
        if len(encoding_aes_key) != 43 or len(key) != 32:
            raise ValueError("WECHAT_AES_KEY must be the 43-character EncodingAESKey")
        self.token = token
        self.app_id = app_id
        self._key = key
        self._crypto = WeChatCrypto(token, encoding_aes_key, app_id)

    def signature_ok(self, msg_signature: str, timestamp: str, nonce: str, encrypted: str) -> bool:
        return signature_matches(msg_signature, self.token, timestamp, nonce, encrypted)

    def decrypt(self, encrypted: str) -> str:
        """Plain XML inside the envelope; refuses another app's messages and anything malformed."""
        if not encrypted or len(encrypted) > 200_000:
            raise BadCiphertext("empty or oversized")
        try:
            return str(PrpCrypto(self._key).decrypt(encrypted, self.app_id))
        except Exception as exc:  # base64, padding, length prefix, UTF-8 or AppID: all mean "not for us"
            raise BadCiphertext(type(exc).__name__) from None

    def encrypt_reply(self, xml: str, timestamp: str | None = None, nonce: str | None = None) -> str:
        nonce = nonce or str(secrets.randbelow(10**9) + 10**9)
        return str(self._crypto.encrypt_message(xml, nonce, timestamp or str(int(time.time()))))


def envelope_of(root: Element) -> str:
    node = root.find("Encrypt")
    if node is None or not (node.text or "").strip():
        raise BadXml("no <Encrypt> in a safe-mode body")
    return (node.text or "").strip()


def reply_envelope(xml: str) -> dict[str, Any]:
    """The four fields of an encrypted reply (for tests and the benchmark)."""
    return xml_fields(parse_xml(xml))


class SharedNonces:
    """Nonces seen by any worker: the local cache first (free), then Redis `SET NX EX` when REDIS_URL is set, or
    the database's `wechat_nonces` table when there is no Redis (or it stops answering) and the database is one
    several workers share. An identical request (same signatures, same body) under a seen nonce is WeChat's retry
    wherever it lands; anything else under it is a replay, refused by whichever worker it reaches.

    With neither (one process on SQLite) the local cache is the whole answer, which is complete there.
    """

    PURGE_EVERY = 60.0

    def __init__(self, local: NonceCache, redis_url: str = "", *, prefix: str = "haoqing:wx:nonce:",
                 db: Any = None) -> None:
        self.local = local
        self.prefix = prefix
        self._redis: Any = None
        self._redis_down_until = 0.0
        self.db: Any = None
        self._purged = 0.0
        if redis_url:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
        if db is not None:
            self.share_through(db)

    def share_through(self, db: Any) -> None:
        """Keeps nonces in `db` when Redis is absent or down; a SQLite file serves one process, so not there."""
        self.db = None if getattr(db, "is_sqlite", True) else db

    @property
    def fresh_for(self) -> int:
        # A nonce only needs remembering while its timestamp can still pass the freshness check.
        return self.local.max_age + MAX_FUTURE_SECONDS + 5

    async def check(self, timestamp: str, nonce: str, digest: bytes, now: float | None = None) -> Seen:
        seen = self.local.check(timestamp, nonce, digest, now)
        if seen != "new":
            return seen
        # The digest is kept with the nonce, so WeChat's identical retry that lands on another worker is told from
        # a replay there too.
        if self._redis is not None and time.monotonic() >= self._redis_down_until:
            try:
                return await self._check_redis(timestamp, nonce, digest)
            except Exception as exc:  # redis.exceptions.* and OSError alike: go on without it, say so once
                log.warning("wechat nonces: Redis unavailable, using the database", extra={"error": type(exc).__name__})
                self._redis_down_until = time.monotonic() + 5.0
        if self.db is not None:
            return await self._check_db(timestamp, nonce, digest, time.time() if now is None else now)
        return seen

    async def _check_redis(self, timestamp: str, nonce: str, digest: bytes) -> Seen:
        key = f"{self.prefix}{int(timestamp)}:{nonce}"
        if await self._redis.set(key, digest, nx=True, ex=self.fresh_for):
            return "new"
        held = await self._redis.get(key)
        return "retry" if isinstance(held, bytes) and hmac.compare_digest(held, digest) else "replay"

    async def _check_db(self, timestamp: str, nonce: str, digest: bytes, now: float) -> Seen:
        from sqlalchemy import text

        hexed = digest.hex()
        params: dict[str, Any] = {"key": f"{int(timestamp)}:{nonce}", "digest": hexed, "ts": int(timestamp)}
        async with self.db.engine.begin() as connection:
            if now - self._purged >= self.PURGE_EVERY:
                self._purged = now
                await connection.execute(text(_PURGE_NONCES), {"before": int(now) - self.fresh_for})
            if (await connection.execute(text(_INSERT_NONCE), params)).rowcount == 1:
                return "new"
            held = (await connection.execute(text(_SELECT_NONCE), params)).scalar()
        return "retry" if isinstance(held, str) and hmac.compare_digest(held, hexed) else "replay"

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()


_INSERT_NONCE = "INSERT INTO wechat_nonces (nonce_key, digest, ts) VALUES (:key, :digest, :ts) ON CONFLICT DO NOTHING"
_SELECT_NONCE = "SELECT digest FROM wechat_nonces WHERE nonce_key = :key"
_PURGE_NONCES = "DELETE FROM wechat_nonces WHERE ts < :before"
