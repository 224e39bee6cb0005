"""Creates or refreshes .venv from the committed lock, printing one short line per stage.

uv installs the pins in uv.lock; where uv cannot be had, pip installs the same pins from requirements.txt, which
`make lock` exports from uv.lock. Neither resolves a version here, so an install never picks up a release nobody
chose: upgrades happen only through `make lock` / `make upgrade`. An installer's own output is shown only when it
fails (and, on a terminal, uv's progress bars).

Standard library only: it runs on the interpreter the Makefile found, before .venv exists.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
# The uv that wrote uv.lock; bootstrapped once per machine into the user's cache, so later clones find it.
UV_VERSION = "0.13.9"
EXTRAS = ("dev",)
PINS_HEADER = "# pyproject-dependencies-sha256: "
# uv's summary and per-package listing: the stage line says the same in one line.
UV_NOISE = re.compile(r"^\s*(Using CPython|Creating virtual environment|Resolved \d|Prepared \d|Installed \d|"
                      r"Uninstalled \d|Audited \d|Checked \d|Bytecode compiled|Building |Built |[-+~] \S)")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def say(message: str) -> None:
    print(f"[setup] {message}", flush=True)


def fail(message: str, output: str = "") -> int:
    if output:
        sys.stderr.write(output if output.endswith("\n") else output + "\n")
    print(f"[setup] failed: {message}", file=sys.stderr, flush=True)
    return 1


def dependencies_digest() -> str:
    """What the lock must answer for: the project's dependency lists, not the rest of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {"python": project.get("requires-python", ""), "main": sorted(project.get("dependencies", [])),
              "extras": {k: sorted(v) for k, v in sorted(project.get("optional-dependencies", {}).items())}}
    return hashlib.sha256(repr(wanted).encode()).hexdigest()


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def uv_version(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    parts = out.split()
    return parts[1] if len(parts) > 1 else ""


def find_uv() -> str | None:
    """The pinned uv: from PATH when it is that version, else from the user's cache, else installed there once."""
    if os.environ.get("HAOQING_INSTALLER", "").lower() == "pip":
        return None
    on_path = shutil.which("uv")
    if on_path and uv_version(on_path) == UV_VERSION:
        return on_path
    home = cache_home() / "haoqing" / f"uv-{UV_VERSION}"
    binary = home / "bin" / "uv"
    if binary.exists():
        return str(binary)
    say(f"fetching uv {UV_VERSION} from PyPI (once per machine, into {home}) …")
    scratch = home.with_name(f"{home.name}.partial-{os.getpid()}")
    # As an environment variable, the root-user option is simply ignored by a pip too old to know it.
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-warn-script-location", "--target", str(scratch), f"uv=={UV_VERSION}"],
                          capture_output=True, text=True, env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"})
    if done.returncode != 0 or not (scratch / "bin" / "uv").exists():
        shutil.rmtree(scratch, ignore_errors=True)
        reason = (done.stderr.strip().splitlines() or ["pip installed no uv binary"])[-1]
        say(f"uv could not be fetched ({reason[:120]}): installing the same pins with pip instead")
        return None
    try:
        scratch.rename(home)
    except OSError:  # another set-up finished first: use its copy
        shutil.rmtree(scratch, ignore_errors=True)
    return str(binary)


def uv_cache_dir() -> Path:
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    return cache_home() / "uv"


def existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def uv_environment() -> dict[str, str]:
    env = dict(os.environ)
    # An activated virtualenv elsewhere would make uv warn that it ignores it.
    env.pop("VIRTUAL_ENV", None)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env.setdefault("UV_NO_CONFIG", "1")
    if "UV_LINK_MODE" not in env and existing_parent(uv_cache_dir()).stat().st_dev != ROOT.stat().st_dev:
        # Hard links cannot cross file systems; say so up front instead of letting uv warn about it.
        env["UV_LINK_MODE"] = "copy"
    return env


def run_showing_progress(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs uv on a pseudo-terminal so it draws its progress bars, passing the bars through and keeping its
    summary lines back; returns the exit code and the whole output for a failure report."""
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child only execs
        try:
            os.chdir(ROOT)
            os.execvpe(cmd[0], cmd, env)
        finally:
            os._exit(127)
    out = sys.stderr.buffer
    pending = b""
    seen: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen.append(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            frames, _, last = line.rstrip(b"\r").rpartition(b"\r")
            text = ANSI.sub("", last.decode("utf-8", "replace"))
            if UV_NOISE.match(text):
                out.write(frames + b"\r\x1b[2K")
            else:
                out.write(line + b"\n")
        # Bar frames begin by erasing their line; a text line never does. Pass on the frames drawn so far and
        # hold back the rest until its line ends, so a summary line is never shown half-way.
        erased = pending.rfind(b"\x1b[2K")
        if erased > 0:
            out.write(pending[:erased])
            pending = pending[erased:]
        out.flush()
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    out.write(b"\r\x1b[2K")
    out.flush()
    return os.waitstatus_to_exitcode(status), b"".join(seen).decode("utf-8", "replace")


def sync_with_uv(uv: str) -> int:
    # --inexact: a package someone added by hand for work in progress stays until `make lock` takes it in.
    # --no-install-project: the checkout goes on the path through a .pth instead (see put_checkout_on_path).
    cmd = [uv, "sync", "--locked", "--inexact", "--no-install-project", *(f"--extra={extra}" for extra in EXTRAS)]
    if not (VENV / "bin" / "python").exists():
        cmd += ["--python", sys.executable]
    env = uv_environment()
    say(f"packages: bringing .venv in step with uv.lock (uv {UV_VERSION}) …")
    started = time.monotonic()
    if sys.stderr.isatty():
        code, output = run_showing_progress(cmd, env)
        report = ""  # its errors were shown as they came
    else:
        done = subprocess.run([*cmd, "--quiet"], env=env, cwd=ROOT, capture_output=True, text=True)
        code, output = done.returncode, done.stdout + done.stderr
        report = output
    if code != 0:
        if "needs to be updated" in output or "--locked" in output:
            return fail("pyproject.toml asks for something uv.lock does not pin: run `make lock`, then commit "
                        "uv.lock and requirements.txt", report)
        return fail(f"uv sync exited with {code}", report)
    put_checkout_on_path()
    say(f"packages: .venv matches uv.lock ({time.monotonic() - started:.1f} s)")
    return 0


def put_checkout_on_path() -> None:
    """What an editable install of this project amounts to, without building one: the checkout on sys.path.
    A build costs each new clone seconds (setuptools in a fresh build environment) for nothing the code uses."""
    for site_packages in VENV.glob("lib/python3*/site-packages"):
        pth = site_packages / "haoqing-checkout.pth"
        if not pth.exists() or pth.read_text().strip() != str(ROOT):
            pth.write_text(f"{ROOT}\n")


def sync_with_pip() -> int:
    if not REQUIREMENTS.exists():
        return fail("requirements.txt is missing: run `make lock`")
    text = REQUIREMENTS.read_text()
    header = next((line for line in text.splitlines() if line.startswith(PINS_HEADER)), "")
    if header.removeprefix(PINS_HEADER).strip() != dependencies_digest():
        return fail("pyproject.toml's dependencies changed since requirements.txt was exported: run `make lock`")
    stamp = VENV / ".haoqing-pins"
    wanted = hashlib.sha256(text.encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted and (VENV / "bin" / "python").exists():
        put_checkout_on_path()
        say("packages: .venv matches requirements.txt")
        return 0
    started = time.monotonic()
    if not (VENV / "bin" / "python").exists():
        say(f"creating .venv with {sys.executable}")
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if made.returncode != 0:
            return fail("python -m venv failed (on Debian: apt-get install python3-venv)", made.stdout + made.stderr)
    total = sum(1 for line in text.splitlines() if re.match(r"^[A-Za-z0-9]", line))
    say("packages: installing the pins in requirements.txt with pip (slower than uv) …")
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    code, output = _pip_with_progress([*pip, "install", "--no-deps", "--require-hashes", "-r", str(REQUIREMENTS)],
                                      total)
    if code != 0:
        return fail(f"pip install exited with {code}", output)
    put_checkout_on_path()
    stamp.write_text(wanted)
    say(f"packages: .venv matches requirements.txt ({time.monotonic() - started:.1f} s)")
    return 0


def _pip_with_progress(cmd: list[str], total: int) -> tuple[int, str]:
    """pip prints a 'Collecting' line per package; count them into one progress line."""
    tty = sys.stdout.isatty()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert proc.stdout is not None
    lines: list[str] = []
    collected = 0
    last_quarter = 0
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Ignoring "):  # a pin for another platform or Python: not installed here
            total -= 1
        elif line.startswith("Collecting "):
            collected += 1
            if tty:
                print(f"\r  pip: {collected}/{total} packages", end="", flush=True)
            elif collected * 4 // total > last_quarter:
                last_quarter = collected * 4 // total
                say(f"  pip: {collected}/{total} packages")
        elif line.startswith("Installing collected packages") and tty:
            print(f"\r  pip: unpacking {total} packages   ", end="", flush=True)
    code = proc.wait()
    if tty:
        print("\r\x1b[2K", end="", flush=True)
    return code, "".join(lines)


def main(argv: list[str]) -> int:
    if argv == ["--uv-path"]:  # for `make lock`: messages to stderr, the path alone to stdout
        sys.stdout = sys.stderr
        uv = find_uv()
        sys.stdout = sys.__stdout__
        print(uv or "")
        return 0 if uv else 1
    if argv == ["--dependencies-digest"]:
        print(dependencies_digest())
        return 0
    say(f"Python {sys.version.split()[0]} ({sys.executable})")
    uv = find_uv()
    status = sync_with_uv(uv) if uv else sync_with_pip()
    if status == 0:
        provide_bytecode()
    return status


def provide_bytecode() -> None:
    """A new or changed .venv gets the modules this machine compiled before (scripts/bytecode.py), and the rest
    compile in the background, so neither the first start nor the first test run waits for the compiler."""
    import bytecode

    if os.environ.get("HAOQING_BYTECODE_STORE") == "0" or not bytecode.needs_fill(VENV):
        return  # 0: as before the store, Python compiles on first import (for timing the difference)
    started = time.monotonic()
    linked = bytecode.seed(VENV, cache_home())
    bytecode.start_fill(VENV)
    say(f"byte-code: {linked} compiled modules from this machine's cache ({time.monotonic() - started:.1f} s); "
        "the rest compile in the background")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
