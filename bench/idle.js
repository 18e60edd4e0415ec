// Opens N idle authenticated WebSockets to a pgchat server and holds them for a while,
// so that the server's memory per idle socket can be read off /health before and after.
// Usage: node bench/idle.js [N] [url] [secret]   (needs the `ws` package: npm install ws)
const WebSocket = require('ws');
const jwt = require('./jwt');

const N = parseInt(process.argv[2] || '2000', 10);
const URL = process.argv[3] || 'ws://127.0.0.1:3000/ws';
const SECRET = process.argv[4] || jwt.DEV_SECRET;
const HOLD_MS = parseInt(process.env.HOLD_MS || '3000', 10);

const token = (sub) => jwt.token(sub, SECRET);

async function health() {
  const http = URL.replace(/^ws/, 'http').replace(/\/ws$/, '/health');
  return (await fetch(http)).json();
}

(async () => {
  const before = await health();
  const sockets = [];
  let opened = 0;
  const batch = 200;
  for (let i = 0; i < N; i += batch) {
    await Promise.all(
      Array.from({ length: Math.min(batch, N - i) }, (_, j) => new Promise((resolve, reject) => {
        const ws = new WebSocket(URL, { headers: { authorization: `Bearer ${token(`idle${i + j}`)}` } });
        ws.once('message', () => { opened++; resolve(); });
        ws.once('error', reject);
        sockets.push(ws);
      })),
    );
  }
  await new Promise((r) => setTimeout(r, HOLD_MS));
  const after = await health();
  const delta = after.memory.rss_bytes - before.memory.rss_bytes;
  console.log(JSON.stringify({
    sockets: opened,
    rss_before_bytes: before.memory.rss_bytes,
    rss_after_bytes: after.memory.rss_bytes,
    bytes_per_socket: Math.round(delta / opened),
    server_connections: after.connections,
  }));
  for (const ws of sockets) ws.terminate();
})().catch((e) => { console.error(e); process.exit(1); });
