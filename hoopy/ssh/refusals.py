"""What each refused SSH request is called on the record, and why it is refused by default.

Every refusal is an ``operation`` event with outcome ``refused``: ``operation``
is the word below (by SSH request or channel type), ``text`` what was asked,
``reason`` why. Requests a callback refuses for a reason of its own say so
instead of the default here.
"""
from __future__ import annotations

# The `operation` word of a refusal, by SSH request or channel type.
REFUSED_OPERATION = {
    "x11-req": "x11", "auth-agent-req@openssh.com": "agent-forwarding", "pty-req": "pty", "env": "env",
    "exec": "exec", "shell": "shell", "subsystem": "subsystem", "signal": "signal", "break": "break",
    "tcpip-forward": "remote-forward", "streamlocal-forward@openssh.com": "remote-forward",
    "direct-streamlocal@openssh.com": "direct-streamlocal", "tun@openssh.com": "tun",
    "session": "session", "direct-tcpip": "forward", "x11": "x11", "auth-agent@openssh.com": "agent-forwarding",
}
REFUSED_WHY = {
    "x11-req": "X11 forwarding is not offered through hoopy",
    "auth-agent-req@openssh.com": "agent forwarding is not offered through hoopy "
                                  "(the gateway holds the upstream credential)",
    "pty-req": "a second terminal on one channel",
    "exec": "a second exec, shell or subsystem on one channel, or a command line that is not UTF-8",
    "shell": "a second exec, shell or subsystem on one channel",
    "subsystem": "a second exec, shell or subsystem on one channel, or a subsystem name that is not ASCII",
    "signal": "a signal name that is not ASCII",
    "tcpip-forward": "remote forwarding (-R) is not offered through hoopy",
    "streamlocal-forward@openssh.com": "remote forwarding of a socket (-R) is not offered through hoopy",
}
