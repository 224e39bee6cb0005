"""Byte-code off the path to a healthy server: a per-machine store of compiled modules that new clones link in.

Python compiles each module the first time it is imported and keeps the result in __pycache__/. A new clone has
none, so its first `make run` (and each pytest worker of its first `make test`) compiled every module it imported
(about 4 s of CPU before the server answered). Instead:

- `seed(venv)`, run by scripts/setup_env.py while it sets up a new or changed .venv, hard-links every module the
  machine has compiled before into the clone's __pycache__ folders (about a tenth of a second);
- `fill`, which setup_env.py then starts in the background at the lowest CPU priority, compiles whatever the
  store still lacks (the first clone on a machine, or new pins) and adds it to the store for the next clone.

The store holds *checked-hash* byte-code (PEP 552): Python compares it with a hash of the source at each import,
so a stored file that does not match the clone's source (other pins, an edited module) is simply recompiled, as
if it were absent. Files are replaced only by rename, never rewritten in place, so a hard link can never change
under a running interpreter.

Standard library only: setup_env.py imports it before .venv exists; `fill` runs on .venv's Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import os
import py_compile
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The project's own packages (and the test helpers pytest imports), compiled as the dependencies are.
REPO_PACKAGES = ("bot", "dialogs", "domain", "integrations", "tests")
STAMP = ".haoqing-bytecode"  # in .venv: this clone was seeded and filled for the pins and sources it names


def store_home(cache_home: Path, cache_tag: str) -> Path:
    return cache_home / "haoqing" / f"bytecode-{cache_tag}"


def site_packages(venv: Path) -> Path | None:
    return next(iter(sorted(venv.glob("lib/python3*/site-packages"))), None)


def venv_cache_tag(site: Path) -> str:
    """cpython-311 for lib/python3.11/site-packages: the venv's interpreter, whichever Python runs this."""
    return "cpython-" + site.parent.name.removeprefix("python").replace(".", "")


def wanted_stamp(venv: Path) -> str:
    """What a complete fill answers for: the pins and the interpreter (the project's sources change too often
    to be part of it; a module edited since is recompiled by Python on import, as usual)."""
    lock = ROOT / "uv.lock"
    pins = (lock if lock.exists() else ROOT / "requirements.txt").read_bytes()
    cfg = (venv / "pyvenv.cfg").read_bytes() if (venv / "pyvenv.cfg").exists() else b""
    return hashlib.sha256(pins + b"\0" + cfg).hexdigest()


def needs_fill(venv: Path) -> bool:
    stamp = venv / STAMP
    return not stamp.exists() or stamp.read_text().strip() != wanted_stamp(venv)


def _roots(venv: Path, store: Path) -> list[tuple[Path, Path]]:
    """(where the sources are, where the store keeps their byte-code) for the dependencies and the project."""
    site = site_packages(venv)
    roots = [(site, store / "site")] if site else []
    return roots + [(ROOT / name, store / "repo" / name) for name in REPO_PACKAGES if (ROOT / name).is_dir()]


def _link(source: Path, target: Path) -> bool:
    """Puts `source` at `target` (a hard link, a copy across file systems) unless something is there already."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError:
        scratch = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        try:
            with open(source, "rb") as src, open(scratch, "xb") as dst:
                dst.write(src.read())
            os.replace(scratch, target)
        except OSError:
            with contextlib.suppress(OSError):
                scratch.unlink()
            return False
    return True


def seed(venv: Path, cache_home: Path) -> int:
    """Links the store's byte-code into the clone wherever the clone has none; returns how many files."""
    site = site_packages(venv)
    if site is None:
        return 0
    store = store_home(cache_home, venv_cache_tag(site))
    linked = 0
    for source_root, store_root in _roots(venv, store):
        for folder, _dirs, files in os.walk(store_root):
            relative = Path(folder).relative_to(store_root)
            if relative.name != "__pycache__":
                continue
            package = source_root / relative.parent
            if not package.is_dir():  # a module of other pins
                continue
            target = package / "__pycache__"
            target.mkdir(exist_ok=True)
            for name in files:
                if name.endswith(".pyc") and _link(Path(folder) / name, target / name):
                    linked += 1
    return linked


def start_fill(venv: Path) -> None:
    """Runs `fill` detached and at the lowest priority: it outlives `make`, and it never slows what the user
    waits for by more than what the idle core had to spare."""
    python = venv / "bin" / "python"
    if not python.exists():
        return
    subprocess.Popen([str(python), str(Path(__file__).resolve()), "fill", str(venv)],
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, cwd=ROOT)


def _valid_hash_pyc(path: Path, source_hash: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            header = f.read(16)
    except OSError:
        return False
    return (len(header) == 16 and header[:4] == importlib.util.MAGIC_NUMBER
            and int.from_bytes(header[4:8], "little") & 0b11 == 0b11 and header[8:16] == source_hash)


def _sources(root: Path) -> Iterator[Path]:
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
        for name in files:
            if name.endswith(".py"):
                yield Path(folder) / name


def _runtime_first(site: Path) -> list[Path]:
    """The top-level folders of site-packages, those of the project's run-time dependencies first: a server
    started while the fill is under way finds most of what it imports compiled sooner."""
    from importlib import metadata

    try:
        wanted = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        wanted = []
    dists = {(d.metadata["Name"] or "").lower().replace("_", "-"): d
             for d in metadata.distributions(path=[str(site)])}
    seen: set[str] = set()
    todo = [_requirement_name(r) for r in wanted]
    while todo:
        name = todo.pop()
        if name in seen or name not in dists:
            continue
        seen.add(name)
        todo += [_requirement_name(r) for r in dists[name].requires or [] if "extra ==" not in r]
    hot: list[Path] = []
    for name in sorted(seen):
        for file in dists[name].files or []:
            first = Path(str(file)).parts[0]
            top = site / first
            if first not in ("..", ".") and top.is_dir() and top not in hot \
                    and not first.endswith((".dist-info", ".data")):
                hot.append(top)
    rest = sorted(p for p in site.iterdir() if p.is_dir() and p not in hot and p.name != "__pycache__"
                  and not p.name.endswith((".dist-info", ".data")))
    return hot + rest


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0].strip()
    for stop in "[<>=!~ (":
        name = name.split(stop)[0]
    return name.lower().replace("_", "-")


def _fill_tree(sources: Iterable[Path], source_root: Path, store_root: Path) -> None:
    for source in sources:
        try:
            data = source.read_bytes()
        except OSError:
            continue
        digest = importlib.util.source_hash(data)
        relative = source.relative_to(source_root)
        name = Path(importlib.util.cache_from_source(str(source))).name
        stored = store_root / relative.parent / "__pycache__" / name
        target = source.parent / "__pycache__" / name
        if not _valid_hash_pyc(stored, digest):
            stored.parent.mkdir(parents=True, exist_ok=True)
            scratch = stored.with_name(f"{stored.name}.{os.getpid()}.tmp")
            try:
                py_compile.compile(str(source), cfile=str(scratch), dfile=str(source), doraise=True,
                                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
                os.replace(scratch, stored)
            except (py_compile.PyCompileError, OSError, ValueError, SyntaxError):
                with contextlib.suppress(OSError):
                    scratch.unlink()
                continue  # a template or a module for another Python: never imported here
        if not target.exists():
            target.parent.mkdir(exist_ok=True)
            _link(stored, target)


def fill(venv: Path) -> int:
    """Compiles into the store what it lacks, links it into this clone, and stamps .venv when done. One fill at
    a time on a machine: a second waits, then finds most of its work done by the first."""
    with contextlib.suppress(OSError):
        os.nice(19)
    site = site_packages(venv)
    if site is None:
        return 1
    store = store_home(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"), venv_cache_tag(site))
    store.mkdir(parents=True, exist_ok=True)
    with open(store / ".filling", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = wanted_stamp(venv)
        for name in REPO_PACKAGES:
            if (ROOT / name).is_dir():
                _fill_tree(_sources(ROOT / name), ROOT / name, store / "repo" / name)
        for top in _runtime_first(site):
            _fill_tree(_sources(top), site, store / "site")
        _fill_tree((p for p in site.glob("*.py")), site, store / "site")
        if venv.exists():
            (venv / STAMP).write_text(stamp + "\n")
    return 0


def wait_for_fills(cache_home: Path, cache_tag: str = f"cpython-{sys.version_info[0]}{sys.version_info[1]}") -> None:
    """Returns once no fill is under way on the store (for bench/setup.py)."""
    store = store_home(cache_home, cache_tag)
    if (store / ".filling").exists():
        with open(store / ".filling", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)


if __name__ == "__main__":
    if sys.argv[1:2] == ["fill"] and len(sys.argv) == 3:
        raise SystemExit(fill(Path(sys.argv[2])))
    raise SystemExit("usage: bytecode.py fill VENV")
