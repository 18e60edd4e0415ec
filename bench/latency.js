// Send -> delivery latency of direct messages between two sockets, normally on two
// different workers. Open loop: message i is due at start + i/rate, and its latency is
// measured from that due time (so a stalled server cannot hide its queueing).
// Usage: node bench/latency.js [rate/s] [count] [sender-url] [receiver-url] [secret]
// Needs the `ws` package (npm install ws).
const WebSocket = require('ws');
const jwt = require('./jwt');

const RATE = parseFloat(process.argv[2] || '200');
const COUNT = parseInt(process.argv[3] || '2000', 10);
const SEND_URL = process.argv[4] || 'ws://127.0.0.1:3000/ws';
const RECV_URL = process.argv[5] || 'ws://127.0.0.1:3001/ws';
const SECRET = process.argv[6] || jwt.DEV_SECRET;

const token = (sub) => jwt.token(sub, SECRET);
const open = (url, user) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token(user)}` } });
  ws.once('message', (m) => resolve([ws, JSON.parse(m)]));
  ws.once('error', reject);
});
const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];

(async () => {
  const run = `${Date.now()}`;
  const [recv, rhello] = await open(RECV_URL, `lat-r-${run}`);
  const [send, shello] = await open(SEND_URL, `lat-s-${run}`);
  const due = new Map();
  const lat = [];
  let acked = 0;
  const done = new Promise((resolve) => {
    recv.on('message', (m) => {
      const e = JSON.parse(m);
      if (e.type !== 'message') return;
      const t = due.get(e.message.client_msg_id);
      if (t === undefined) return;
      lat.push(Number(process.hrtime.bigint() - t) / 1e6);
      if (lat.length === COUNT) resolve();
    });
  });
  send.on('message', (m) => { if (JSON.parse(m).type === 'ok') acked++; });
  const start = process.hrtime.bigint();
  for (let i = 0; i < COUNT; i++) {
    const at = start + BigInt(Math.round((i * 1e9) / RATE));
    let now = process.hrtime.bigint();
    if (at > now) await new Promise((r) => setTimeout(r, Number(at - now) / 1e6));
    due.set(`${i}`, at);
    send.send(JSON.stringify({ type: 'send', to: `lat-r-${run}`, body: `m${i}`, client_msg_id: `${i}` }));
  }
  await done;
  lat.sort((a, b) => a - b);
  const round = (x) => Math.round(x * 100) / 100;
  console.log(JSON.stringify({
    sender_worker: shello.worker, receiver_worker: rhello.worker,
    rate_per_s: RATE, messages: COUNT, acked,
    p50_ms: round(pct(lat, 50)), p90_ms: round(pct(lat, 90)), p99_ms: round(pct(lat, 99)), max_ms: round(lat[lat.length - 1]),
  }));
  send.close(); recv.close();
})().catch((e) => { console.error(e); process.exit(1); });
