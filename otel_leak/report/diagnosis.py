"""Why no process of an ``otel-leak run`` wrote a report: one sentence naming the cause and the fix.

Auto-instrumentation can only load in a Python interpreter whose environment has otel-leak installed (its
entry point is what ``opentelemetry-instrument``'s ``sitecustomize`` loads). So the command's interpreter is
found (the command itself, its ``#!`` line, the Python processes seen under it) and asked, with ``-I`` so
nothing of the run's environment loads, where its environment is and whether otel-leak is in it. Only when
it is do settings and interpreter flags get the blame.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Iterable

from otel_leak import config

HEAD = "no instrumented process wrote a report"
PROBE_TIMEOUT_S = 10.0
_PYTHON_NAME = re.compile(r"^(python|pypy)[0-9.]*[a-z]?$")
# Interpreter options that keep opentelemetry-instrument's sitecustomize from loading.
_BLOCKING_FLAGS = {"-I": "-I ignores PYTHONPATH", "-E": "-E ignores PYTHONPATH", "-S": "-S skips sitecustomize"}

PROBE = """\
import importlib.metadata as m, json, sys
def has(name):
    try:
        m.distribution(name)
        return True
    except Exception:
        return False
try:
    conf = bool(m.entry_points(group="opentelemetry_configurator"))
except Exception:
    conf = False
print(json.dumps({"prefix": sys.prefix, "venv": sys.prefix != sys.base_prefix,
                  "version": "%d.%d.%d" % sys.version_info[:3], "otel_leak": has("otel-leak"),
                  "configurator": conf}))
"""


@dataclass
class Process:
    """What the runner saw of one process: its command line and its executable."""

    cmdline: list[str]
    exe: str | None = None


def looks_like_python(path: str | None) -> bool:
    return bool(path) and bool(_PYTHON_NAME.match(os.path.basename(path)))


def shebang(path: str, env: dict[str, str]) -> str | None:
    """The interpreter a ``#!`` line names (``/usr/bin/env NAME`` resolved on the child's PATH), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return None
    if not head.startswith(b"#!"):
        return None
    words = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").split()
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        if not names:
            return None
        return shutil.which(names[0], path=env.get("PATH", os.defpath)) or names[0]
    return words[0]


def _resolve(name: str, env: dict[str, str]) -> str:
    if os.sep in name:
        return name
    return shutil.which(name, path=env.get("PATH", os.defpath)) or name


def interpreters(exe: str, env: dict[str, str], seen: Iterable[Process]) -> list[str]:
    """The Python interpreters the run used: the command's own first, then those of processes seen."""
    out: list[str] = []
    if looks_like_python(exe):
        out.append(exe)
    else:
        named = shebang(exe, env)
        if looks_like_python(named):
            out.append(named)
    for proc in seen:
        first = proc.cmdline[0] if proc.cmdline else None
        if looks_like_python(first):
            out.append(_resolve(first, env))
        elif looks_like_python(proc.exe) and proc.exe not in {os.path.realpath(p) for p in out}:
            out.append(proc.exe)  # the binary itself: a virtual environment's shows its base interpreter
    unique: list[str] = []
    for path in out:
        if path not in unique:
            unique.append(path)
    return unique


def probe(interpreter: str) -> dict | None:
    """Where the interpreter's environment is and what it has installed (None if it cannot say)."""
    try:
        done = subprocess.run([interpreter, "-I", "-c", PROBE], capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except Exception:
        return None


def _where(info: dict) -> str:
    kind = "virtual environment" if info.get("venv") else "environment"
    return f"Python {info.get('version')}, {kind} {info.get('prefix')}"


def _ours() -> str:
    return f"{sys.prefix} (Python {'.'.join(map(str, sys.version_info[:3]))})"


def _flags(cmdline: list[str]) -> list[str]:
    """Interpreter options before the script, ``-m`` or ``-c``."""
    flags = []
    for word in cmdline[1:]:
        if not word.startswith("-") or word in ("-", "-m", "-c"):
            break
        flags.extend(f"-{c}" for c in word[1:] if c.isalpha())
    return flags


def _setting_cause(env: dict[str, str], info: dict) -> str | None:
    if not config.get(config.ENABLED, env):
        return f"{config.ENABLED.env}={env.get(config.ENABLED.env)} turns otel-leak off: unset it"
    disabled = [x.strip() for x in env.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "").split(",")]
    if "otel_leak" in disabled or "*" in disabled:
        return "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS excludes otel_leak: take it off that list"
    if not config.get(config.SETUP_SDK, env) and not info.get("configurator"):
        return (
            f"{config.SETUP_SDK.env}={env.get(config.SETUP_SDK.env)} and no OpenTelemetry SDK configurator is "
            f"installed in {info.get('prefix')}, so nothing sets up the SDK: unset it"
        )
    return None


def diagnose(command: list[str], exe: str, env: dict[str, str], seen: Iterable[Process]) -> str:
    """The cause and the fix, for the report's errors (starts with :data:`HEAD`). Never raises."""
    try:
        return f"{HEAD}: {_diagnose(command, exe, env, list(seen))}"
    except Exception as exc:  # noqa: BLE001 - the generic sentence is still true
        return f"{HEAD} (no cause found: {type(exc).__name__}: {exc})"


def _diagnose(command: list[str], exe: str, env: dict[str, str], seen: list[Process]) -> str:
    found = interpreters(exe, env, seen)
    if not found:
        named = shebang(exe, env)
        what = f"a {os.path.basename(named)} script" if named else "not a Python program"
        return (
            f"{command[0]} ({exe}) is {what} and no Python process was seen under it; otel-leak run measures "
            "Python workers: give it the Python command itself (otel-leak run -- python worker.py, or the "
            "worker's script, such as celery -A app worker)"
        )
    queried = [(path, probe(path)) for path in found]
    for path, info in queried:
        if info is not None and not info.get("otel_leak"):
            return (
                f"the command runs {path} ({_where(info)}), where otel-leak is not installed; this otel-leak "
                f"is in {_ours()}: install otel-leak there ({path} -m pip install otel-leak), or run the worker "
                f"with {os.path.join(os.path.dirname(sys.executable), 'python')} or the scripts beside it"
            )
    for path, info in queried:
        if info is None:
            return f"the command runs {path}, which could not be asked where its environment is; is it a Python 3 interpreter?"
    for proc in seen:
        blocking = [_BLOCKING_FLAGS[f] for f in _flags(proc.cmdline) if f in _BLOCKING_FLAGS]
        if blocking and looks_like_python(proc.cmdline[0] if proc.cmdline else proc.exe):
            return f"{' and '.join(blocking)}, so auto-instrumentation cannot load: run Python without it"
    for _path, info in queried:
        cause = _setting_cause(env, info)
        if cause:
            return cause
    return (
        f"otel-leak is installed where the command runs ({_where(queried[0][1])}); look in the command's "
        "output for an 'otel-leak:' warning or 'Error in sitecustomize' (a process killed before its first "
        "periodic write leaves no report either)"
    )
