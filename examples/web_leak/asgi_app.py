"""A Starlette app with one leaking route and two healthy ones, for ``otel-leak run`` under uvicorn.

    pip install otel-leak uvicorn starlette opentelemetry-instrumentation-starlette
    cd examples/web_leak
    otel-leak run --report web.json --html web.html -- uvicorn asgi_app:app --port 8000 --workers 2
    python load.py http://127.0.0.1:8000 60       # in another shell; then Ctrl-C uvicorn

``GET /users/{user_id}`` keeps 64 KiB per request in a module-level dict that is never evicted (the leak);
``GET /images/resize`` allocates 256 KiB and frees it; ``GET /hello/{name}`` does a little string work.
Each handler awaits in the middle, so the requests one process serves interleave. Each answers with the
pid of the worker process that served it. Every request is a SERVER span of
opentelemetry-instrumentation-starlette, named after the route template (``GET /users/{user_id}``): that
is the task identity otel-leak reports.
"""

import asyncio
import os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))
PAUSE_S = 0.002  # an await in the middle of each request (a database call, say)

_USERS: dict[str, bytes] = {}  # the leak: one entry per request, never evicted


async def remember_user(request):
    user_id = request.path_params["user_id"]
    await asyncio.sleep(PAUSE_S)
    _USERS[user_id] = os.urandom(LEAK_BYTES)
    await asyncio.sleep(PAUSE_S)
    return JSONResponse({"pid": os.getpid()})


async def resize_image(request):
    buf = bytearray(256 * 1024)  # transient, alive across the await
    buf[0] = 1
    await asyncio.sleep(PAUSE_S)
    del buf
    return JSONResponse({"pid": os.getpid()})


async def hello(request):
    body = ("hello " + request.path_params["name"]) * 50
    await asyncio.sleep(PAUSE_S)
    return JSONResponse({"pid": os.getpid(), "length": len(body.upper())})


app = Starlette(routes=[
    Route("/users/{user_id}", remember_user),
    Route("/images/resize", resize_image),
    Route("/hello/{name}", hello),
])
