// node-postgres through hoopy: parameterized queries, a pool, a refused write, end().
// argv: port user password database tls(0|1)
const { Client, Pool } = require("pg");
const [port, user, password, database, tls] = process.argv.slice(2);
const config = { host: "127.0.0.1", port: Number(port), user, password, database,
                 ssl: tls === "1" ? { rejectUnauthorized: false } : false };

async function main() {
  const c = new Client(config);
  await c.connect();
  const r = await c.query("SELECT id, name, email FROM customers WHERE id = $1", [1]);
  console.log(JSON.stringify(r.rows));
  const pid = (await c.query("SELECT pg_backend_pid() AS p")).rows[0].p;
  console.log("pid " + (pid === c.processID ? "same" : "differs"));
  try {
    await c.query("UPDATE customers SET email = $1 WHERE id = 1", ["[REDACTED]"]);
    console.log("written?!");
  } catch (e) {
    console.log("refused " + e.code);
  }
  console.log("count " + (await c.query("SELECT count(*)::int AS n FROM customers")).rows[0].n);
  await c.end();
  const pool = new Pool({ ...config, max: 3 });
  const ns = await Promise.all([1, 2, 3, 4, 5].map(() => pool.query("SELECT count(*)::int AS n FROM notes")));
  console.log("pool " + ns.map((x) => x.rows[0].n).join(","));
  await pool.end();
  console.log("closed");
}

main().catch((e) => { console.error(e); process.exit(1); });
