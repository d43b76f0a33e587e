"""Benign: a one-off step: the first 'report' after ~12 s imports heavy modules and loads a table once."""
import time

from _worker import run

T0 = time.monotonic()
TABLE = None


def report(i, rnd):
    global TABLE
    if TABLE is None and time.monotonic() - T0 > 12:
        import decimal, email.mime.multipart, http.client, xml.dom.minidom, json, csv, sqlite3, difflib  # noqa
        TABLE = {k: "row-%d" % k * 3 for k in range(60000)}
    return 0 if TABLE is None else len(TABLE)


def fetch(i, rnd):
    return [i] * 20


def parse(i, rnd):
    return str(i).split("0")


run({"fetch": fetch, "report": report, "parse": parse})
