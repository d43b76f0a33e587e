"""The ``leak_check`` pytest fixture: leaking callables fail with bytes per call, site and holder; caches,
cyclic garbage and one-off steps pass. The fixture itself runs through the real pytest and its entry point."""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
import textwrap

import pytest

from otel_leak.pytest_plugin import LeakCheckFailed, run_check
from tests.conftest import ROOT

_KEPT: dict[int, bytes] = {}


def leaky(i=[0]):  # noqa: B006 - a counter
    i[0] += 1
    _KEPT[i[0]] = os.urandom(1024)  # the leak


def churn():
    buf = bytearray(256 * 1024)
    return len(buf)


class Node:
    def __init__(self):
        self.me = self
        self.payload = bytearray(4096)


def cyclic_garbage():
    Node()  # a reference cycle the collector frees


@functools.lru_cache(maxsize=300)
def _cached(key):
    return os.urandom(2048)


_rnd = random.Random(3)


def bounded_cache():
    _cached(_rnd.randrange(10_000))  # fills up to 300 entries, its rate falling, then stays


_step = []


def one_off_step():
    if not _step:
        _step.append(bytearray(8 * 1024 * 1024))  # a table loaded on the first call only


def test_a_leak_fails_with_bytes_per_call_site_and_holder():
    line = next(i for i, l in enumerate(open(__file__), 1) if "# the leak" in l)
    with pytest.raises(LeakCheckFailed) as info:
        run_check(leaky, calls=500)
    r = info.value.result
    assert 1000 < r.bytes_per_call < 1400, r.bytes_per_call  # 1 KiB of bytes plus its dict entry
    assert (os.path.basename(r.sites[0]["file"]), r.sites[0]["line"]) == ("test_pytest_plugin.py", line)
    assert any(p["text"].endswith("['_KEPT']") for p in r.retention_paths), r.retention_paths
    msg = str(info.value)
    assert f"test_pytest_plugin.py:{line}" in msg and "bytes per call" in msg and "_KEPT" in msg


@pytest.mark.parametrize("fn", [churn, cyclic_garbage, bounded_cache, one_off_step])
def test_benign_callables_pass(fn):
    _cached.cache_clear()
    _step.clear()
    r = run_check(fn, calls=1000, warmup=10)
    assert r.bytes_per_call <= 256 or r.saturating, r


def test_the_fixture_through_pytest_and_its_entry_point(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent("""
        import os
        HELD = []

        def keeps(n):
            HELD.append(os.urandom(n))

        def test_leaks(leak_check):
            leak_check(keeps, args=(2048,), calls=400)

        def test_clean(leak_check):
            r = leak_check(len, args=("abc",))
            assert r.calls >= 1000
    """))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "1 failed, 1 passed" in out, out
    assert "test_user.py:6" in out and "bytes per call" in out and "HELD" in out, out
