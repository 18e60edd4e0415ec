// Validates docs/asyncapi.yaml and docs/openapi.yaml with the official parsers:
// @asyncapi/parser (no diagnostic of error severity) and @seriousme/openapi-schema-validator.
// Exits non-zero, printing the diagnostics, if either is invalid.
//
//   node validate-specs.mjs [asyncapi.yaml] [openapi.yaml]

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';
import { Validator } from '@seriousme/openapi-schema-validator';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const asyncapiPath = path.resolve(process.argv[2] ?? path.join(root, 'docs/asyncapi.yaml'));
const openapiPath = path.resolve(process.argv[3] ?? path.join(root, 'docs/openapi.yaml'));

const severity = ['error', 'warning', 'information', 'hint'];
let failed = false;

// AsyncAPI: parse (which validates against the AsyncAPI 3 schema and runs the parser's
// rules); any error-severity diagnostic fails. Warnings are printed, not failed.
{
  const parser = new Parser();
  const text = fs.readFileSync(asyncapiPath, 'utf8');
  const { document, diagnostics } = await parser.parse(text, { source: asyncapiPath });
  const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
  for (const d of diagnostics) {
    if (d.severity <= DiagnosticSeverity.Warning) {
      const where = d.path?.length ? ` at ${d.path.join('.')}` : '';
      const line = d.range ? ` (line ${d.range.start.line + 1})` : '';
      console.log(`asyncapi ${severity[d.severity]} [${d.code}]${where}${line}: ${d.message}`);
    }
  }
  if (errors.length > 0 || !document) {
    console.log(`FAIL ${path.relative(root, asyncapiPath)}: ${errors.length} error(s)`);
    failed = true;
  } else {
    const version = document.version();
    const messages = document.allMessages().length;
    const operations = document.allOperations().length;
    console.log(
      `ok   ${path.relative(root, asyncapiPath)}: AsyncAPI ${version}, ${messages} messages, ${operations} operations`,
    );
  }
}

// OpenAPI: the validator checks the document against the OpenAPI 3.1 JSON Schema; then
// every $ref must resolve.
{
  const validator = new Validator();
  const result = await validator.validate(openapiPath);
  if (!result.valid) {
    console.log(`FAIL ${path.relative(root, openapiPath)}:`);
    console.log(JSON.stringify(result.errors, null, 2));
    failed = true;
  } else {
    try {
      validator.resolveRefs();
      const spec = validator.specification;
      const operations = Object.values(spec.paths ?? {}).flatMap((p) =>
        Object.keys(p).filter((k) => ['get', 'put', 'post', 'delete', 'patch', 'head', 'options'].includes(k)),
      ).length;
      console.log(
        `ok   ${path.relative(root, openapiPath)}: OpenAPI ${validator.version}, ${operations} operations`,
      );
    } catch (e) {
      console.log(`FAIL ${path.relative(root, openapiPath)}: ${e.message}`);
      failed = true;
    }
  }
}

process.exit(failed ? 1 : 0);
