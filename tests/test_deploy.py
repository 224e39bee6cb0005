"""The shipped deployment files: compose.yaml resolves, publishes only the proxy and demands its secrets;
docs/nginx.conf is valid for the nginx the compose file runs.

Docker cannot run here, so `docker compose config` (or Debian's docker-compose) is the check; the topology
itself runs from plain processes in tests/test_workers.py. Under CI=true a missing tool fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "SECRET_KEY": "k" * 48}


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if IN_CI:
        pytest.fail("neither `docker compose` nor docker-compose is installed (scripts/ensure-services.sh)")
    pytest.skip("no docker compose here")


def compose_config(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith(("SANDBOX", "REGISTRY"))}
    return subprocess.run([*compose_command(), "-f", str(ROOT / "compose.yaml"), *extra, "config"],
                          capture_output=True, text=True, env={**clean, **env}, timeout=120)


def services(rendered: str) -> dict[str, str]:
    """Service name -> its block of the rendered (normalised) compose file."""
    body = rendered.split("\nservices:\n", 1)[-1] if not rendered.startswith("services:") else rendered[10:]
    body = re.split(r"\n(?=\S)", body, maxsplit=1)[0]
    blocks: dict[str, str] = {}
    for match in re.finditer(r"^  ([\w-]+):\n((?:    .*\n?|\n)*)", body, re.M):
        blocks[match.group(1)] = match.group(2)
    return blocks


def test_compose_publishes_only_the_proxy() -> None:
    result = compose_config({**SECRETS, "SANDBOX_REGISTRY_TOKEN": "t" * 20}, "--profile", "sandbox")
    assert result.returncode == 0, result.stderr
    blocks = services(result.stdout)
    assert set(blocks) == {"proxy", "bot", "postgres", "redis", "sandbox-registry"}, list(blocks)
    published = {name for name, block in blocks.items() if re.search(r"^    ports:", block, re.M)}
    assert published == {"proxy"}
    assert "serve" in blocks["bot"] and "--workers" in blocks["bot"]
    assert "SANDBOX: '0'" in blocks["bot"] or 'SANDBOX: "0"' in blocks["bot"], "the sandbox is off unless asked for"
    assert "nginx.conf" in blocks["proxy"]


def test_compose_demands_its_secrets() -> None:
    result = compose_config({"SECRET_KEY": SECRETS["SECRET_KEY"]})
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr
    result = compose_config({"POSTGRES_PASSWORD": "pg-secret"})
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr


def test_proxy_config_is_valid_nginx(tmp_path: Path) -> None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        if IN_CI:
            pytest.fail("nginx is not installed (scripts/ensure-services.sh installs nginx-light)")
        pytest.skip("no nginx here")
    # The upstream host only resolves inside compose's network; point it at loopback for the syntax check.
    conf = (ROOT / "docs" / "nginx.conf").read_text().replace("server bot:8080", "server 127.0.0.1:9")
    (tmp_path / "nginx.conf").write_text(conf)
    (tmp_path / "logs").mkdir()
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-g", f"pid {tmp_path}/nginx.pid; error_log stderr;"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
