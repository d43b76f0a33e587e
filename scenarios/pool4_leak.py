"""4-thread pool, three interleaved task types; 'thumbnail' appends its result to a module list."""
import threading

from _worker import run

RESULTS = []
_lock = threading.Lock()


def thumbnail(i, rnd):
    data = bytes(14000) + i.to_bytes(4, "little")  # leak-site
    with _lock:
        RESULTS.append(data)


def metadata(i, rnd):
    return {"w": 10, "h": 20, "i": i}


def checksum(i, rnd):
    return hash(bytes(5000))


run({"metadata": metadata, "thumbnail": thumbnail, "checksum": checksum}, threads=4, rate=48)
