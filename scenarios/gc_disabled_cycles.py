"""Reference cycles under gc.disable(): every 'graph' task leaves a cycle nobody collects."""
import gc

from _worker import run

gc.disable()


class Node:
    def __init__(self, data):
        self.data = data
        self.peer = None


def graph(i, rnd):
    a = Node(bytearray(12000))  # leak-site
    b = Node(a)
    a.peer = b


def sumup(i, rnd):
    return sum(range(500))


def tag(i, rnd):
    return "tag-%d" % i


run({"sumup": sumup, "graph": graph, "tag": tag})
