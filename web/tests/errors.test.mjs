// Every API failure in words: src/api.ts's describe(), compiled with esbuild
// and run in Node on the failures the API answers (status, body, headers
// exactly as the API sends them; see api/src/error.rs).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import * as esbuild from 'esbuild';

let dir;
let api;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'genq-web-'));
  const out = join(dir, 'api.mjs');
  await esbuild.build({
    entryPoints: [new URL('../src/api.ts', import.meta.url).pathname],
    bundle: true,
    format: 'esm',
    platform: 'neutral',
    outfile: out,
    tsconfig: new URL('../tsconfig.json', import.meta.url).pathname,
    logLevel: 'warning',
  });
  api = await import(pathToFileURL(out).href);
});
after(() => rmSync(dir, { recursive: true, force: true }));

const failure = (status, error, headers = {}) => ({
  error,
  response: new Response(null, { status, headers }),
});

test('402 says what a video needs and what the user has', () => {
  const p = api.describe(
    failure(402, {
      error: { code: 'insufficient_credits', message: 'A video needs 10 credits; you have 8.', required: 10, available: 8, job_id: 'j' },
    }),
  );
  assert.equal(p.text, 'Not enough credits: a video needs 10 credits; you have 8.');
  assert.equal(p.jobId, 'j');
});

test('429 gives the wait from Retry-After, in seconds or as a date', () => {
  const body = { error: { code: 'rate_limited', message: 'Too many submissions; try again in 12 s.' } };
  assert.equal(api.describe(failure(429, body, { 'Retry-After': '12' })).text, 'Too many requests: try again in 12 seconds.');
  assert.equal(api.describe(failure(429, body, { 'Retry-After': '1' })).retryAfterSecs, 1);
  const now = Date.parse('2026-11-27T10:00:00Z');
  assert.equal(api.retryAfterSecs('Fri, 27 Nov 2026 10:00:30 GMT', now), 30);
  assert.equal(api.describe(failure(429, body)).text, 'Too many requests: wait a moment, then try again.');
});

test('400 names the field with the API message', () => {
  const p = api.describe(
    failure(400, { error: { code: 'invalid_request', message: 'The prompt is empty.', field: 'prompt' } }),
  );
  assert.deepEqual([p.text, p.field], ['The prompt is empty.', 'prompt']);
});

test('409, 5xx, 401 and a network failure each have a sentence', () => {
  assert.match(api.describe(failure(409, { error: { code: 'idempotency_conflict', message: 'x' } })).text, /already used/);
  assert.equal(
    api.describe(failure(409, { error: { code: 'invalid_state', message: 'The job is succeeded and can no longer be canceled.' } })).text,
    'The job is succeeded and can no longer be canceled.',
  );
  assert.equal(
    api.describe(failure(503, { error: { code: 'unavailable', message: 'the service is temporarily unavailable' } })).text,
    'genq is busy or briefly unavailable (HTTP 503). Try again in a moment.',
  );
  assert.equal(api.describe(failure(500, 'not json')).text, 'genq had a problem (HTTP 500). Try again in a moment.');
  assert.match(api.describe(failure(401, { error: { code: 'unauthorized', message: 'The token has expired.' } })).text, /^You are signed out \(The token has expired\.\)/);
  assert.equal(api.describe({ error: new TypeError('Failed to fetch') }).text, 'Could not reach genq: check your connection, then try again.');
});
