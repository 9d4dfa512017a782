/**
 * A client of the partner's live event stream (Server-Sent Events), with the standard
 * `eventsource` package (the browser's EventSource, for Node).
 *
 *   node dist/stream_client.js --api https://api.example --token $TOKEN --partner shop-a \
 *       [--after CURSOR] [--from earliest] [--count N]
 *
 * Prints each event as one JSON line {"id", "event", "data"} (the `ready` event first,
 * with the cursor the stream starts at). When the connection drops, EventSource connects
 * again by itself with Last-Event-ID: the stream goes on after the last event received,
 * nothing skipped and nothing twice. A real client stores the last id with what it did
 * with the event and passes it as --after after a restart. Stops after --count events.
 */
import { EventSource } from "eventsource";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : undefined;
}

const api = arg("api");
const token = arg("token");
const partner = arg("partner");
if (!api || !token || !partner) {
  console.error("usage: stream_client.js --api URL --token TOKEN --partner ID [--after CURSOR] [--from earliest] [--count N]");
  process.exit(2);
}
const count = Number(arg("count") ?? "0");
const base = `${api}/v1/partners/${encodeURIComponent(partner)}/stream`;
const auth = { Authorization: `Bearer ${token}` };
let lastId = arg("after");
let received = 0;
let backoff = 200;

function url(): URL {
  const u = new URL(base);
  u.searchParams.set("from", arg("from") ?? "latest");
  if (lastId) u.searchParams.set("after", lastId);
  return u;
}

function connect(): void {
  const source = new EventSource(url(), {
    // The partner token on every connection; EventSource adds Last-Event-ID when it
    // reconnects by itself (a dropped connection, a server that ended the stream).
    fetch: (input, init) => fetch(input, { ...init, headers: { ...init?.headers, ...auth } }),
  });
  const print = (event: MessageEvent): void => {
    lastId = event.lastEventId || lastId;
    backoff = 200;
    console.log(JSON.stringify({ id: event.lastEventId, event: event.type, data: event.data }));
    if (event.type === "ready") return;
    received += 1;
    if (count > 0 && received >= count) {
      source.close();
      process.exit(0);
    }
  };
  for (const type of ["ready", "order.created", "order.status_changed", "order.cancelled"]) {
    source.addEventListener(type, print);
  }
  source.onerror = async (error) => {
    if (source.readyState !== EventSource.CLOSED) {
      console.error(`stream: ${error.message ?? "connection lost"}; EventSource reconnects`);
      return;
    }
    // An answer that is not a stream ends EventSource: decide here.
    const status = error.code ?? 0;
    if (status === 410) {
      // Retention passed: what was missed is gone; go on from the oldest kept. (Only
      // from a 410's answer: anything else keeps the last id and tries again.)
      try {
        const answer = await fetch(url(), { headers: auth });
        const gone = answer.status === 410 ? await answer.json() : undefined;
        if (typeof gone?.oldest_cursor === "string") {
          console.error(`stream: events before ${gone.oldest_cursor} are no longer kept`);
          lastId = gone.oldest_cursor;
        }
      } catch (e) {
        console.error(`stream: ${e}`);
      }
    } else if ([400, 401, 403, 404].includes(status)) {
      console.error(`stream: ${status}: ${error.message}`);
      process.exit(1);
    }
    console.error(`stream: closed (${status || "network"}); reconnecting after ${lastId}`);
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 5000);
  };
}

connect();
