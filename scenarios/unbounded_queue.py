"""An in-process queue the consumer drains slower than 'publish' fills it."""
import queue

from _worker import run

OUTBOX = queue.Queue()


def publish(i, rnd):
    OUTBOX.put({"id": i, "body": "m" * 12000})  # leak-site


def drain(i, rnd):
    try:
        OUTBOX.get_nowait()  # takes one message per drain call: less than published
    except queue.Empty:
        pass


def audit(i, rnd):
    return OUTBOX.qsize()


run({"publish": publish, "drain": drain, "audit": audit}, weights=[3, 1, 1])
