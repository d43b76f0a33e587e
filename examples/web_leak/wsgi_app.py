"""A Flask app with one leaking route and two healthy ones, for ``otel-leak run`` under gunicorn.

    pip install otel-leak gunicorn flask opentelemetry-instrumentation-flask
    cd examples/web_leak
    otel-leak run --report web.json --html web.html -- gunicorn -w 2 -k sync -b 127.0.0.1:8000 wsgi_app:app
    python load.py http://127.0.0.1:8000 60       # in another shell; then Ctrl-C gunicorn

``GET /users/<user_id>`` keeps 64 KiB per request in a module-level dict that is never evicted (the leak);
``GET /images/resize`` allocates 256 KiB and frees it; ``GET /hello/<name>`` does a little string work.
Each answers with the pid of the worker process that served it. Every request is a SERVER span of
opentelemetry-instrumentation-flask, named after the route template (``GET /users/<user_id>``): that is
the task identity otel-leak reports.
"""

import os

from flask import Flask

LEAK_BYTES = int(os.environ.get("LEAK_BYTES", str(64 * 1024)))

app = Flask(__name__)

_USERS: dict[str, bytes] = {}  # the leak: one entry per request, never evicted


@app.get("/users/<user_id>")
def remember_user(user_id: str):
    _USERS[user_id] = os.urandom(LEAK_BYTES)
    return {"pid": os.getpid()}


@app.get("/images/resize")
def resize_image():
    buf = bytearray(256 * 1024)  # transient
    buf[0] = 1
    return {"pid": os.getpid()}


@app.get("/hello/<name>")
def hello(name: str):
    body = ("hello " + name) * 50
    return {"pid": os.getpid(), "length": len(body.upper())}
