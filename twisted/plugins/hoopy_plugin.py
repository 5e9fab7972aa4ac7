"""The twistd plugin: ``twistd -n hoopy -c hoopy.toml``.

Nothing here may import the reactor: hoopy.tap installs the asyncio reactor
while options are parsed (asyncssh needs it).
"""
from twisted.application.service import ServiceMaker

hoopy = ServiceMaker(
    "hoopy",
    "hoopy.tap",
    "Access gateway for AI agents: PostgreSQL, SSH and HTTP, judged and recorded",
    "hoopy",
)
