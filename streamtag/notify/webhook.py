"""Webhooks: POST each event start and end as JSON to a URL (stdlib urllib; one transport and thread per URL, so a
slow endpoint only delays its own messages).

A try fails on a connection error, a timeout, a 5xx, 408 or 429; it is retried with doubling pauses (0.5, 1, 2 s)
and after ATTEMPTS tries the notification counts as failed. Any other 4xx means the request itself is wrong: no
retry. The body is `notifier.message()` (`type`, `node` and the event's fields).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from streamtag import __version__
from streamtag.errors import StreamtagError
from streamtag.notify.base import DEFAULT_CAPACITY, Transport, backoff
from streamtag.notify.notifier import Notification

TIMEOUT = 5.0  # seconds per try
ATTEMPTS = 4
RETRY_STATUS = (408, 429)


def check_url(url: str) -> str:
    """An http(s) URL with a host, else a one-line error (exit 2)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise StreamtagError(f"--webhook {url!r}: not a valid URL; give http://host[:port]/path", 2) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StreamtagError(f"--webhook {url!r}: not an http:// or https:// URL with a host; "
                             "give http://host[:port]/path", 2)
    return url


class WebhookTransport(Transport):
    def __init__(self, url: str, label: str = "webhook", capacity: int = DEFAULT_CAPACITY, timeout: float = TIMEOUT,
                 attempts: int = ATTEMPTS):
        super().__init__(label, capacity)
        self.url = check_url(url)
        self.timeout = timeout
        self.attempts = attempts

    def deliver(self, item: Any) -> bool:
        if not isinstance(item, Notification):
            return True
        body = json.dumps(item.payload).encode("utf-8")
        for attempt in range(1, self.attempts + 1):
            if attempt > 1 and not self.pause(backoff(attempt - 1)):
                return False
            request = urllib.request.Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "User-Agent": f"streamtag/{__version__}"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read(65536)
                return True
            except urllib.error.HTTPError as e:
                self.last_error = f"HTTP {e.code} {e.reason}"
                if 400 <= e.code < 500 and e.code not in RETRY_STATUS:
                    return False
            except (OSError, ValueError) as e:  # URLError, timeouts, resets, a malformed answer
                self.last_error = str(getattr(e, "reason", None) or e.__class__.__name__)
        return False
