"""The private asyncssh APIs hoopy uses (hoopy/ssh/private.py) are still there.

An asyncssh upgrade that renames or removes one must fail here, loudly, rather
than change what a client sees (a lost exit status, unbounded env requests,
refusals that leave no event).
"""
import inspect

import asyncssh
import pytest

from hoopy.ssh import private


@pytest.mark.parametrize("cls,name", private.USED_METHODS, ids=lambda v: getattr(v, "__name__", v))
def test_each_private_method_still_exists(cls, name):
    assert callable(getattr(cls, name, None)), f"asyncssh {asyncssh.__version__}: {cls.__name__}.{name} is gone"


@pytest.mark.parametrize("cls,name", private.USED_ATTRIBUTES, ids=lambda v: getattr(v, "__name__", v))
def test_each_private_attribute_is_still_set(cls, name):
    sources = "".join(inspect.getsource(k) for k in cls.__mro__ if k.__module__.startswith("asyncssh"))
    assert f"self.{name} " in sources or f"self.{name}:" in sources, \
        f"asyncssh {asyncssh.__version__}: {cls.__name__} no longer sets {name}"


def test_the_packet_dispatch_table_is_still_a_dict_by_message_type():
    from asyncssh.constants import MSG_CHANNEL_OPEN

    table = asyncssh.SSHServerConnection._packet_handlers
    assert table[MSG_CHANNEL_OPEN] is asyncssh.SSHServerConnection._process_channel_open
    assert private.GatewayServerConnection._packet_handlers[MSG_CHANNEL_OPEN] is not table[MSG_CHANNEL_OPEN]


def test_no_more_sessions_is_named_as_asyncssh_dispatches_global_requests():
    from asyncssh.misc import map_handler_name

    name = "_process_" + map_handler_name("no-more-sessions@openssh.com") + "_global_request"
    assert hasattr(private.GatewayServerConnection, name)
