// The TypeScript SDK's client (handshake era, 2025-11-25) driven by the tests:
//   node client.mjs URL TOKEN '[["list"], ["call", "echo", {"text": "hi"}]]'
// One JSON line of results per action on stdout.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token, actionsJson] = process.argv.slice(2);
const actions = JSON.parse(actionsJson);
const headers = token ? { Authorization: `Bearer ${token}` } : {};
const transport = new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers } });
const sampling = process.env.SAMPLING === "1";
const client = new Client({ name: "test-ts-client", version: "1.32.2" },
                          { capabilities: sampling ? { sampling: {} } : {} });
if (sampling) {
  const { CreateMessageRequestSchema } = await import("@modelcontextprotocol/sdk/types.js");
  client.setRequestHandler(CreateMessageRequestSchema, async () => ({
    model: "test-model", role: "assistant", content: { type: "text", text: "sampled by the test client" },
  }));
}
try {
  await client.connect(transport);
  console.log(JSON.stringify({ version: transport.protocolVersion ?? null, session: transport.sessionId ?? null }));
  for (const action of actions) {
    try {
      if (action[0] === "list") {
        const r = await client.listTools();
        console.log(JSON.stringify({ tools: r.tools.map((t) => t.name).sort() }));
      } else if (action[0] === "call") {
        const progress = [];
        const r = await client.callTool({ name: action[1], arguments: action[2] ?? {} }, undefined, {
          onprogress: (p) => progress.push(p.message ?? p.progress), timeout: 120000,
        });
        console.log(JSON.stringify({ isError: !!r.isError, text: (r.content ?? []).map((c) => c.text ?? "").join(""),
                                     structured: r.structuredContent ?? null, progress }));
      } else if (action[0] === "resources") {
        const r = await client.listResources();
        console.log(JSON.stringify({ resources: r.resources.map((x) => x.uri) }));
      } else if (action[0] === "read") {
        const r = await client.readResource({ uri: action[1] });
        console.log(JSON.stringify({ contents: r.contents.map((c) => c.text ?? c.blob ?? "") }));
      } else if (action[0] === "prompts") {
        const r = await client.listPrompts();
        console.log(JSON.stringify({ prompts: r.prompts.map((p) => p.name).sort() }));
      } else if (action[0] === "raw") {
        const r = await client.request({ method: action[1], params: action[2] ?? {} }, (await import("zod")).z.any());
        console.log(JSON.stringify({ result: r }));
      }
    } catch (e) {
      console.log(JSON.stringify({ exception: String(e && e.message || e) }));
    }
  }
  await transport.terminateSession().catch(() => {});
  await client.close();
} catch (e) {
  console.log(JSON.stringify({ exception: String(e && e.message || e) }));
  process.exit(1);
}
