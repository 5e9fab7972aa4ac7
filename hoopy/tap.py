"""twistd's entry point: ``twistd -n hoopy -c hoopy.toml``.

asyncssh runs on asyncio, so the gateway runs on Twisted's asyncio reactor
(on uvloop's loop where uvloop is installed: hoopy/eventloop.py).
The Options constructor installs it when nothing has chosen a reactor yet
(twistd parses ``-r`` before it builds our options); makeService refuses
any other reactor with a one-line error.
"""
from __future__ import annotations

from twisted.logger import Logger
from twisted.python import usage

log = Logger()


def _install_asyncio_reactor():
    from hoopy.eventloop import EventLoopError, install_reactor

    try:
        install_reactor()  # (on uvloop's loop where it is installed: hoopy/eventloop.py)
    except EventLoopError as e:
        raise SystemExit(f"hoopy: {e}; not starting")


class Options(usage.Options):
    synopsis = "-c FILE"
    longdesc = "Runs the hoopy access gateway with the TOML configuration FILE."
    optParameters = [["config", "c", "hoopy.toml", "the configuration file"]]

    def __init__(self):
        _install_asyncio_reactor()
        super().__init__()


def _reactor_ok() -> tuple[bool, str]:
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    return isinstance(reactor, AsyncioSelectorReactor), type(reactor).__module__


def _stop_on_signals(reactor) -> None:
    """SIGHUP (the terminal of a ``twistd -n`` closed) stops the gateway as SIGTERM does: every
    session ended on the record, recordings sealed, not killed where it stands. Left alone where it
    is ignored (nohup). And a second SIGTERM, SIGINT or SIGHUP while the gateway is stopping (an
    operator's second Ctrl-C) is noted, where Twisted's handler stopped the reactor again and logged
    a ReactorNotRunning traceback; the exit status stays the first signal's."""
    import signal

    stopping: list = []
    reactor.addSystemEventTrigger("before", "shutdown", stopping.append, "shutdown")
    twisteds = {signal.SIGHUP: reactor.sigTerm}  # (what handles each: the stop, its log line, the exit status)

    def stop(number, frame):
        if stopping:
            log.info("signal {number}: the gateway is stopping already", number=number)
            return
        stopping.append(number)
        if number == signal.SIGHUP:  # (Twisted's handler below logs it as SIGTERM)
            log.info("Received SIGHUP: stopping as on SIGTERM")
        twisteds[number](number, frame)

    if signal.getsignal(signal.SIGHUP) == signal.SIG_DFL:
        signal.signal(signal.SIGHUP, stop)

    def replace_twisteds():  # (Twisted installs its own when the reactor starts, after makeService)
        for sig in (signal.SIGTERM, signal.SIGINT):
            handler = signal.getsignal(sig)
            if getattr(handler, "__self__", None) is reactor:
                twisteds[sig] = handler
                signal.signal(sig, stop)

    reactor.callWhenRunning(replace_twisteds)


def makeService(options):
    from hoopy import config as configmod

    ok, name = _reactor_ok()
    if not ok:
        raise SystemExit(f"hoopy needs the asyncio reactor (asyncssh runs on it), not {name}: "
                         "drop -r or use -r asyncio")
    try:
        cfg = configmod.load(options["config"])
    except configmod.ConfigError as e:
        lines = "\n".join(f"  {p}" for p in e.problems)
        raise SystemExit(f"hoopy: {options['config']} has problems; not starting:\n{lines}")

    from twisted.internet import reactor

    from hoopy.eventloop import chosen
    from hoopy.eventloop import name as loop_name
    from hoopy.sockwrite import install_fast_reads

    running, want = loop_name(reactor._asyncioEventloop), chosen()
    if want and want != running:
        # twistd's -r asyncio installs the reactor, on the stdlib's loop, before our options are
        # read: a required uvloop is refused rather than quietly not run.
        raise SystemExit(f"hoopy: HOOPY_EVENT_LOOP={want}, but the reactor runs on {running}'s loop "
                         "(twistd -r asyncio installed it): drop -r; not starting")
    install_fast_reads(reactor)
    log.info("event loop: {loop}", loop=running)
    _stop_on_signals(reactor)
    from hoopy.gateway import Gateway
    from hoopy.listen import bind_all

    # Every listener is bound now, before twistd daemonizes: one that cannot be is one line
    # naming its key on the terminal and exit status 1.
    bound = bind_all(cfg)
    gateway = Gateway(cfg)
    gateway.prebound = bound
    gateway.under_twistd = True
    gateway.add_connections()
    gateway.add_admin()
    return gateway
