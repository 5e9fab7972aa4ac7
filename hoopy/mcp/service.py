"""The mcp connection service: the /mcp listener, its sessions, children and pins."""
from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from hoopy.listening import Listener
from hoopy.mcp import wire
from hoopy.mcp.channels import EraHint, HTTPChannel
from hoopy.mcp.children import ChildLimit, Children
from hoopy.mcp.conversation import MCPSession
from hoopy.mcp.pinning import Pins
from hoopy.mcp.results import masker_for
from hoopy.mcp.site import MCPResource, MCPSite
from hoopy.upstream import UpstreamError

log = Logger()


def _agent(reactor, settings):
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    pool._factory.noisy = False
    return Agent(reactor, pool=pool, connectTimeout=10), pool


class MCPService(Listener):
    def __init__(self, gateway, connection):
        self.gateway = gateway  # what the parts made below read
        self.connection = connection
        self.settings = connection.settings
        self.hint = EraHint()
        self.pins = Pins(gateway, connection)
        self.masker = masker_for(gateway, connection.name)
        self.definitions: dict = {}  # tool name -> its definition, as last listed
        self.prompt_names: set = set()  # prompts the server listed (only these are got)
        self.by_mcp_id: dict = {}  # handshake era: Mcp-Session-Id -> MCPSession
        self.by_key: dict = {}  # per-request era: (identity, client) -> MCPSession
        self._opening: dict = {}
        self.children = Children(gateway, connection, self.hint) if self.settings.command else None
        self.agent = self.pool = None
        if self.settings.upstream:
            self.agent, self.pool = _agent(gateway.reactor, self.settings)
        self.refusal = "refused"
        self.site = MCPSite(MCPResource(self), self.settings.max_message, self.settings.head_timeout)
        super().__init__(gateway, f"mcp {connection.name}", connection.listen, self.site,
                         key=f"connections.{connection.name}.listen")

    # --- sessions ---------------------------------------------------------------------

    async def _new(self, ident, peer, headers, era, version, client_info, caps, key=None):
        session = self.gateway.new_session(ident.name, self.connection, peer, credential=ident.credential)
        conv = MCPSession(self, session, era, version, client_info, caps, key)
        session.terminate = conv.end
        try:
            await session.start()
        except Exception as e:
            self.refusal = "refused: the audit store cannot record this session"
            conv.ended = True
            log.error("mcp {c}: session not recorded: {e}", c=self.connection.name, e=e)
            return None
        claimed = {k: (headers(h) or [None])[0] for k, h in (("model", "x-hoopy-model"),
                                                             ("tool_call", "x-hoopy-tool-call"))}
        await session.attribute(**claimed)
        await session.event("mcp.session", "ok", era=era, version=version,
                            client=wire.client_label(client_info), client_info=client_info,
                            capabilities=sorted(caps) if isinstance(caps, dict) else None,
                            **({"mcp_session": "per-client-instance"} if era == "modern" else {}))
        return conv

    async def modern_session(self, ident, env, peer, headers):
        key = (ident.name, ident.credential, wire.client_label(env["client_info"]))
        conv = self.by_key.get(key)
        if conv is not None and not conv.ended:
            return conv
        opening = self._opening.get(key)
        if opening is not None:
            return await opening.get()
        from hoopy.mcp.upstream import Shared

        shared = self._opening[key] = Shared(defer.ensureDeferred(self._new(
            ident, peer, headers, "modern", env["version"], env["client_info"], env["capabilities"], key)))
        try:
            conv = await shared.get()
        finally:
            self._opening.pop(key, None)
        if conv is not None:
            self.by_key[key] = conv
        return conv

    async def handshake_session(self, ident, params, peer, headers):
        version = params.get("protocolVersion")
        conv = await self._new(ident, peer, headers, "handshake",
                               version if isinstance(version, str) else None,
                               params.get("clientInfo"), params.get("capabilities") or {})
        if conv is not None:
            self.by_mcp_id[conv.mcp_id] = conv
        return conv

    def forget(self, conv):
        if conv.mcp_id is not None:
            self.by_mcp_id.pop(conv.mcp_id, None)
        if conv.key is not None and self.by_key.get(conv.key) is conv:
            del self.by_key[conv.key]

    def open_channel(self, conv):
        s = self.settings
        if s.upstream:
            headers = {k: v.value for k, v in s.upstream_headers.items()}
            return HTTPChannel(self.agent, s.upstream, headers, s.max_message, self.hint), None
        try:
            child = self.children.spawn()
        except ChildLimit as e:
            raise UpstreamError(str(e))
        return child.channel, child

    def accept(self, tool: str, reviewer: str):
        return self.pins.accept(tool, reviewer)

    # --- life -----------------------------------------------------------------------------

    def startService(self):
        super().startService()
        self.pins.load().addErrback(lambda f: log.error("mcp {c}: pins not read: {e}", c=self.connection.name,
                                                         e=f.getErrorMessage()))

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        convs = list(self.by_mcp_id.values()) + list(self.by_key.values())
        yield defer.DeferredList([c.end("gateway shutdown") for c in convs], consumeErrors=True)
        if self.pool is not None:
            yield self.pool.closeCachedConnections()


def make_service(gateway, connection):
    return MCPService(gateway, connection)
