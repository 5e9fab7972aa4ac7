"""ClientProtocol's decision path (the Decide command, judge.Judge's or run's inline copy): one
callback on the decision's Deferred (not a callback and an errback after it) must still fail
closed both ways: a decision that fails, and a ``_decided`` that raises, end the connection with
XX000 and forward nothing."""
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from hoopy.policy.verdicts import Allow
from hoopy.postgres.judge import Judge
from hoopy.postgres.pipeline import Decide
from hoopy.postgres.protocol import ClientProtocol


class _Session:
    def __init__(self):
        self.d = Deferred()

    def decide(self, operation):
        return self.d

    def decide_then(self, operation, verdict, failed):
        self.d.addCallbacks(verdict, failed)


class _CS:
    def __init__(self, raises=False):
        self.raises = raises
        self.verdicts = []

    def decided(self, verdict):
        if self.raises:
            raise RuntimeError("a bug while resuming the statement")
        self.verdicts.append(verdict)


def _protocol(cs):
    p = object.__new__(ClientProtocol)
    p.session, p.cs, p.closed = _Session(), cs, False
    p.fatals, p.ran = [], 0
    p.fatal = lambda code, message: p.fatals.append((code, message))

    def run():
        p.ran += 1
    p.run = run
    return p


def test_an_allow_resumes_the_statement():
    p = _protocol(_CS())
    Judge(p).decide(Decide(object()))
    p.session.d.callback(Allow("r"))
    assert p.cs.verdicts == [Allow("r")] and p.ran == 1 and p.fatals == []


def test_a_decided_that_raises_ends_the_connection():
    p = _protocol(_CS(raises=True))
    Judge(p).decide(Decide(object()))
    p.session.d.callback(Allow("r"))
    assert p.fatals == [("XX000", "hoopy: internal error judging")] and p.ran == 0


def test_a_decision_that_fails_ends_the_connection():
    p = _protocol(_CS())
    Judge(p).decide(Decide(object()))
    p.session.d.errback(Failure(RuntimeError("the policy broke")))
    assert p.fatals == [("XX000", "hoopy: internal error judging")] and p.cs.verdicts == []
