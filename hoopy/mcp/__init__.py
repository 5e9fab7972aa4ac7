"""The MCP gateway: Streamable HTTP (both protocol eras) and stdio children, judged and recorded."""
