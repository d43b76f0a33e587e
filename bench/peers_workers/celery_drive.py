"""One Celery measurement: ``celery_drive.py CONFIG_JSON``, run with the peers environment's Python.

Empties the Redis database, queues COUNT tasks of the mix, starts the prefork worker under the tool's
command prefix, waits until the queue and the unacknowledged set are empty (or CAP_S passed since the
first task was taken), sends the worker SIGTERM (a warm shutdown: running tasks finish, children run their
shutdown signal; the process group is killed after SHUTDOWN_S) and writes OUT/result.json from the
children's task times and the worker tree's peak resident memory.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SHUTDOWN_S = 60 if os.environ.get("PEERS_ANSWER") else 20  # what the children write at exit is read
sys.path.insert(0, HERE)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    os.environ.update(PEERS_REDIS_URL=cfg["redis"], PEERS_LEAK="1" if cfg["leak"] else "0",
                      PEERS_TOOL=cfg["tool"], PEERS_OUT=cfg["out"])
    import redis
    import tasks
    from celery_app import app

    r = redis.Redis.from_url(cfg["redis"])
    r.flushdb()
    phases = {"begin": time.monotonic()}
    with app.producer_or_acquire() as producer:
        for k in range(cfg["count"]):
            name = tasks.plan("celery", k, False)[0]
            app.send_task(name, args=(k,) if name == "remember_session" else (), producer=producer)
    cmd = cfg["prefix"] + ["-m", "celery", "-A", "celery_app", "worker", "--pool=prefork", "--concurrency=2",
                           "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=WARNING"]
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(os.path.join(cfg["out"], "worker.log"), "w") as log:
        p = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        # the cap counts from the first task taken, not from the worker's start-up
        t0 = phases["published"] = time.monotonic()
        while r.llen("celery") == cfg["count"] and time.monotonic() - t0 < 120 and p.poll() is None:
            time.sleep(0.02)
        t0 = phases["first_taken"] = time.monotonic()
        while (r.llen("celery") or r.hlen("unacked")) and time.monotonic() - t0 < cfg["cap"] and p.poll() is None:
            time.sleep(0.05)
        capped = bool(r.llen("celery") or r.hlen("unacked"))
        r.delete("celery")  # a capped run: nothing more to start
        phases["drained"] = time.monotonic()
        p.send_signal(signal.SIGTERM)
        killed = False
        while True:  # a warm shutdown gets SHUTDOWN_S, then the worker's process group is killed
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - phases["drained"] > SHUTDOWN_S and not killed:
                os.killpg(p.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
        phases["exited"] = time.monotonic()
    times = []
    for f in glob.glob(os.path.join(cfg["out"], "celery.*.times")):
        child = [tuple(map(int, ln.split())) for ln in open(f) if ln.count(" ") == 1]
        times += child[len(child) // 50:]  # each child's first 2 % are its warm-up
    lat = sorted(e - s for s, e in times)
    span = (max(e for _, e in times) - min(s for s, _ in times)) / 1e9 if times else cfg["cap"]
    with open(os.path.join(cfg["out"], "result.json"), "w") as f:  # no task done within the cap: no latency
        json.dump({"tasks": len(times), "wall_s": span or cfg["cap"], "capped": capped, "exit_status": status,
                   "killed": killed, "main_pid": p.pid,
                   "phases_s": {k: round(phases[k] - phases["begin"], 2) for k in phases},
                   "peak_rss_kib": usage.ru_maxrss, "p50_us": lat[len(lat) // 2] / 1e3 if lat else None,
                   "p99_us": lat[int(len(lat) * 0.99)] / 1e3 if lat else None}, f)


if __name__ == "__main__":
    main()
