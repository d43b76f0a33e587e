"""A stand-in for the team's webhook receiver: logs every Alertmanager notification it gets.

deploy/alertmanager/alertmanager.yml sends webhooks to http://alert-webhook.invalid/...; in the compose stack
that name is a network alias of this container, so notifications stay on the machine and show up in
`docker compose logs alert-webhook`. In production, replace the .invalid base URL (see alertmanager.yml).
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
            alerts = doc.get("alerts", [])
            summary = "; ".join(
                f"{a.get('status')} {a.get('labels', {}).get('alertname')} "
                f"{a.get('labels', {}).get('service_name', '')} {a.get('labels', {}).get('service_instance_id', '')} "
                f"{a.get('annotations', {}).get('runbook_url', '')}"
                for a in alerts
            )
            print(f"{self.path} receiver={doc.get('receiver')} status={doc.get('status')}: {summary}", flush=True)
        except ValueError:
            print(f"{self.path}: {body[:500]!r}", flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 80
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
