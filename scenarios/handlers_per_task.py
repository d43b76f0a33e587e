"""A logging handler added on every 'export' call and never removed."""
import io
import logging

from _worker import run

log = logging.getLogger("exporter")
log.setLevel(logging.INFO)
log.propagate = False


def export(i, rnd):
    buf = io.StringIO("header;" * 1400)  # leak-site
    log.addHandler(logging.StreamHandler(buf))


def transform(i, rnd):
    return [str(x) for x in range(100)]


def validate(i, rnd):
    return all(x >= 0 for x in range(300))


run({"transform": transform, "export": export, "validate": validate})
