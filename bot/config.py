"""One Settings object, read from the environment. Never logs a secret."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    host: str = Field("127.0.0.1", description="Address the web server binds to.")
    port: int = Field(8080, description="Port the web server binds to (0 picks a free one).")
    data_dir: Path = Field(Path("data"), description="Folder for the SQLite files and the generated secret key.")
    database_url: str = Field("", description="SQLAlchemy URL; default is SQLite under DATA_DIR. "
                                              "`postgresql+asyncpg://…` for PostgreSQL.")
    redis_url: str = Field("", description="Optional Redis: WeChat nonces seen by any worker (replay refusal "
                                            "across workers).")
    secret_key: str = Field("", description="Server secret for keyed hashes and encryption at rest; "
                                            "generated into DATA_DIR/secret.key when unset.")
    registry_url: str = Field("", description="Binding registry base URL; empty runs the embedded sandbox.")
    registry_timeout: float = Field(5.0, description="Seconds before a registry call counts as failed.")
    sms_provider: Literal["sandbox", "tencent"] = Field("sandbox", description="SMS gateway for verification codes.")
    tencent_secret_id: str = Field("", description="Tencent Cloud SecretId (SMS_PROVIDER=tencent).")
    tencent_secret_key: str = Field("", description="Tencent Cloud SecretKey (SMS_PROVIDER=tencent).")
    tencent_sms_app_id: str = Field("", description="Tencent SMS SdkAppId.")
    tencent_sms_sign_name: str = Field("", description="Approved SMS signature name (SignName).")
    tencent_sms_template_id: str = Field("", description="Approved template with {1}=code, {2}=minutes.")
    otp_ttl_seconds: int = Field(300, description="How long a verification code stays valid.")
    otp_resend_seconds: int = Field(60, description="Minimum wait between two codes.")
    otp_max_attempts: int = Field(5, description="Wrong codes before a challenge is void.")
    otp_per_number_daily: int = Field(5, description="Codes per phone number per day.")
    otp_per_user_daily: int = Field(10, description="Codes per client per day (web chat: its address; Telegram, "
                                                    "WeChat: the platform user).")
    otp_global_daily: int = Field(20000, description="Codes per day for the whole bot (SMS-pumping guard).")
    realname_attempts: int = Field(3, description="Wrong name/ID pairs allowed per verified number.")
    recycle_checks_per_hour: int = Field(5, description="Recycled-number checks per user per hour.")
    recycle_checks_per_day: int = Field(20, description="Recycled-number checks per user per day.")
    public_base_url: str = Field("", description="Public URL of this server, for the registry's status callbacks; "
                                                 "default http://127.0.0.1:PORT.")
    registry_callback_secret: str = Field("", description="Shared secret of the registry's signed callbacks; "
                                                          "derived from SECRET_KEY when unset.")
    unbind_poll_seconds: float = Field(30.0, description="How often open unbind requests are polled and "
                                                         "queued ones resubmitted.")
    scheduler_poll_seconds: float = Field(1.0, description="How often the job scheduler looks for due jobs.")
    job_lease_seconds: float = Field(60.0, description="A claimed job whose worker died is taken over after this.")
    reminder_offsets_days: str = Field("7,1,0", description="Pre-cancellation reminders: days before the date.")
    sandbox_processing_seconds: float = Field(20.0, description="Sandbox registry: seconds until a request "
                                                                "is processing.")
    sandbox_done_seconds: float = Field(60.0, description="Sandbox registry: seconds until a request is done.")
    telegram_bot_token: str = Field("", description="Bot token from @BotFather; enables the Telegram channel.")
    telegram_api_base_url: str = Field("", description="Bot API base URL (a local Bot API server or a test "
                                                       "double); default Telegram's own.")
    telegram_webhook_url: str = Field("", description="Public URL of POST /telegram/webhook; unset = long polling.")
    telegram_webhook_secret: str = Field("", description="secret_token for set_webhook, checked on every update.")
    wechat_token: str = Field("", description="WeChat official account Token (signature check); enables /wechat.")
    wechat_app_id: str = Field("", description="WeChat AppID.")
    wechat_app_secret: str = Field("", description="WeChat AppSecret, for the access token.")
    wechat_aes_key: str = Field("", description="43-character EncodingAESKey: safe (encrypted) mode.")
    wechat_api_base_url: str = Field("", description="WeChat API base URL; default https://api.weixin.qq.com.")
    wechat_native_support: bool = Field(False, description="Hand the human-support command to WeChat's own "
                                                                   "customer-service agents.")
    wechat_template_id: str = Field("", description="Template for pushes outside the customer-service window; "
                                                    "empty = they wait for the user's next message.")
    wechat_template_fields: str = Field("", description="The template's field names mapped to our values, "
                                                        "e.g. `thing1=summary,time2=time` (values: summary, "
                                                        "detail, text, time); needed with WECHAT_TEMPLATE_ID.")
    wechat_template_max_chars: int = Field(20, description="Longest text put into a template field whose type "
                                                           "has no known limit (WeChat shows ~20 characters).")
    wechat_template_url: str = Field("", description="Optional link opened from a template message.")
    wechat_passive_seconds: float = Field(4.3, description="Longest wait before the passive reply says the bot "
                                                          "is working (WeChat's limit is 5 s).")
    wechat_sender_poll_seconds: float = Field(1.0, description="How often waiting WeChat pushes are tried.")
    wechat_api_timeout: float = Field(10.0, description="Seconds before a WeChat API call counts as failed.")
    tencent_sms_endpoint: str = Field("https://sms.tencentcloudapi.com", description="Tencent SMS API endpoint "
                                                                           "(a regional one, or a test double).")
    # --- channels: account types and budgets (issue 10) ---
    wechat_account: Literal["verified_service", "verified_subscription", "unverified"] = Field(
        "unverified", description="WeChat account type: verified_service (customer-service and template "
                                  "messages), verified_subscription (customer-service messages), unverified "
                                  "(passive replies only); checked against the API at start.")
    wechat_registry_timeout: float = Field(3.0, description="Seconds a registry read may take inside a WeChat "
                                                            "step, so the step ends within the passive reply.")
    telegram_bot_per_second: float = Field(28.0, description="Telegram messages per second across all chats, "
                                                             "replies first; Telegram allows about 30 (up to 1000 "
                                                             "with paid broadcasts).")
    # --- broadcasts (issue 14) ---
    telegram_broadcast_per_second: float = Field(20.0, description="Broadcast messages per second on Telegram, "
                                                                   "across all workers: kept below "
                                                                   "TELEGRAM_BOT_PER_SECOND so replies always "
                                                                   "have room.")
    wechat_broadcast_per_second: float = Field(20.0, description="Broadcast messages per second on WeChat, "
                                                                 "across all workers.")
    broadcast_lease_seconds: float = Field(120.0, description="A broadcast send claimed by a worker that died "
                                                              "is sent again after this long.")
    # --- operations: workers and metrics ---
    metrics_token: str = Field("", description="Bearer token a /metrics scrape must carry; empty = loopback "
                                               "scrapers only.")
    # --- core: exactly-once effects ---
    fault_after_effect: str = Field("", description="Tests only: the process dies right after an effect of this "
                                                    "kind runs, before its step commits (crash injection).")
    # --- staff handoff (issue 13) ---
    staff_hours: str = Field("09:00-18:00", description="Staff business hours, Beijing time (`HH:MM-HH:MM`; "
                                                        "`00:00-24:00` = around the clock).")
    staff_days: str = Field("1-5", description="Staff working days, ISO weekdays (1 = Monday): `1-5`, `1-7` "
                                               "or a list like `1,2,3,4,5,6`.")
    staff_ticket_timeout_minutes: int = Field(30, description="An unclaimed ticket goes back to the bot with an "
                                                              "apology after this many business minutes.")
    staff_minutes_per_ticket: int = Field(5, description="Expected wait per ticket ahead in the queue, in "
                                                         "minutes (what the user is told).")
    staff_session_hours: float = Field(12.0, description="A staff console login lasts this long.")
    telegram_staff_chat_id: str = Field("", description="Optional Telegram forum supergroup (its chat id) where "
                                                        "each ticket gets a topic that staff can answer in.")
    staff_login_max_failures: int = Field(5, description="Failed staff logins per account name (or 4x that per "
                                                         "client address) within 15 minutes before 429.")
    # --- trust and identity (issue 11): limits per client, sandbox opt-in, sessions, slow clients ---
    sandbox: bool = Field(False, description="Run the sandbox registry and SMS gateway (and /sandbox/*) on a "
                                             "non-loopback HOST too. Demo only: it publishes codes and holders.")
    registry_token: str = Field("", description="Bearer token for the registry (the standalone sandbox's "
                                                "--token); the embedded sandbox gets one derived from SECRET_KEY.")
    trusted_proxies: str = Field("", description="Comma-separated addresses or networks of reverse proxies whose "
                                                 "X-Forwarded-For is believed; empty = none.")
    otp_global_per_minute: int = Field(100, description="Codes per minute for the whole bot, so a burst cannot "
                                                        "spend the daily budget.")
    otp_pow_after: int = Field(3, description="Web chat: codes per client within an hour before each further "
                                              "code needs a proof of work.")
    pow_bits: int = Field(18, description="Proof-of-work difficulty (leading zero bits of SHA-256).")
    realname_lock_hours: int = Field(24, description="How long the real-name lockout (per number and per ID "
                                                     "number) lasts.")
    realname_client_daily: int = Field(10, description="Failed real-name checks per client per day.")
    web_sessions_per_minute: int = Field(10, description="New web chat sessions per client address per minute.")
    web_sessions_per_hour: int = Field(60, description="New web chat sessions per client address per hour.")
    web_session_idle_hours: float = Field(168.0, description="A web chat session unused this long is expired "
                                                             "(and its data purged).")
    user_idle_days: int = Field(365, description="Telegram and WeChat users silent this long lose their "
                                                 "conversation data.")
    http_header_timeout: float = Field(10.0, description="Seconds a connection may take to send its request "
                                                         "headers (and to start the next on keep-alive).")
    http_body_timeout: float = Field(30.0, description="Seconds a request body may take to arrive.")
    max_connections_per_address: int = Field(64, description="Open connections allowed from one peer address.")
    log_level: str = Field("INFO", description="Python logging level.")
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", description="The event loop the server runs on: "
                                                     "uvloop (libuv's, faster), or asyncio's own.")
    log_file: str = Field("", description="Also write JSON logs to this file.")
    access_log: bool = Field(True, description="A log line per HTTP request at INFO (path masked, query values left "
                                               "out); false leaves requests unlogged and untimed.")

    @property
    def embedded_registry(self) -> bool:
        return not self.registry_url

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'haoqing.sqlite3').resolve()}"

    def resolved_registry_token(self) -> str:
        """REGISTRY_TOKEN; for the embedded sandbox on a public HOST (SANDBOX=1), one derived from SECRET_KEY,
        so its API (holder checks, bindings, unbind filing) is the bot's alone even when the demo is public."""
        if self.registry_token or not self.embedded_registry:
            return self.registry_token
        import hashlib
        import ipaddress

        try:
            loopback = self.host == "localhost" or ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            loopback = False
        return "" if loopback else hashlib.sha256(b"sandbox-registry-token:" + self.resolved_secret()).hexdigest()

    def resolved_callback_secret(self) -> str:
        if self.registry_callback_secret:
            return self.registry_callback_secret
        import hashlib

        return hashlib.sha256(b"registry-callback:" + self.resolved_secret()).hexdigest()

    def resolved_secret(self) -> bytes:
        """The server secret; generated once and kept in DATA_DIR so restarts keep hashes valid."""
        if self.secret_key:
            return self.secret_key.encode()
        path = self.data_dir / "secret.key"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48))
            path.chmod(0o600)
        return path.read_text().strip().encode()


class ConfigurationError(RuntimeError):
    """A setting that cannot work: the message names it. Raised at start, so the bot does not run half-broken."""
