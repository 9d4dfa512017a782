"""Schemathesis hooks for the partner API run (tests/tests/api_fuzz.rs).

This machine has no DNS for the Internet, so a generated webhook URL with a host name
never resolves and every create would stop at "does not resolve": the stateful phase
would never get a subscription to follow its links with. URLs with a host name are
pointed at 127.0.0.1 (the run's allowlist); IP literals are kept, so the SSRF guard
still sees every generated address.
"""

from urllib.parse import urlsplit

import schemathesis


def _named_host(url):
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return host != "" and not host.replace(".", "").isdigit() and ":" not in host


@schemathesis.hook
def map_body(ctx, body):
    if (
        ctx.operation.method.upper() == "POST"
        and ctx.operation.path == "/v1/subscriptions"
        and isinstance(body, dict)
        and isinstance(body.get("url"), str)
        and _named_host(body["url"])
    ):
        body["url"] = "http://127.0.0.1:9/hook"
    return body
