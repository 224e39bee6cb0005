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
    redis_url: str = Field("", description="Optional Redis for cross-worker rate limits and caches.")
    secret_key: str = Field("", description="Server secret for keyed hashes and encryption at rest; "
                                            "generated into DATA_DIR/secret.key when unset.")
    registry_url: str = Field("", description="Binding registry base URL; empty runs the embedded sandbox.")
    registry_timeout: float = Field(5.0, description="Seconds before a registry call counts as failed.")
    sms_provider: Literal["sandbox", "tencent"] = Field("sandbox", description="SMS gateway for verification codes.")
    tencent_secret_id: str = Field("", description="Tencent Cloud SecretId (SMS_PROVIDER=tencent).")
    tencent_secret_key: str = Field("", description="Tencent Cloud SecretKey (SMS_PROVIDER=tencent).")
    tencent_sms_app_id: str = Field("", description="Tencent SMS SdkAppId.")
    tencent_sms_sign_name: str = Field("", description="Approved SMS signature (签名).")
    tencent_sms_template_id: str = Field("", description="Approved template with {1}=code, {2}=minutes.")
    otp_ttl_seconds: int = Field(300, description="How long a verification code stays valid.")
    otp_resend_seconds: int = Field(60, description="Minimum wait between two codes.")
    otp_max_attempts: int = Field(5, description="Wrong codes before a challenge is void.")
    otp_per_number_daily: int = Field(5, description="Codes per phone number per day.")
    otp_per_user_daily: int = Field(10, description="Codes per user per day.")
    otp_global_daily: int = Field(20000, description="Codes per day for the whole bot (SMS-pumping guard).")
    log_level: str = Field("INFO", description="Python logging level.")
    log_file: str = Field("", description="Also write JSON logs to this file.")

    @property
    def embedded_registry(self) -> bool:
        return not self.registry_url

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'haoqing.sqlite3').resolve()}"

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
