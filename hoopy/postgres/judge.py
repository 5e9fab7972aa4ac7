"""The judgement commands of a client's connection, run for ``ClientProtocol``.

``Decide`` asks the session for a statement's verdict (or records a refusal that
needs no rule), ``Check`` asks whether the policy could allow a Parse's statement,
``Classify`` classifies a long statement off the reactor thread. Each answers the
client side through its adapter (``_decided``, ``_decided_or_fail``, or
``ClientSide.classified`` and ``run``); a failure on the way ends the connection
(XX000: fail closed). A Decide with no refusal is the common case: ``run`` does it
inline, with the same call as ``decide`` below.
"""
from __future__ import annotations

from twisted.logger import Logger

from hoopy.policy.verdicts import Allow, Deny
from hoopy.postgres.classify import PARSES

log = Logger()


class Judge:
    def __init__(self, client):
        self.client = client  # the ClientProtocol

    def decide(self, c):
        client = self.client
        if c.refusal:
            op = c.operation
            d = client.session.event("operation", "refused", reason=c.refusal, sql=op.detail["sql"],
                                     units=[str(u) for u in op.units])
            d.addBoth(lambda _: Deny(c.refusal))
            d.addCallback(client._decided)
            d.addErrback(client._internal_error, "judging")
            return
        # The answer as a call (no Deferred chain of our own after the store's): a decision that
        # fails and a _decided that raises both end the connection (fail closed), as before.
        client.session.decide_then(c.operation, client._decided_or_fail, client._judging_failed)

    def check(self, c):
        """A Parse: refused if the policy would refuse its statement; else it goes upstream
        with no event (its Bind is decided and recorded)."""
        client = self.client
        op = c.operation
        reason, rule = c.refusal, None
        if reason is None:
            try:
                j = client.session.judge(op)
            except Exception as e:  # fail closed
                log.failure("judging a Parse")
                j = Deny(f"hoopy could not judge this statement ({type(e).__name__})")
                reason = j.reason
            else:
                if j.outcome != "deny":  # allow, or approve: its Bind is held
                    return client._decided(Allow(j.rule))
                reason, rule = j.reason, j.rule
        d = client.session.event("operation", "refused", reason=reason, rule=rule, stage="parse",
                                 sql=op.detail["sql"], units=[str(u) for u in op.units])
        d.addBoth(lambda _: Deny(reason, rule))
        d.addCallback(client._decided)
        d.addErrback(client._internal_error, "judging")

    def classify(self, c):
        # On a thread, one large statement at a time gateway-wide (its memory is the bound).
        d = PARSES.classify(self.client.gateway.reactor, c.sql, c.scope)
        d.addCallback(self._classified)
        d.addErrback(self.client._internal_error, "classifying")

    def _classified(self, result):
        client = self.client
        if not client.closed:
            client.cs.classified(result)
            client.run()
