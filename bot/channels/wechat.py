"""The WeChat official account (公众号) channel: the webhook at GET/POST /wechat, passive replies within
WeChat's 5-second rule, customer-service follow-ups, the custom menu.

Every request is answered within `wechat_passive_seconds` (4.3 s): the dialog step runs as a task (its registry
reads capped at `wechat_registry_timeout`), and if it is not done by then the passive reply says it is working on
it. The result follows by customer-service message, or, on an account without that API, is the passive answer to
the user's next message. A WeChat retry of a delivery (the byte-identical request, or the same sender and MsgId,
or sender+CreateTime+Event for events) joins the running step or gets its stored answer through the inbox; it
never runs the step twice. A reply over WeChat's size goes in pages ("回复 0 查看更多").
It must never parse a body whose URL signature is wrong, never accept a stale or repeated timestamp/nonce, never
hand XML with a DOCTYPE or entity to wechatpy, and never log an openid, a message text or a secret.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from wechatpy import parse_message
from wechatpy.events import ClickEvent, ScanEvent, SubscribeEvent, SubscribeScanEvent, UnsubscribeEvent
from wechatpy.messages import BaseMessage, TextMessage
from wechatpy.replies import TextReply, TransferCustomerServiceReply

from bot.channels.wechat_account import Capabilities, confirm
from bot.channels.wechat_api import WeChatApi
from bot.channels.wechat_crypto import (
    BadCiphertext,
    BadXml,
    NonceCache,
    SafeModeCodec,
    SharedNonces,
    cdata_safe,
    envelope_of,
    fresh,
    parse_xml,
    request_digest,
    signature_matches,
    well_formed_params,
    xml_fields,
)
from bot.channels.wechat_sender import CHANNEL, CustomerServiceSender
from bot.channels.wechat_text import (
    MAX_TEXT_BYTES,
    clip,
    join_texts,
    numbered_index,
    paginate,
    payload_text,
    text_of,
)
from bot.channels.wechat_token_store import DbTokenStore
from bot.config import Settings
from bot.dispatch import Incoming
from bot.effects import REGISTRY_READ_BUDGET
from bot.i18n import Catalog
from bot.runtime import Runtime
from bot.storage import Database
from bot.vault import Vault
from dialogs.commands import parse_command
from dialogs.model import DEFAULT_LANG, LANGS, Event, Msg
from dialogs.registry import menu_entries

__all__ = ["WECHAT", "WeChatChannel", "create_menu", "menu_definition", "setup_wechat"]

log = logging.getLogger(__name__)

PATH = "/wechat"
MAX_BODY = 64 * 1024
# WeChat gives up after 5 s; answer well before, leaving room for the network and the reply's encryption.
# A finished delivery is remembered this long, so WeChat's retries (within ~15 s) get a consistent answer.
REMEMBER_SECONDS = 60.0
_OPENID = re.compile(r"[A-Za-z0-9_-]{6,64}")
_ACCOUNT = re.compile(r"[A-Za-z0-9_@.-]{1,64}")
_SCENE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_MEDIA = {"image": "photo", "voice": "voice", "video": "video", "shortvideo": "video", "location": "location",
          "link": "link"}
# Menu CLICK keys: the main menu's choice ids, plus global commands.
MENU_CHOICES = frozenset(entry.choice for entry in menu_entries() if entry.choice != "human")
MENU_COMMANDS = {"human": "human", "help": "help", "menu": "menu", "start": "start", "language": "language"}
# What the user types for the next page of a long answer.
NEXT_PAGE = "0"
# Room kept on each page for the "reply 0" line.
PAGE_FOOTER_BYTES = 120
MAX_REMEMBERED = 20_000


@dataclass(frozen=True)
class InboundPlan:
    """What one inbound message asks of the bot."""

    action: Literal["dispatch", "transfer", "unsubscribe", "ignore"]
    events: tuple[Event, ...] = ()
    dedupe_key: str = ""
    resubscribe: bool = False


@dataclass
class _Delivery:
    """One delivery's running step, shared by WeChat's retries of it within this process."""

    task: asyncio.Task[tuple[list[dict[str, Any]], str]]
    openid: str
    waiting: int = 0
    # passive: a waiting request answered with the result; deferred: the result goes by customer service.
    outcome: Literal["running", "passive", "deferred", "failed"] = "running"
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    # Other deliveries answered with this one's result (a next message on an account that cannot push).
    aliases: list[str] = field(default_factory=list)


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class WeChatChannel:
    def __init__(self, rt: Runtime, *, clock: Callable[[], float] = time.time) -> None:
        settings = rt.settings
        self.rt = rt
        self.token = settings.wechat_token
        self.app_id = settings.wechat_app_id
        self.codec = SafeModeCodec(self.token, settings.wechat_aes_key, self.app_id) if settings.wechat_aes_key \
            else None
        self.native_support = bool(settings.wechat_native_support)
        self.passive_seconds = settings.wechat_passive_seconds
        self.clock = clock
        self.nonces = SharedNonces(NonceCache(), settings.redis_url, db=rt.db)
        self.api = WeChatApi(settings.wechat_api_base_url, settings.wechat_app_id, settings.wechat_app_secret,
                             DbTokenStore(rt.db, rt.vault, settings.wechat_app_id),
                             timeout=settings.wechat_api_timeout)
        # Raises ConfigurationError for settings that cannot work together, so the server does not start.
        self.caps = Capabilities.declared(settings)
        self.sender = CustomerServiceSender(settings=settings, db=rt.db, repository=rt.repository, catalog=rt.catalog,
                                            no_push_channels=rt.dispatcher.no_push_channels, api=self.api,
                                            caps=self.caps)
        if not self.caps.customer_service:
            rt.dispatcher.no_push_channels.add(CHANNEL)
        self.registry_budget = min(settings.wechat_registry_timeout, settings.registry_timeout)
        self._deliveries: dict[str, _Delivery] = {}
        # openid -> the key of the user's latest delivery (to join it from their next message).
        self._latest: OrderedDict[str, str] = OrderedDict()
        # openid -> pages of a long answer not shown yet.
        self._pages: OrderedDict[str, list[str]] = OrderedDict()
        # Deliveries answered without a step (a next page, results collected): the passive text, for retries.
        self._answered: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Language per openid for the texts this channel adds before the step has said anything.
        self._langs: OrderedDict[str, str] = OrderedDict()

    # --- HTTP -------------------------------------------------------------------------------------------
    async def verify(self, request: web.Request) -> web.Response:
        """GET: WeChat's server check; echoes echostr once the signature and freshness hold."""
        try:
            self._check_url(request)
        except Refused as refused:
            return self._refuse(refused)
        echostr = request.query.get("echostr", "")
        if not echostr or len(echostr) > 256:
            return web.Response(status=400, text="bad echostr")
        return web.Response(text=echostr, content_type="text/plain")

    async def receive(self, request: web.Request) -> web.Response:
        started = asyncio.get_running_loop().time()
        try:
            msg, fields, encrypted = await self._authentic_message(request)
            plan = await self._plan(msg, fields)
        except Refused as refused:
            return self._refuse(refused)
        openid = str(msg.source)
        try:
            return await self._act(msg, openid, plan, encrypted, started)
        finally:
            self.sender.wake_for(openid)

    def _refuse(self, refused: Refused) -> web.Response:
        log.warning("wechat request refused", extra={"status": refused.status, "reason": refused.reason})
        return web.Response(status=refused.status, text=refused.reason, content_type="text/plain")

    def _check_url(self, request: web.Request) -> tuple[str, str]:
        query = request.query
        signature, timestamp, nonce = (query.get("signature", ""), query.get("timestamp", ""),
                                       query.get("nonce", ""))
        if not well_formed_params(timestamp, nonce) or not signature_matches(signature, self.token, timestamp,
                                                                             nonce):
            raise Refused(403, "bad signature")
        if not fresh(timestamp, self.clock()):
            raise Refused(403, "stale timestamp")
        return timestamp, nonce

    async def _authentic_message(self, request: web.Request) -> tuple[BaseMessage, dict[str, str], bool]:
        timestamp, nonce = self._check_url(request)
        # Safe and compatible mode say encrypt_type=aes. Without a key we can still read a compatible-mode
        # body's plaintext fields (and answer in plaintext, which compatible mode accepts).
        encrypted = request.query.get("encrypt_type", "raw").lower() == "aes"
        if encrypted and self.codec is None:
            encrypted = False
        elif not encrypted and self.codec is not None:
            # The URL signature does not cover the body; with a key set, only msg_signature'd bodies count.
            raise Refused(403, "plaintext body while WECHAT_AES_KEY is set")
        raw = await self._body(request)
        if not raw.strip():
            raise Refused(400, "empty body")
        try:
            root = parse_xml(raw)
            envelope = envelope_of(root) if encrypted else ""
        except BadXml as exc:
            raise Refused(400, f"bad xml: {exc}") from None
        if encrypted:
            assert self.codec is not None
            if not self.codec.signature_ok(request.query.get("msg_signature", ""), timestamp, nonce, envelope):
                raise Refused(403, "bad msg_signature")
        digest = request_digest(request.query.get("signature", ""), request.query.get("msg_signature", ""), raw)
        # WeChat's retry after 5 s without an answer is the byte-identical request: it goes on, and its delivery
        # key joins the running step or finds the stored answer. Anything else under a seen nonce is a replay.
        if await self.nonces.check(timestamp, nonce, digest, self.clock()) == "replay":
            raise Refused(403, "replayed nonce")
        if encrypted:
            assert self.codec is not None
            try:
                inner = self.codec.decrypt(envelope)
                root = parse_xml(inner)
            except (BadCiphertext, BadXml) as exc:
                raise Refused(400, f"bad envelope: {exc}") from None
            raw = inner.encode("utf-8")
        fields = xml_fields(root)
        try:
            msg = parse_message(raw)
        except Exception:  # wechatpy raises KeyError, ValueError, TypeError… on odd shapes
            raise Refused(400, "unparseable message") from None
        sender, account = fields.get("FromUserName", ""), fields.get("ToUserName", "")
        if msg is None or not _OPENID.fullmatch(sender) or not _ACCOUNT.fullmatch(account) \
                or str(msg.source) != sender or str(msg.target) != account:
            raise Refused(400, "missing or odd sender")
        return msg, fields, encrypted

    async def _body(self, request: web.Request) -> bytes:
        if (request.content_length or 0) > MAX_BODY:
            raise Refused(413, "body too large")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.read(16384):
            size += len(chunk)
            if size > MAX_BODY:
                raise Refused(413, "body too large")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- what the message means ---------------------------------------------------------------------------
    async def _plan(self, msg: BaseMessage, fields: dict[str, str]) -> InboundPlan:
        openid = str(msg.source)
        msg_type = fields.get("MsgType", "").strip().lower()
        created = fields.get("CreateTime", "").strip()
        if msg_type == "event":
            # Events carry no MsgId; two kinds of event can share a second.
            event_name = re.sub(r"[^A-Za-z0-9_]", "", fields.get("Event", ""))[:32]
            return await self._event_plan(msg, openid, f"c:{self._stored(openid)}:{created}:{event_name}")
        msg_id = fields.get("MsgId", "").strip()
        # MsgId alone is not unique across users (WxJava #333 saw collisions): the sender is part of the key,
        # as its keyed hash, so the inbox holds no openid either.
        sender = self._stored(openid)
        key = f"m:{sender}:{msg_id}" if msg_id.isdigit() else f"m:{sender}:t{created}"
        if isinstance(msg, TextMessage):
            content = msg.content if isinstance(msg.content, str) else ""
            command = parse_command(content)
            if self.native_support and command is not None and command[0] == "human":
                return InboundPlan("transfer")
            return InboundPlan("dispatch", (Event("text", text=content),), key)
        return InboundPlan("dispatch", (Event("media", media=_MEDIA.get(msg_type, "other")),), key)

    async def _event_plan(self, msg: BaseMessage, openid: str, key: str) -> InboundPlan:
        if isinstance(msg, UnsubscribeEvent):
            return InboundPlan("unsubscribe")
        if isinstance(msg, SubscribeEvent | SubscribeScanEvent | ScanEvent):
            scene = str(getattr(msg, "scene_id", "") or "")
            arg = f" {scene}" if _SCENE.fullmatch(scene) else ""
            return InboundPlan("dispatch", (Event("text", text=f"/start{arg}"),), key,
                        resubscribe=not isinstance(msg, ScanEvent))
        if isinstance(msg, ClickEvent):
            click = str(msg.key or "").strip()
            if click == "human" and self.native_support:
                return InboundPlan("transfer")
            if click in MENU_COMMANDS:
                return InboundPlan("dispatch", (Event("command", command=MENU_COMMANDS[click]),), key)
            if click in MENU_CHOICES:
                if click in await self._offered(openid):
                    return InboundPlan("dispatch", (Event("choice", choice=click),), key)
                # Not on offer where the user is: back to the menu first, then the item, as if typed there.
                return InboundPlan("dispatch", (Event("command", command="menu"), Event("choice", choice=click)), key)
            return InboundPlan("dispatch", (Event("command", command="menu"),), key)
        # VIEW, location reports, template receipts…: nothing to say.
        return InboundPlan("ignore")

    def _stored(self, openid: str) -> str:
        return self.rt.dispatcher.stored_id(CHANNEL, openid)

    async def _offered(self, openid: str) -> tuple[str, ...]:
        return (await self.rt.repository.offer(CHANNEL, openid)).choices

    # --- answering ---------------------------------------------------------------------------------------
    async def _act(self, msg: BaseMessage, openid: str, plan: InboundPlan, encrypted: bool,
                   started: float) -> web.Response:
        if plan.action == "ignore":
            return _success()
        if plan.action == "unsubscribe":
            await self._set_active(openid, False)
            log.info("wechat user unfollowed")
            return _success()
        if plan.action == "transfer":
            return self._xml(TransferCustomerServiceReply(source=msg.target, target=msg.source,
                                                          time=int(self.clock())).render(), encrypted)
        if plan.resubscribe:
            await self._set_active(openid, True)
        answered = self._answered.get(plan.dedupe_key)
        if answered is not None:
            return self._text(msg, answered, encrypted)
        page = self._next_page(openid, plan)
        if page is not None:
            return self._text(msg, self._remember_answer(plan.dedupe_key, page), encrypted)
        try:
            answer = await self._dispatch(openid, plan, started)
        except Exception:
            log.exception("wechat step failed")
            return self._text(msg, text_of(self.rt.catalog, "wechat.error", self._lang(openid)), encrypted)
        if answer is None:
            # Never promise a push the account cannot send: without customer service the result waits for them.
            key = "wechat.working" if self.caps.customer_service else "wechat.working_reply_to_see"
            return self._text(msg, text_of(self.rt.catalog, key, self._lang(openid)), encrypted)
        payloads, lang, _key = answer
        if not payloads:
            return _success()
        return self._text(msg, self._passive_text(openid, payloads, lang), encrypted)

    def _passive_text(self, openid: str, payloads: list[dict[str, Any]], lang: str) -> str:
        """One passive message; a text over WeChat's size is cut into pages the user asks for with "0"."""
        hint = text_of(self.rt.catalog, "wechat.choose_hint", lang)
        numbered = numbered_index(payloads)
        text = join_texts([payload_text(p, numbered=i == numbered, hint=hint) for i, p in enumerate(payloads)])
        self._pages.pop(openid, None)
        if len(text.encode("utf-8")) <= MAX_TEXT_BYTES:
            return text
        pages = paginate(text, MAX_TEXT_BYTES - PAGE_FOOTER_BYTES)
        total = len(pages)
        marked = [page + "\n\n" + self.rt.catalog.render(Msg("wechat.more", {"page": n, "pages": total}), lang)
                  if n < total else page for n, page in enumerate(pages, 1)]
        self._pages[openid] = marked[1:]
        while len(self._pages) > MAX_REMEMBERED:
            self._pages.popitem(last=False)
        marker = text_of(self.rt.catalog, "wechat.truncated", lang)
        return clip(marked[0], MAX_TEXT_BYTES, marker)

    def _next_page(self, openid: str, plan: InboundPlan) -> str | None:
        """"0" while a long answer has pages left: the next page, with no step. Anything else ends the paging."""
        if plan.action != "dispatch" or openid not in self._pages:
            return None
        event = plan.events[-1] if plan.events else None
        typed = unicodedata.normalize("NFKC", event.text).strip() if event is not None and event.kind == "text" \
            else None
        if typed != NEXT_PAGE:
            self._pages.pop(openid, None)
            return None
        pages = self._pages[openid]
        page = pages.pop(0)
        if not pages:
            del self._pages[openid]
        return page

    def _remember_answer(self, key: str, text: str) -> str:
        if key:
            self._answered[key] = text
            while len(self._answered) > MAX_REMEMBERED:
                self._answered.popitem(last=False)
        return text

    def _text(self, msg: BaseMessage, text: str, encrypted: bool) -> web.Response:
        reply = TextReply(source=msg.target, target=msg.source, content=cdata_safe(text), time=int(self.clock()))
        return self._xml(reply.render(), encrypted)

    def _xml(self, xml: str, encrypted: bool) -> web.Response:
        if encrypted:
            assert self.codec is not None
            xml = self.codec.encrypt_reply(xml, timestamp=str(int(self.clock())))
        return web.Response(text=xml, content_type="application/xml")

    def _lang(self, openid: str) -> str:
        return self._langs.get(openid, DEFAULT_LANG)

    def _remember_lang(self, openid: str, lang: str) -> None:
        self._langs[openid] = lang
        self._langs.move_to_end(openid)
        while len(self._langs) > 50_000:
            self._langs.popitem(last=False)

    async def _set_active(self, openid: str, active: bool) -> None:
        await self.rt.repository.set_active(CHANNEL, openid, active)
        if active:
            self.sender.wake_for(openid)

    # --- the 5-second rule -----------------------------------------------------------------------------
    async def _dispatch(self, openid: str, plan: InboundPlan,
                        started: float) -> tuple[list[dict[str, Any]], str, str] | None:
        """The step's payloads if ready in time; None when the result will follow by customer service."""
        key = plan.dedupe_key
        delivery = self._deliveries.get(key)
        if delivery is None and not self.caps.customer_service:
            # Without customer service a result that missed its passive reply waits for the user: their next
            # message, whatever it says, collects it instead of starting a step on a menu they have not seen.
            joined = await self._collect(openid, key)
            if isinstance(joined, _Delivery):
                delivery = joined
            elif joined is not None:
                return joined
        if delivery is not None and delivery.task.done():
            return await self._answer_again(delivery, key)
        if delivery is None:
            last = len(plan.events) - 1
            incomings = [Incoming(CHANNEL, openid, event, dedupe_key=key if i == last else f"{key}:{i}")
                         for i, event in enumerate(plan.events)]
            task = asyncio.create_task(self._run_steps(openid, incomings))
            delivery = _Delivery(task, openid)
            self._deliveries[key] = delivery
            self._latest[openid] = key
            self._latest.move_to_end(openid)
            while len(self._latest) > MAX_REMEMBERED:
                self._latest.popitem(last=False)
            task.add_done_callback(functools.partial(self._step_done, key, delivery))
        remaining = self.passive_seconds - (asyncio.get_running_loop().time() - started)
        # Counted from now until this request gives up; one that answers stays counted, so the step's
        # end (even a moment later) knows a passive reply carried the result.
        delivery.waiting += 1
        try:
            if not delivery.task.done() and remaining > 0:
                await asyncio.wait({delivery.task}, timeout=remaining)
        except BaseException:
            delivery.waiting -= 1
            raise
        if not delivery.task.done():
            delivery.waiting -= 1
            return None
        payloads, lang = delivery.task.result()
        return payloads, lang, key

    async def _collect(self, openid: str,
                       key: str) -> _Delivery | tuple[list[dict[str, Any]], str, str] | None:
        """The user's earlier step still running (to join), or its result waiting in the outbox (claimed now,
        to answer with); None when nothing waits and this message is a step of its own."""
        latest = self._latest.get(openid)
        earlier = self._deliveries.get(latest) if latest else None
        if earlier is not None and earlier.outcome in ("running", "deferred"):
            if not earlier.task.done():
                earlier.aliases.append(key)
                self._deliveries[key] = earlier
                return earlier
            await earlier.settled.wait()  # its rows are handed back to `pending` before they can be collected
        user = await self.rt.dispatcher.user_for(CHANNEL, openid, create=False)
        if user is None:
            return None
        payloads = await self.rt.repository.collect_pending_replies(user.id, CHANNEL)
        if not payloads:
            return None
        lang = next((str(p["lang"]) for p in payloads if p.get("lang") in LANGS), None) or self._lang(openid)
        log.info("wechat result collected by the user's next message", extra={"rows": len(payloads)})
        # A retry of this message gets the same text, not a step.
        self._remember_answer(key, self._passive_text(openid, payloads, lang))
        return payloads, lang, key

    async def _run_steps(self, openid: str, incomings: list[Incoming]) -> tuple[list[dict[str, Any]], str]:
        # This task's own context: the cap applies to this step's registry reads only.
        REGISTRY_READ_BUDGET.set(self.registry_budget)
        payloads: list[dict[str, Any]] = []
        lang = self._lang(openid)
        for incoming in incomings:
            result = await self.rt.dispatcher.handle(incoming)
            payloads, lang = list(result.messages), result.lang
        self._remember_lang(openid, lang)
        return payloads, lang

    def _step_done(self, key: str, delivery: _Delivery, task: asyncio.Task[Any]) -> None:
        """Runs the moment the step ends: if no request is waiting for it, its result goes by customer service."""
        failed = task.cancelled() or task.exception() is not None
        if delivery.waiting > 0:
            delivery.outcome = "failed" if failed else "passive"
            delivery.settled.set()
            # A retry from now on gets the same answer from the inbox (or, if the step failed, runs it anew);
            # messages that joined it have no inbox row of their own, so they stay remembered a while.
            self._forget(key, delivery)
            if delivery.aliases:
                asyncio.get_running_loop().call_later(REMEMBER_SECONDS, self._forget_aliases, delivery)
            return
        delivery.outcome = "failed" if failed else "deferred"
        self._spawn(self._defer(key, delivery, failed))
        # Remembered a while, so WeChat's retries neither repeat nor lose what the sender delivers.
        asyncio.get_running_loop().call_later(REMEMBER_SECONDS, self._forget, key, delivery)
        if delivery.aliases:
            asyncio.get_running_loop().call_later(REMEMBER_SECONDS, self._forget_aliases, delivery)

    def _forget(self, key: str, delivery: _Delivery) -> None:
        if self._deliveries.get(key) is delivery:
            del self._deliveries[key]

    def _forget_aliases(self, delivery: _Delivery) -> None:
        for alias in delivery.aliases:
            self._forget(alias, delivery)

    async def _defer(self, key: str, delivery: _Delivery, failed: bool) -> None:
        try:
            if failed:
                if not delivery.task.cancelled():
                    log.error("wechat deferred step failed", exc_info=delivery.task.exception())
                await self.sender.send_now(delivery.openid,
                                           text_of(self.rt.catalog, "wechat.error", self._lang(delivery.openid)))
                return
            await self._hand_over(key, None)
            log.info("wechat step finished after the passive reply; result follows",
                     extra={"via": "customer_service" if self.caps.customer_service else "next_message"})
        finally:
            delivery.settled.set()

    async def _hand_over(self, key: str, seqs: list[int] | None) -> None:
        """Turns a step's already-answered rows back to pending, so the sender (or the next message) delivers
        them."""
        if await self.rt.repository.hand_back(CHANNEL, key, seqs):
            self.sender.wake()

    async def _answer_again(self, delivery: _Delivery,
                            key: str) -> tuple[list[dict[str, Any]], str, str] | None:
        """A retry after the step ended: repeat a passive answer (WeChat did not get it), or pass on
        whatever the sender has not delivered yet."""
        await delivery.settled.wait()
        if delivery.outcome == "failed":
            raise RuntimeError("the step failed")
        payloads, lang = delivery.task.result()
        if delivery.outcome == "passive":
            return payloads, lang, key
        claimed = await self.rt.repository.claim_pending_of(CHANNEL, key)
        return [p for p in payloads if p.get("seq") in claimed], lang, key

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, seconds: float = 5.0) -> None:
        """On shutdown: let running steps finish (their rows are durable either way), then stop."""
        pending = [d.task for d in self._deliveries.values() if not d.task.done()] + list(self._tasks)
        if pending:
            _done, still = await asyncio.wait(pending, timeout=seconds)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)


def _success() -> web.Response:
    return web.Response(text="success", content_type="text/plain")


WECHAT: web.AppKey[WeChatChannel] = web.AppKey("wechat", WeChatChannel)


def setup_wechat(app: web.Application, rt: Runtime) -> None:
    """Mounts GET/POST /wechat and starts the customer-service sender with the app."""
    channel = WeChatChannel(rt)
    app[WECHAT] = channel
    app.router.add_get(PATH, channel.verify)
    app.router.add_post(PATH, channel.receive)

    async def start_sender(_app: web.Application) -> None:
        # Fails the start (ConfigurationError, naming the setting) when WeChat says the account cannot do
        # what the settings declare.
        try:
            await confirm(channel.caps, channel.api, rt.settings)
        except BaseException:
            await channel.api.close()  # a failed start runs no shutdown hook: nothing else closes this session
            raise
        rt.background.append(asyncio.create_task(channel.sender.run_forever()))

    async def drain(_app: web.Application) -> None:
        await channel.drain()
        await channel.nonces.close()

    app.on_startup.append(start_sender)
    app.on_shutdown.append(drain)


# --- the custom menu ------------------------------------------------------------------------------------
def menu_definition(catalog: Catalog, lang: str = DEFAULT_LANG) -> dict[str, Any]:
    """Three buttons (WeChat's maximum); CLICK keys are the main menu's choice ids or global commands."""

    def click(name: str, key: str) -> dict[str, str]:
        return {"type": "click", "name": name, "key": key}

    more = [click(text_of(catalog, f"menu.{key}", lang), key) for key in ("recycle", "tag", "requests", "guide")]
    more.append(click(text_of(catalog, "menu.human", lang), "human"))
    return {"button": [
        click(text_of(catalog, "wechat.menu.lookup", lang), "lookup"),
        click(text_of(catalog, "wechat.menu.unbind", lang), "unbind"),
        {"name": text_of(catalog, "wechat.menu.more", lang), "sub_button": more},
    ]}


async def create_menu(settings: Settings, catalog: Catalog | None = None) -> dict[str, Any]:
    """Creates the custom menu through the WeChat API (`python -m bot wechat-menu`)."""
    if not (settings.wechat_app_id and settings.wechat_app_secret):
        raise SystemExit("wechat-menu needs WECHAT_APP_ID and WECHAT_APP_SECRET")
    # The server's token store, so this command neither fetches a second token nor invalidates the server's.
    db = Database(settings.resolved_database_url())
    await db.create_all()
    api = WeChatApi(settings.wechat_api_base_url, settings.wechat_app_id, settings.wechat_app_secret,
                    DbTokenStore(db, Vault(settings.resolved_secret()), settings.wechat_app_id),
                    timeout=settings.wechat_api_timeout)
    try:
        return await api.create_menu(menu_definition(catalog or Catalog.load()))
    finally:
        await db.close()
        await api.close()
