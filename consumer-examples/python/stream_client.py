"""A client of the partner's live event stream (Server-Sent Events), with httpx-sse.

    python stream_client.py --api https://api.example --token $TOKEN --partner shop-a \
        [--api https://api2.example] [--after CURSOR] [--from earliest] [--count N]

Prints each event as one JSON line {"id", "event", "data"} (the `ready` event first,
with the cursor the stream starts at) and keeps the last event's id. When the
connection drops (the API instance went away, a deploy, a slow read), it connects
again, to the next --api in turn, with Last-Event-ID: the stream goes on after the last
event printed, nothing skipped and nothing twice. A real client would store that id
with what it did with the event (same transaction), and start from it after a restart
(--after). Stops after --count events (not counting `ready`), or never.
"""

import argparse
import itertools
import json
import sys
import time

import httpx
from httpx_sse import connect_sse


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", action="append", required=True, help="base URL; several to fail over")
    parser.add_argument("--token", required=True)
    parser.add_argument("--partner", required=True)
    parser.add_argument("--after", help="a cursor (an event id) to resume after")
    parser.add_argument("--from", dest="start", choices=["latest", "earliest"], default="latest")
    parser.add_argument("--types", help="comma-separated event types")
    parser.add_argument("--filter", help="a CEL filter over the event")
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args()

    last_id = args.after
    received = 0
    backoff = 0.2
    for api in itertools.cycle(args.api):
        params = {"from": args.start}
        if args.types:
            params["types"] = args.types
        if args.filter:
            params["filter"] = args.filter
        headers = {"Authorization": f"Bearer {args.token}", "Accept": "text/event-stream"}
        if last_id:
            headers["Last-Event-ID"] = last_id
        try:
            # No read timeout: heartbeats keep an idle stream open.
            with httpx.Client(timeout=httpx.Timeout(10.0, read=None)) as client:
                with connect_sse(client, "GET", f"{api}/v1/partners/{args.partner}/stream",
                                 params=params, headers=headers) as source:
                    if source.response.status_code == 410:
                        # Retention passed: what was missed is gone; start from the oldest.
                        body = json.loads(source.response.read())
                        print(json.dumps({"gone": body}), file=sys.stderr, flush=True)
                        last_id = body["oldest_cursor"]
                        continue
                    if source.response.status_code != 200:
                        body = source.response.read().decode(errors="replace")
                        print(f"{api}: {source.response.status_code} {body}", file=sys.stderr, flush=True)
                        if source.response.status_code in (400, 401, 403, 404):
                            return 1
                        raise httpx.TransportError("retry")
                    backoff = 0.2
                    for sse in source.iter_sse():
                        last_id = sse.id or last_id
                        print(json.dumps({"id": sse.id, "event": sse.event, "data": sse.data}), flush=True)
                        if sse.event != "ready":
                            received += 1
                            if args.count and received >= args.count:
                                return 0
        except (httpx.TransportError, httpx.RemoteProtocolError) as e:
            print(f"{api}: {e!r}; reconnecting after {last_id}", file=sys.stderr, flush=True)
        time.sleep(backoff)
        backoff = min(backoff * 2, 5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
