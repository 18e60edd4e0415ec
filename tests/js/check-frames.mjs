// Checks frames and HTTP responses captured from a running pgchat (tests/spec.rs writes
// them) against docs/asyncapi.yaml and docs/openapi.yaml, and that the capture covers the
// specs: every server frame type, every request kind's ok reply, every error code, every
// close code, every documented HTTP status.
//
//   node check-frames.mjs <capture.json> [asyncapi.yaml] [openapi.yaml]
//
// The capture (see tests/spec.rs):
//   { "ws":   [{ "conn", "label", "dir": "client"|"server", "kind": "text"|"raw"|"close",
//                "frame"?, "expect"?: "valid"|"invalid", "reply"?: bool, "code"? }, …],
//     "http": [{ "method", "path", "status", "content_type"?, "retry_after"?, "body"? }, …],
//     "skipped": { "<what>": "<why>" } }
// WebSocket records are in the order they happened; replies are paired with requests by
// order on each connection (the protocol answers every request once, in order) and their
// `ref` must match. A client frame marked "invalid" was sent to provoke an error: it must
// NOT validate against the request schema of its type (so the schemas are as strict as
// the server there).
//
// Exits non-zero listing every failure.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import { Validator } from '@seriousme/openapi-schema-validator';
import Ajv from 'ajv';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const capturePath = process.argv[2];
if (!capturePath) {
  console.error('usage: node check-frames.mjs <capture.json> [asyncapi.yaml] [openapi.yaml]');
  process.exit(2);
}
const asyncapiPath = path.resolve(process.argv[3] ?? path.join(root, 'docs/asyncapi.yaml'));
const openapiPath = path.resolve(process.argv[4] ?? path.join(root, 'docs/openapi.yaml'));
const capture = JSON.parse(fs.readFileSync(capturePath, 'utf8'));

// Documented statuses no scenario produces, with the reason. Everything else in
// openapi.yaml must be seen.
const PRODUCTION_404 =
  'only in production (NODE_ENV=production), where the development routes do not exist; the test server runs in development';
const httpExempt = (key, operation) =>
  operation.tags?.includes('development') && key.endsWith(' 404') ? PRODUCTION_404 : undefined;

const failures = [];
const fail = (msg) => failures.push(msg);
const show = (v) => {
  const s = JSON.stringify(v);
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
};
const errorsOf = (validate) =>
  (validate.errors ?? [])
    .slice(0, 5)
    .map((e) => `${e.instancePath || '/'} ${e.message}${e.params ? ` ${JSON.stringify(e.params)}` : ''}`)
    .join('; ');

// ------------------------------------------------------------------ AsyncAPI
const { document, diagnostics } = await new Parser().parse(fs.readFileSync(asyncapiPath, 'utf8'), {
  source: asyncapiPath,
});
const parseErrors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
if (!document || parseErrors.length) {
  console.log(`FAIL ${asyncapiPath} does not parse:`);
  for (const d of parseErrors) console.log(`  ${d.code} ${d.path?.join('.')}: ${d.message}`);
  process.exit(1);
}

// Draft-07 (AsyncAPI's schema format), strictSchema: a keyword ajv does not know is an error,
// so a typo in the spec cannot silently validate nothing.
const ajv = new Ajv({ strictSchema: true, strictTuples: true, strictTypes: false, strictRequired: false, allErrors: true, allowUnionTypes: true });
addFormats(ajv);
ajv.addKeyword({ keyword: 'x-parser-schema-id', schemaType: 'string' });
for (const k of ['x-parser-circular', 'x-parser-original-schema-format', 'x-parser-original-payload']) {
  ajv.addKeyword({ keyword: k });
}

const typeOf = (payload) => payload?.properties?.type?.const;
const requests = new Map(); // request type -> { validate, ok: { id, validate } }
const serverFrames = new Map(); // server frame type (not ok) -> { id, validate }
const okSchemas = new Map(); // message id -> validate (ok replies)
for (const op of document.operations().all()) {
  const messages = op.messages().all();
  if (op.action() === 'receive') {
    for (const m of messages) {
      const payload = m.payload().json();
      const type = typeOf(payload);
      if (!type) fail(`asyncapi: request message ${m.id()} has no type const`);
      const entry = { id: m.id(), validate: ajv.compile(payload), ok: null };
      for (const r of op.reply()?.messages().all() ?? []) {
        const rp = r.payload().json();
        const rt = typeOf(rp);
        if (rt === 'ok') {
          if (!okSchemas.has(r.id())) okSchemas.set(r.id(), ajv.compile(rp));
          entry.ok = { id: r.id(), validate: okSchemas.get(r.id()) };
        } else if (rt === 'error') {
          if (!serverFrames.has('error')) serverFrames.set('error', { id: r.id(), validate: ajv.compile(rp) });
        } else {
          fail(`asyncapi: reply ${r.id()} of ${op.id()} is neither ok nor error`);
        }
      }
      if (!entry.ok) fail(`asyncapi: operation ${op.id()} has no ok reply`);
      requests.set(type, entry);
    }
  } else {
    for (const m of messages) {
      const payload = m.payload().json();
      const type = typeOf(payload);
      if (!type) fail(`asyncapi: server message ${m.id()} has no type const`);
      serverFrames.set(type, { id: m.id(), validate: ajv.compile(payload) });
    }
  }
}
if (!serverFrames.has('error')) fail('asyncapi: no error message among the replies');
const errorCodes =
  document.components().schemas().get('ErrorCode')?.json().enum ??
  (fail('asyncapi: components.schemas.ErrorCode has no enum'), []);
const closeCodes = [...document.info().description().matchAll(/^\|\s*(\d{4})\s*\|/gm)].map((m) => Number(m[1]));
if (closeCodes.length === 0) fail('asyncapi: info.description lists no close codes');

// ------------------------------------------------------------------ WebSocket frames
const seenServer = new Set(); // server frame types
const seenOk = new Set(); // request types answered ok
const seenCodes = new Set(); // error codes, socket
const seenClose = new Set();
const sentValid = new Set();
let frames = 0;
const pending = new Map(); // conn -> [{ type, ref, hasRef }]
for (const [i, rec] of (capture.ws ?? []).entries()) {
  const where = `ws #${i} (${rec.label ?? rec.conn}, ${rec.dir})`;
  const queue = pending.get(rec.conn) ?? [];
  pending.set(rec.conn, queue);
  frames += 1;
  if (rec.dir === 'client') {
    if (rec.kind === 'text' && rec.frame !== undefined) {
      const f = rec.frame;
      const type = f && typeof f === 'object' && !Array.isArray(f) ? f.type : undefined;
      const req = typeof type === 'string' ? requests.get(type) : undefined;
      if (rec.expect === 'valid') {
        if (!req) fail(`${where}: request type ${show(type)} has no schema: ${show(f)}`);
        else if (!req.validate(f)) fail(`${where}: ${type} request does not match ${req.id}: ${errorsOf(req.validate)} in ${show(f)}`);
        else sentValid.add(type);
      } else if (rec.expect === 'invalid') {
        if (req && req.validate(f)) fail(`${where}: a frame the server refuses validates against ${req.id} (the schema is looser than the server): ${show(f)}`);
      } else {
        fail(`${where}: client frame without expect: ${show(f)}`);
      }
      if (rec.reply !== false) {
        const ref = f && typeof f === 'object' ? f.ref : undefined;
        const hasRef = typeof ref === 'string' || Number.isInteger(ref);
        queue.push({ type: req ? type : null, ref, hasRef, frame: f });
      }
    } else if (rec.reply !== false) {
      queue.push({ type: null, hasRef: false, frame: rec.text ?? rec.kind });
    }
    continue;
  }
  // From the server.
  if (rec.kind === 'close') {
    if (rec.code != null) {
      seenClose.add(rec.code);
      if (!closeCodes.includes(rec.code)) fail(`${where}: close code ${rec.code} is not documented (${closeCodes})`);
    }
    continue;
  }
  if (rec.kind !== 'text') {
    fail(`${where}: the server sent a ${rec.kind} frame: ${show(rec.text)}`);
    continue;
  }
  const f = rec.frame;
  if (!f || typeof f !== 'object' || Array.isArray(f) || typeof f.type !== 'string') {
    fail(`${where}: a server frame that is not an object with a type: ${show(f ?? rec.text)}`);
    continue;
  }
  if (f.type === 'ok' || f.type === 'error') {
    const req = queue.shift();
    if (!req) {
      fail(`${where}: a reply with no request left to answer: ${show(f)}`);
      continue;
    }
    if (req.hasRef ? JSON.stringify(f.ref) !== JSON.stringify(req.ref) : 'ref' in f) {
      fail(`${where}: reply ref ${show(f.ref)} does not answer ${show(req.frame)}`);
    }
    if (f.type === 'ok') {
      const entry = req.type ? requests.get(req.type) : undefined;
      if (!entry) {
        fail(`${where}: ok for a request without a schema: ${show(req.frame)}`);
        continue;
      }
      if (!entry.ok.validate(f)) {
        fail(`${where}: ok reply to ${req.type} does not match ${entry.ok.id}: ${errorsOf(entry.ok.validate)} in ${show(f)}`);
      } else {
        seenOk.add(req.type);
      }
      continue;
    }
  }
  const schema = serverFrames.get(f.type);
  if (!schema) {
    fail(`${where}: server frame type ${show(f.type)} has no schema: ${show(f)}`);
    continue;
  }
  if (!schema.validate(f)) {
    fail(`${where}: ${f.type} frame does not match ${schema.id}: ${errorsOf(schema.validate)} in ${show(f)}`);
    continue;
  }
  seenServer.add(f.type);
  if (f.type === 'error') seenCodes.add(f.code);
}

// ------------------------------------------------------------------ OpenAPI
const validator = new Validator();
const oaResult = await validator.validate(openapiPath);
if (!oaResult.valid) {
  console.log(`FAIL ${openapiPath} is not valid OpenAPI:`, JSON.stringify(oaResult.errors));
  process.exit(1);
}
const openapi = validator.resolveRefs();
const ajv2020 = new Ajv2020({ strictSchema: true, strictTuples: true, strictTypes: false, strictRequired: false, allErrors: true, allowUnionTypes: true });
addFormats(ajv2020);
const compiled = new Map();
const compile = (schema) => {
  if (!compiled.has(schema)) compiled.set(schema, ajv2020.compile(schema));
  return compiled.get(schema);
};
const templates = Object.keys(openapi.paths).map((p) => ({
  template: p,
  regex: new RegExp(`^${p.replace(/\{[^}]+\}/g, '[^/]+')}$`),
}));
const mediaBase = (t) => (t ?? '').split(';')[0].trim().toLowerCase();
const mediaParams = (t) =>
  (t ?? '')
    .split(';')
    .slice(1)
    .map((s) => s.trim().toLowerCase().replace(/\s+/g, ''))
    .filter(Boolean)
    .sort()
    .join(';');
const seenHttp = new Set();
const seenHttpCodes = new Set();
for (const [i, rec] of (capture.http ?? []).entries()) {
  const pathOnly = rec.path.split('?')[0];
  const where = `http #${i} ${rec.method} ${rec.path} → ${rec.status}`;
  const code = rec.body?.error?.code;
  if (typeof code === 'string') seenHttpCodes.add(code);
  const match = templates.find((t) => t.regex.test(pathOnly));
  const operation = match && openapi.paths[match.template][rec.method.toLowerCase()];
  if (!match || !operation) {
    if (rec.status === 405 && match) {
      // A known path asked with a method it does not serve: 405 with the error body
      // (bad_request) and an Allow header, documented in info.description.
      const v = compile(openapi.components.schemas.Error);
      if (!v(rec.body) || rec.body.error.code !== 'bad_request') {
        fail(`${where}: 405 without the bad_request error body: ${show(rec.body)}`);
      }
      seenHttp.add(`${rec.method} ${pathOnly} 405`);
      continue;
    }
    // Unknown paths are 404 with the error body (documented in info.description).
    const notFound = openapi.components.responses.NotFound.content['application/json'].schema;
    const v = compile(notFound);
    if (rec.status !== 404) fail(`${where}: an undocumented path answered ${rec.status}`);
    else if (!v(rec.body)) fail(`${where}: body does not match NotFound: ${errorsOf(v)} in ${show(rec.body)}`);
    continue;
  }
  const response = operation.responses[String(rec.status)] ?? operation.responses.default;
  if (!response) {
    fail(`${where}: status ${rec.status} is not documented for ${rec.method} ${match.template}`);
    continue;
  }
  seenHttp.add(`${rec.method} ${match.template} ${rec.status}`);
  if (response.headers?.['Retry-After'] && rec.status !== 503) {
    if (!rec.retry_after) fail(`${where}: no Retry-After header`);
  }
  if (rec.retry_after && !/^\d+$/.test(rec.retry_after)) fail(`${where}: Retry-After ${show(rec.retry_after)} is not seconds`);
  const content = response.content;
  if (!content) {
    if (rec.body != null && rec.body !== '') fail(`${where}: a body where none is documented: ${show(rec.body)}`);
    continue;
  }
  const types = Object.keys(content);
  const media =
    types.find((t) => mediaBase(t) === mediaBase(rec.content_type) && mediaParams(t) === mediaParams(rec.content_type)) ??
    types.find((t) => mediaBase(t) === mediaBase(rec.content_type) && mediaBase(t) === 'application/json');
  if (!media) {
    fail(`${where}: content type ${show(rec.content_type)} is not documented (${types.join(', ')})`);
    continue;
  }
  const schema = content[media].schema;
  if (schema) {
    const v = compile(schema);
    if (!v(rec.body)) fail(`${where}: body does not match: ${errorsOf(v)} in ${show(rec.body)}`);
  }
}

// ------------------------------------------------------------------ coverage
const missing = [];
for (const type of serverFrames.keys()) if (!seenServer.has(type)) missing.push(`server frame ${type}`);
for (const [type] of requests) {
  if (!sentValid.has(type)) missing.push(`a valid ${type} request`);
  if (!seenOk.has(type)) missing.push(`ok reply to ${type}`);
}
for (const code of errorCodes) if (!seenCodes.has(code)) missing.push(`socket error code ${code}`);
for (const code of closeCodes) if (!seenClose.has(code)) missing.push(`close code ${code}`);
const httpCodes = openapi.components.schemas.ErrorCode.enum;
for (const code of httpCodes) {
  if (!seenHttpCodes.has(code) && !errorCodes.includes(code)) missing.push(`HTTP error code ${code}`);
}
const skipped = capture.skipped ?? {};
const exempted = [];
for (const [p, item] of Object.entries(openapi.paths)) {
  for (const [method, op] of Object.entries(item)) {
    if (!op || typeof op !== 'object' || !op.responses) continue;
    for (const status of Object.keys(op.responses)) {
      const key = `${method.toUpperCase()} ${p} ${status}`;
      if (seenHttp.has(key)) continue;
      const why = httpExempt(key, op) ?? Object.entries(skipped).find(([what]) => key.startsWith(`${what} `))?.[1];
      if (why) {
        exempted.push(`${key}: ${why}`);
        continue;
      }
      missing.push(`HTTP ${key}`);
    }
  }
}

const http = capture.http?.length ?? 0;
console.log(
  `checked ${frames} WebSocket records and ${http} HTTP responses against ${path.relative(root, asyncapiPath)} and ${path.relative(root, openapiPath)}`,
);
console.log(
  `seen: ${seenServer.size} server frame types, ok replies to ${seenOk.size}/${requests.size} request kinds, ` +
    `${seenCodes.size} socket error codes, close codes ${[...seenClose].sort().join(' ')}, ${seenHttp.size} HTTP operation statuses`,
);
for (const line of exempted) console.log(`not covered: ${line}`);
if (missing.length) fail(`never seen (coverage):\n    ${missing.join('\n    ')}`);
if (failures.length) {
  console.log(`FAIL: ${failures.length} problem(s)`);
  for (const f of failures) console.log(`  - ${f}`);
  process.exit(1);
}
console.log('ok: every captured frame and response matches the specs, and the capture covers them');
