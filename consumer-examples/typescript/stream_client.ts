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
const url = new URL(`${api}/v1/partners/${encodeURIComponent(partner)}/stream`);
url.searchParams.set("from", arg("from") ?? "latest");
const after = arg("after");
if (after) url.searchParams.set("after", after);

const source = new EventSource(url, {
  // The partner token on every (re)connection; EventSource adds Last-Event-ID.
  fetch: (input, init) =>
    fetch(input, { ...init, headers: { ...init?.headers, Authorization: `Bearer ${token}` } }),
});

let received = 0;
function print(event: MessageEvent): void {
  console.log(JSON.stringify({ id: event.lastEventId, event: event.type, data: event.data }));
  if (event.type === "ready") return;
  received += 1;
  if (count > 0 && received >= count) {
    source.close();
    process.exit(0);
  }
}
for (const type of ["ready", "order.created", "order.status_changed", "order.cancelled"]) {
  source.addEventListener(type, print);
}
source.onerror = (error) => {
  // 4xx other than 429 close the source; anything else is retried by EventSource.
  console.error(`stream: ${error.message ?? "connection lost"}; reconnecting`);
};
