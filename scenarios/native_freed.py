"""Benign native memory: ctypes buffers malloc'ed and freed in every task."""
import ctypes
import ctypes.util

from _worker import run

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]


def decode(i, rnd):
    size = rnd.randint(8, 256) * 1024
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)
    libc.free(p)


def encode(i, rnd):
    return bytes(3000)


def stat(i, rnd):
    return i * 2


run({"encode": encode, "decode": decode, "stat": stat})
