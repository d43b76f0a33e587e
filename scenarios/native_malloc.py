"""Native leak: a ctypes buffer malloc'ed (and touched) on every 'decode' call, never freed."""
import ctypes
import ctypes.util

from _worker import run

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 24 * 1024


def decode(i, rnd):
    p = libc.malloc(SIZE)  # leak-site
    ctypes.memset(p, 1, SIZE)


def encode(i, rnd):
    p = libc.malloc(SIZE)
    ctypes.memset(p, 2, SIZE)
    libc.free(p)


def stat(i, rnd):
    return i * 2


run({"encode": encode, "decode": decode, "stat": stat})
