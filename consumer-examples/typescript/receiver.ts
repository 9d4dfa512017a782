// An order-webhook receiver in TypeScript (Node): verifies with the official Standard
// Webhooks library, deduplicates by webhook-id, acknowledges fast.
//
//   node dist/receiver.js --listen 127.0.0.1:8000 --secret whsec_... --out events.jsonl
//
// Each first-seen event is appended to --out as one JSON line
// {"webhook_id", "type", "order_id", "body"} before the 204 answer ("store, then
// acknowledge"); a real receiver would queue it here and process it after answering.
// A repeat of a webhook-id is answered 204 and not stored again. The ownership
// challenge (type webhook.endpoint_verification, sent when the subscription's URL is
// set) is answered 200 with {"challenge": <data.challenge>}.

import { appendFileSync } from "node:fs";
import { createServer, IncomingMessage, ServerResponse } from "node:http";
import { Webhook, WebhookVerificationError } from "standardwebhooks";

const MAX_BODY = 1024 * 1024;

function flag(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

const listen = flag("listen") ?? "127.0.0.1:8000";
const secret = flag("secret") ?? "";
const out = flag("out") ?? "";
if (!secret || !out) {
  console.error("usage: receiver --listen HOST:PORT --secret whsec_... --out FILE");
  process.exit(2);
}
const webhook = new Webhook(secret);
const seen = new Set<string>();

function answer(res: ServerResponse, status: number, text = ""): void {
  res.writeHead(status, { "content-length": Buffer.byteLength(text) });
  res.end(text);
}

function receive(req: IncomingMessage, res: ServerResponse): void {
  if (req.method !== "POST") return answer(res, 405);
  const chunks: Buffer[] = [];
  let size = 0;
  let refused = false;
  req.on("data", (chunk: Buffer) => {
    size += chunk.length;
    if (size > MAX_BODY && !refused) {
      refused = true;
      answer(res, 413, "too large");
      req.destroy();
    } else if (!refused) {
      chunks.push(chunk);
    }
  });
  req.on("end", () => {
    if (refused) return;
    const body = Buffer.concat(chunks).toString("utf8");
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (typeof v === "string") headers[k] = v;
    }
    let event: any;
    try {
      // Verify the raw body, before parsing: signature and timestamp tolerance.
      event = webhook.verify(body, headers);
    } catch (error) {
      const why = error instanceof WebhookVerificationError ? error.message : String(error);
      return answer(res, 401, `signature refused: ${why}`);
    }
    if (event?.type === "webhook.endpoint_verification") {
      // Proof that this endpoint wants the events: echo the challenge (signed like
      // every event, so only the holder of the secret can answer it).
      const text = JSON.stringify({ challenge: event?.data?.challenge ?? "" });
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
      return void res.end(text);
    }
    const id = headers["webhook-id"];
    if (seen.has(id)) return answer(res, 204); // a retry or replay we already have
    seen.add(id);
    const record = { webhook_id: id, type: event?.type, order_id: event?.data?.order_id, body: event };
    appendFileSync(out, JSON.stringify(record) + "\n");
    answer(res, 204);
  });
}

const [host, port] = [listen.slice(0, listen.lastIndexOf(":")), Number(listen.slice(listen.lastIndexOf(":") + 1))];
const server = createServer(receive);
server.keepAliveTimeout = 65_000; // the dispatcher keeps connections open for 60 s
server.listen(port, host, () => {
  const address = server.address();
  const bound = typeof address === "object" && address ? address.port : port;
  console.log(`listening on http://${host}:${bound}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
