"""Delivering notifications: never in the way of an operation.

The store tells the notifier about each event once it is durable; the
notifier queues what a target asked for (a bounded queue per target: when it
is full the notification is dropped, and that is recorded) and posts one at a
time per target, in order, with retries and backoff on network errors, 5xx,
408 and 429. Every attempt's outcome is an event (``notification``:
delivered, retrying, failed, dropped), recorded without waiting for it. A
failing receiver costs an operation nothing: nothing here is awaited by it.
"""
from __future__ import annotations

import collections
import random
import secrets
import time

from twisted.application.service import Service
from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger

from hoopy.audit.events import Event
from hoopy.notify import messages

log = Logger()

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Notifier(Service):
    max_queue = 1000  # per target
    backoff = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0)  # seconds before each retry (7 retries)
    timeout = 10.0  # seconds for one post
    audit_failed_every = 60.0  # at most one audit.failed per target this often

    def __init__(self, gateway, targets):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.targets = tuple(targets)
        self.queues = {t.index: collections.deque() for t in self.targets}
        self.busy: set[int] = set()
        self.timers: dict[int, object] = {}
        self._audit_failed_at = -1e9
        self._client = None

    # --- what the gateway tells us --------------------------------------------------

    def observe(self, stored) -> None:
        """A durable event (called by the store on the reactor thread)."""
        if not self.running:
            return
        found = messages.notification_for(stored)
        if found is not None:
            self._enqueue(*found)

    def store_failed(self, error) -> None:
        now = time.monotonic()
        if not self.running or now - self._audit_failed_at < self.audit_failed_every:
            return
        self._audit_failed_at = now
        self._enqueue("audit.failed", messages.audit_failed(self.gateway.name_, str(error), time.time_ns() // 1000))

    # --- queue -----------------------------------------------------------------------

    def _enqueue(self, name: str, payload: dict) -> None:
        for t in self.targets:
            if name not in t.events:
                continue
            q = self.queues[t.index]
            item = {"id": "dl-" + secrets.token_hex(8), "event": name, "payload": payload, "attempt": 0}
            if len(q) >= self.max_queue:
                self._record(t, item, "dropped", error=f"the queue is full ({self.max_queue} waiting)")
                continue
            q.append(item)
            self._pump(t)

    def _pump(self, t) -> None:
        if t.index in self.busy or t.index in self.timers or not self.queues[t.index] or not self.running:
            return
        self.busy.add(t.index)
        item = self.queues[t.index][0]
        ensureDeferred(self._attempt(t, item)).addErrback(
            lambda f: log.failure("notification to {name}", f, name=t.name)).addBoth(
            lambda _: self._attempted(t))

    def _attempted(self, t) -> None:
        self.busy.discard(t.index)
        self._pump(t)

    async def _attempt(self, t, item) -> None:
        item["attempt"] += 1
        status, error = await self._post(t, item)
        q = self.queues[t.index]
        if not q or q[0] is not item:
            return  # dropped meanwhile (the gateway stops)
        if status is not None and 200 <= status < 300:
            q.popleft()
            self._record(t, item, "delivered", status=status)
            return
        retry = (status is None or status in RETRY_STATUS) and item["attempt"] <= len(self.backoff)
        if not retry:
            q.popleft()
            self._record(t, item, "failed", status=status, error=error)
            return
        delay = self.backoff[item["attempt"] - 1] * (1 + random.random() * 0.1)
        self._record(t, item, "retrying", status=status, error=error, retry_in_s=round(delay, 3))

        def again():
            self.timers.pop(t.index, None)
            self._pump(t)

        self.timers[t.index] = self.reactor.callLater(delay, again)

    async def _post(self, t, item) -> tuple[int | None, str | None]:
        payload = dict(item["payload"], delivery=item["id"])
        if t.format == "slack":
            body = messages.slack_body(payload, self.gateway.config.gateway.console_url)
            headers = {}
        else:
            link = messages.approval_link(self.gateway.config.gateway.console_url, payload.get("approval"))
            if link:
                payload["console"] = link
            body = messages.json_body(payload)
            headers = {b"Hoopy-Signature": [messages.signature(t.secret, int(time.time()), body).encode()],
                       b"Hoopy-Event": [item["event"].encode()], b"Hoopy-Delivery": [item["id"].encode()]}
        headers[b"Content-Type"] = [b"application/json"]
        headers[b"User-Agent"] = [b"hoopy-notify"]
        try:
            # No redirects: a signed body goes only where the configuration says.
            resp = await self._http().post(t.url, data=body, headers=headers, timeout=self.timeout,
                                           allow_redirects=False)
            await resp.content()  # read (and so release) the connection
            return resp.code, None if 200 <= resp.code < 300 else f"HTTP {resp.code}"
        except Exception as e:
            return None, (str(e) or type(e).__name__)[:300]

    def _http(self):
        if self._client is None:
            import treq
            from twisted.web.client import Agent, HTTPConnectionPool

            pool = HTTPConnectionPool(self.reactor, persistent=True)
            pool.maxPersistentPerHost = 2
            self._client = treq.client.HTTPClient(Agent(self.reactor, pool=pool))
            self._pool = pool
        return self._client

    def _record(self, t, item, outcome, **data) -> None:
        data = {k: v for k, v in data.items() if v is not None}
        payload = item["payload"]
        ev = Event(kind="notification", outcome=outcome, identity=payload.get("identity"),
                   connection=payload.get("connection"), protocol=payload.get("protocol"),
                   session=payload.get("session"),
                   data={"target": t.name, "host": t.host, "format": t.format, "event": item["event"],
                         "delivery": item["id"], "attempt": item["attempt"],
                         **({"approval": payload["approval"]} if payload.get("approval") else {}), **data})
        log_fn = log.info if outcome == "delivered" else log.warn
        log_fn("notification {event} to {target}: {outcome}", event=item["event"], target=t.name, outcome=outcome)
        self.gateway.store.append_trailing(ev)  # (when the store cannot write, it logs that)

    # --- lifecycle --------------------------------------------------------------------

    def stopService(self):
        super().stopService()
        for timer in self.timers.values():
            if timer.active():
                timer.cancel()
        self.timers.clear()
        for t in self.targets:
            q = self.queues[t.index]
            if q:
                log.warn("{n} notification(s) to {target} not delivered: the gateway stops", n=len(q), target=t.name)
                for item in q:
                    self._record(t, item, "dropped", error="the gateway stopped before it was delivered")
                q.clear()
        pool = getattr(self, "_pool", None)
        return pool.closeCachedConnections() if pool is not None else None
