"""The README says only what is true: its settings table names every setting the code reads, and every command
it shows runs. `make run` starts the real server from a clean data folder, prints nothing error-looking before it
says it is ready, and the README's curl lines answer against it; the make targets it names exist; the other
commands run as far as they can here."""

from __future__ import annotations

import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOC_BASE = "http://127.0.0.1:8080"
ENV_PREFIX = r"(?:[A-Z_]+=\S+ )*"
COMMAND = re.compile(rf"^{ENV_PREFIX}(?:make|\.venv/bin/python|python3?|curl|docker|uv) ")
# What looks like trouble to a newcomer reading the start-up output.
ALARMING = re.compile(r"error|warning|traceback|exception|not found|failed|deprecat", re.IGNORECASE)


def readme_commands() -> list[str]:
    """Every line of a ```sh block (comments dropped) and every inline `command` the prose shows."""
    found: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.DOTALL):
        for line in block.splitlines():
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                found.append(command)
    prose = re.sub(r"```.*?```", "", README, flags=re.DOTALL)
    found += [c for c in re.findall(r"`([^`\n]+)`", prose) if COMMAND.match(c)]
    return list(dict.fromkeys(found))


def make_targets(command: str) -> tuple[dict[str, str], list[str]]:
    """`A=1 make unit B=2` → ({"A": "1"}, ["unit", "B=2"])."""
    words = shlex.split(command)
    env: dict[str, str] = {}
    while words and "=" in words[0]:
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    assert words[0] == "make"
    return env, words[1:]


def test_every_setting_is_documented() -> None:
    missing = [name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README]
    assert not missing
    assert "make run" in README and "make test" in README


def test_every_command_is_one_this_test_knows_how_to_run() -> None:
    # `docker compose config` is run by tests/test_deploy.py (a Docker engine is needed for the rest).
    known = ("make ", "curl ", "python -m bot ", "python -m integrations.sandbox_registry", "python3 bench/",
             "docker build", "docker compose config")
    unknown = [c for c in readme_commands()
               if not re.sub(rf"^{ENV_PREFIX}", "", c).removeprefix(".venv/bin/").startswith(known)]
    assert not unknown, f"the README shows commands tests/test_readme.py does not run: {unknown}"
    assert any(c.startswith("curl ") for c in readme_commands())


@pytest.mark.parametrize("command", [c for c in readme_commands() if re.sub(rf"^{ENV_PREFIX}", "", c)
                                     .startswith("make ")])
def test_each_make_target_named_exists(command: str) -> None:
    """`make -n` expands the target without running it: a renamed or removed target fails here."""
    env, args = make_targets(command)
    done = subprocess.run(["make", "-n", *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_bot_subcommands_shown_exist_and_diagram_runs() -> None:
    usage = subprocess.run([sys.executable, "-m", "bot", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 0, usage.stderr
    for command in readme_commands():
        if command.removeprefix(".venv/bin/").startswith("python -m bot "):
            assert shlex.split(command)[3] in usage.stdout, command
    diagram = subprocess.run([sys.executable, "-m", "bot", "diagram"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert diagram.returncode == 0 and diagram.stdout.startswith(("flowchart", "stateDiagram", "graph")), \
        diagram.stderr


def test_the_sandbox_registry_command_shown_starts() -> None:
    """Serving it needs a token and a port; its usage is as far as a test goes without them."""
    shown = [c for c in readme_commands()
             if c.removeprefix(".venv/bin/").startswith("python -m integrations.sandbox_registry")]
    assert shown
    done = subprocess.run([sys.executable, "-m", "integrations.sandbox_registry", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--port" in done.stdout, done.stderr


def test_the_bench_commands_shown_parse_their_arguments() -> None:
    """A bench runs for minutes; its argument parser is as far as a test goes."""
    shown = [c for c in readme_commands() if c.startswith("python3 bench/")]
    assert shown
    for command in shown:
        script, *args = shlex.split(command)[1:]
        done = subprocess.run([sys.executable, script, *args, "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and "usage:" in done.stdout, f"{command}: {done.stderr}"


def test_the_lock_matches_pyproject() -> None:
    """What `make lock` would write is what is committed: the same pins for uv and for pip."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import setup_env
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    requirements = (ROOT / "requirements.txt").read_text()
    assert f"{setup_env.PINS_HEADER}{setup_env.dependencies_digest()}" in requirements, "run `make lock`"
    import tomllib

    locked = {p["name"]: p["version"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]
              if "version" in p and p.get("source", {}).get("editable") is None}
    exported = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", requirements, re.MULTILINE))
    assert {k.lower() for k in exported} <= set(locked)
    assert all(locked[name.lower()] == version for name, version in exported.items())
    uv = shutil.which("uv") or str(Path(setup_env.cache_home(), "haoqing", f"uv-{setup_env.UV_VERSION}", "bin", "uv"))
    if not Path(uv).exists():
        pytest.skip("uv is not installed here: the pins were compared, the resolution was not")
    check = subprocess.run([uv, "lock", "--locked", "--offline"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "UV_NO_CONFIG": "1", "UV_PYTHON_DOWNLOADS": "never"})
    assert check.returncode == 0, f"uv.lock does not match pyproject.toml: run `make lock`\n{check.stderr}"


@pytest.fixture(scope="session")  # session: xdist may run other files between these tests on the same worker
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    """`make run` as the README says, on a free port and a clean data folder: (base URL, lines before ready)."""
    data = tmp_path_factory.mktemp("make-run-data")
    env = {**os.environ, "PORT": "0", "DATA_DIR": str(data), "SECRET_KEY": "readme-test-secret"}
    env.pop("DATABASE_URL", None)
    env.pop("REGISTRY_URL", None)
    proc = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    # A server that hangs before printing would block the read below: end it, and the read ends with it.
    watchdog = threading.Timer(300, os.killpg, (proc.pid, 9))
    watchdog.start()
    before: list[str] = []
    base = ""
    try:
        for line in proc.stdout:
            before.append(line)
            match = re.search(r"Haoqing is ready: open (http://\S+?)/? ", line)
            if match:
                base = match.group(1)
                break
        assert base, "make run never said it was ready:\n" + "".join(before)
        for _ in range(3):  # the hint lines printed with the ready line
            before.append(proc.stdout.readline())
        # The server goes on writing (a line per request at INFO): read on, or a full pipe would stall it.
        threading.Thread(target=collections.deque, args=(proc.stdout, 0), daemon=True).start()
        yield base, before
    finally:
        watchdog.cancel()
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


@pytest.mark.xdist_group("make_run")
def test_make_run_says_what_to_do_and_nothing_alarming_first(make_run: tuple[str, list[str]]) -> None:
    base, lines = make_run
    text = "".join(lines)
    assert not [line for line in lines if ALARMING.search(line)], text
    assert "alembic" not in text
    assert f"{base}/sandbox/sms?phone=" in text and "demo number" in text


@pytest.mark.xdist_group("make_run")
@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("curl ")])
def test_each_curl_line_answers(make_run: tuple[str, list[str]], command: str) -> None:
    base, _ = make_run
    args = [a.replace(DOC_BASE, base) for a in shlex.split(command)[1:]]
    assert any(a.startswith(base) for a in args), f"{command} does not call {DOC_BASE}"
    done = subprocess.run(["curl", "-fsS", "--max-time", "20", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}: {done.stderr}"
    json.loads(done.stdout)


@pytest.mark.xdist_group("make_run")
def test_the_favicon_is_served(make_run: tuple[str, list[str]]) -> None:
    base, _ = make_run
    done = subprocess.run(["curl", "-fsS", "--max-time", "20", "-o", "/dev/null", "-w", "%{content_type}",
                           f"{base}/favicon.ico"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and done.stdout == "image/x-icon", done.stderr
