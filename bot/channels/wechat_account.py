"""What the WeChat account can do, from WECHAT_ACCOUNT, checked against what the API answers at start.

Unverified accounts (订阅号 or 服务号 without 认证) have no customer-service or template API (48001): the bot
can then only answer passively, so it must never promise a push. A configuration error the API reports (48001,
40164, 40125, 40013, 40037) stops the start with a message naming the setting; an API that cannot be reached
at start is only logged, since that says nothing about the configuration.
It must never log the AppSecret or the access token.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from bot.channels.wechat_api import NOT_AUTHORIZED, WeChatApi, WeChatApiError, WeChatUnavailable
from bot.channels.wechat_text import TemplateFieldsError, parse_template_fields
from bot.config import ConfigurationError, Settings

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\.DATA\s*\}\}")


@dataclass
class Capabilities:
    """Mutable: a configuration error met at run time (the account lost 认证, the IP whitelist changed) turns a
    capability off for this process, so the bot stops promising what it can no longer send."""

    customer_service: bool
    templates: bool
    template_fields: dict[str, str]

    @classmethod
    def declared(cls, settings: Settings) -> Capabilities:
        """From the settings alone; raises ConfigurationError for combinations that cannot work."""
        account = settings.wechat_account
        has_api = bool(settings.wechat_app_id and settings.wechat_app_secret)
        if account != "unverified" and not has_api:
            raise ConfigurationError(f"WECHAT_ACCOUNT={account} sends customer-service messages, which needs "
                                     "WECHAT_APP_ID and WECHAT_APP_SECRET; set them, or WECHAT_ACCOUNT=unverified")
        fields: dict[str, str] = {}
        if settings.wechat_template_id:
            if account != "verified_service":
                raise ConfigurationError("WECHAT_TEMPLATE_ID is set, but template messages need a verified service "
                                         f"account and WECHAT_ACCOUNT={account}; unset WECHAT_TEMPLATE_ID")
            try:
                fields = parse_template_fields(settings.wechat_template_fields)
            except TemplateFieldsError as exc:
                raise ConfigurationError(str(exc)) from None
            if not fields:
                raise ConfigurationError("WECHAT_TEMPLATE_ID needs WECHAT_TEMPLATE_FIELDS, the template's field names "
                                         "mapped to our values, e.g. thing1=summary,time2=time")
        return cls(customer_service=account != "unverified", templates=bool(fields), template_fields=fields)

    @property
    def can_push(self) -> bool:
        return self.customer_service or self.templates


async def confirm(caps: Capabilities, api: WeChatApi, settings: Settings) -> None:
    """Asks the API whether the declared capabilities hold; raises ConfigurationError when WeChat says no."""
    if not (settings.wechat_app_id and settings.wechat_app_secret):
        return
    try:
        await api.token()
        if caps.customer_service:
            await _probe_customer_service(api, settings)
        elif settings.wechat_account == "unverified":
            await _note_unused_customer_service(api)
        if caps.templates:
            await _check_template(api, caps, settings)
    except WeChatUnavailable as exc:
        log.warning("wechat API unreachable at start; the account type is not confirmed",
                    extra={"reason": str(exc)})
    except WeChatApiError as exc:
        hint = exc.config_hint
        if hint is None:
            log.warning("wechat API check at start failed", extra={"errcode": exc.errcode})
            return
        log.critical("wechat configuration error: %s", hint)
        raise ConfigurationError(hint) from None


async def _probe_customer_service(api: WeChatApi, settings: Settings) -> None:
    try:
        await api.customer_service_accounts()
    except WeChatApiError as exc:
        if exc.errcode == NOT_AUTHORIZED:
            raise ConfigurationError(
                f"WECHAT_ACCOUNT={settings.wechat_account}, but WeChat answers 48001 (api unauthorized) for the "
                "customer-service API, so the account is not verified: set WECHAT_ACCOUNT=unverified, or "
                "have the account verified") from None
        raise


async def _note_unused_customer_service(api: WeChatApi) -> None:
    try:
        await api.customer_service_accounts()
    except WeChatApiError:
        return
    log.warning("the WeChat account can send customer-service messages, but WECHAT_ACCOUNT=unverified leaves "
                "them unused: set WECHAT_ACCOUNT=verified_subscription or verified_service")


async def _check_template(api: WeChatApi, caps: Capabilities, settings: Settings) -> None:
    try:
        templates = await api.templates()
    except WeChatApiError as exc:
        if exc.errcode == NOT_AUTHORIZED:
            raise ConfigurationError("WECHAT_TEMPLATE_ID is set, but WeChat answers 48001 for template messages: "
                                     "the account is not a verified service account; unset WECHAT_TEMPLATE_ID "
                                     "or set WECHAT_ACCOUNT to what the account is") from None
        raise
    found = next((t for t in templates if t.get("template_id") == settings.wechat_template_id), None)
    if found is None:
        raise ConfigurationError("WECHAT_TEMPLATE_ID is not among the account's templates "
                                 "(admin console > Template Messages > My Templates)")
    names = set(_PLACEHOLDER.findall(str(found.get("content", ""))))
    unknown = sorted(set(caps.template_fields) - names)
    if unknown:
        raise ConfigurationError(f"WECHAT_TEMPLATE_FIELDS names {', '.join(unknown)}, which the template does not "
                                 f"have; its fields are {', '.join(sorted(names)) or 'none'}")
