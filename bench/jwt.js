// HS256 tokens for the load scripts, signed like the main backend's (sub, exp).
const crypto = require('crypto');

const DEV_SECRET = 'pgchat-development-secret-do-not-use-in-production';
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');

function token(sub, secret = DEV_SECRET, ttlSeconds = 3600) {
  const head = b64({ alg: 'HS256', typ: 'JWT' });
  const body = b64({ sub, exp: Math.floor(Date.now() / 1000) + ttlSeconds });
  const sig = crypto.createHmac('sha256', secret).update(`${head}.${body}`).digest('base64url');
  return `${head}.${body}.${sig}`;
}

module.exports = { token, DEV_SECRET };
