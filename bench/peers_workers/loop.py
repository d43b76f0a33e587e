"""A worker that runs its tasks back to back in one process: ``loop.py KIND LEAK TOOL COUNT CAP_S OUT``.

Times each task with ``perf_counter_ns`` (the same for every tool, into an array allocated before the
loop, the last 2**20 tasks) and writes ``OUT/result.json``: tasks done, wall seconds of the timed loop,
per-task latency percentiles. Stops early after CAP_S seconds.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tasks  # noqa: E402
import tools  # noqa: E402


def main() -> None:
    kind, leak, tool, count, cap, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]), \
        float(sys.argv[5]), sys.argv[6]
    size = min(count, 1 << 20)
    lat = array.array("q", bytes(8 * size))  # before the tool starts: the harness itself does not grow
    wrap = tools.setup(tool, out) or (lambda name: contextlib.nullcontext())
    clock = time.perf_counter_ns
    warm = clock() + 300_000_000
    for k in range(200):  # warm-up: first calls, caches (200 tasks, or 0.3 s under a slow tool)
        name, fn, args = tasks.plan(kind, k, False)
        with wrap(name):
            fn(*args)
        if clock() > warm:
            break
    t0 = clock()
    deadline = t0 + int(cap * 1e9)
    k = 0
    while k < count:
        name, fn, args = tasks.plan(kind, k, leak)
        s = clock()
        with wrap(name):
            fn(*args)
        e = clock()
        lat[k % size] = e - s
        k += 1
        if e > deadline:
            break
    wall = (clock() - t0) / 1e9
    tools.finish(tool, out)
    lat = sorted(lat[: min(k, size)])
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump({"tasks": k, "wall_s": wall, "capped": k < count, "p50_us": lat[len(lat) // 2] / 1e3,
                   "p99_us": lat[int(len(lat) * 0.99)] / 1e3}, f)


if __name__ == "__main__":
    main()
