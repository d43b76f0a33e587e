"""Plain SDK CONSUMER spans; 'index' keeps a small dict per call (Python small-object heap, no malloc)."""
from _worker import run

INDEX = {}


def index(i, rnd):
    INDEX[i] = {("f%d" % k): k * i for k in range(60)}  # leak-site


def search(i, rnd):
    return [k for k in range(100) if k % 7 == 0]


def suggest(i, rnd):
    return "s" * 20


def ping(i, rnd):
    return 1


run({"search": search, "index": index, "suggest": suggest, "ping": ping}, spans="sdk", rate=50)
