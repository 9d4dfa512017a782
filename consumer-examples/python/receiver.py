"""An order-webhook receiver in Python: verifies with the official Standard Webhooks
library, deduplicates by webhook-id, acknowledges fast.

    python receiver.py --listen 127.0.0.1:8000 --secret whsec_... --out events.jsonl

Each first-seen event is appended to --out as one JSON line
{"webhook_id", "type", "order_id", "body"} before the 204 answer: "store, then
acknowledge". A real receiver would put it on its own queue or table here and process
it after answering. A repeat of a webhook-id is answered 204 and not stored again. The
ownership challenge (type webhook.endpoint_verification, sent when the subscription's URL
is set) is answered 200 with {"challenge": <data.challenge>}.
"""

import argparse
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

MAX_BODY = 1024 * 1024


class State:
    def __init__(self, secret: str, out_path: str):
        self.webhook = Webhook(secret)
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.out = open(out_path, "a", encoding="utf-8")


def handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the dispatcher reuses connections

        def answer(self, status: int, text: str = "", content_type: str = "") -> None:
            body = text.encode()
            self.send_response(status)
            if content_type:
                self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (the http.server naming)
            try:
                length = int(self.headers.get("content-length") or 0)
            except ValueError:
                length = -1
            if length < 0:
                # rfile.read(-1) would read until the client closes: refuse instead.
                self.answer(400, "bad content-length")
                self.close_connection = True
                return
            if length > MAX_BODY:
                self.answer(413, "too large")
                return
            body = self.rfile.read(length)
            try:
                # Verify the raw bytes, before parsing: signature and timestamp tolerance.
                event = state.webhook.verify(body, dict(self.headers.items()))
            except WebhookVerificationError as error:
                self.answer(401, f"signature refused: {error}")
                return
            if event.get("type") == "webhook.endpoint_verification":
                # Proof that this endpoint wants the events: echo the challenge (signed
                # like every event, so only the holder of the secret can answer it).
                challenge = event.get("data", {}).get("challenge", "")
                self.answer(200, json.dumps({"challenge": challenge}), "application/json")
                return
            webhook_id = self.headers["webhook-id"]
            with state.lock:
                if webhook_id in state.seen:
                    self.answer(204)  # a retry or replay we already have
                    return
                state.seen.add(webhook_id)
                record = {
                    "webhook_id": webhook_id,
                    "type": event.get("type"),
                    "order_id": event.get("data", {}).get("order_id"),
                    "body": event,
                }
                state.out.write(json.dumps(record) + "\n")
                state.out.flush()
            self.answer(204)

        def log_message(self, format: str, *args) -> None:  # quiet
            pass

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8000")
    parser.add_argument("--secret", required=True, help="whsec_... from your subscription")
    parser.add_argument("--out", required=True, help="JSON lines file of accepted events")
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), handler(State(args.secret, args.out)))
    print(f"listening on http://{host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
