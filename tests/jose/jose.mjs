// Keys and tokens as an identity provider makes them, with the jose library:
// genq's identity-provider tests (tests/tests/e2e/jwks.rs) drive it.
//   node jose.mjs keys              -> {"private": {kid: jwk}, "public": {kid: jwk}}
//                                      for rsa-1, rsa-2 (RS256), ec-1 (ES256), ed-1 (EdDSA)
//   node jose.mjs sign < requests   -> one token per request, in order, as a JSON list
// A request: {"jwk": private jwk, "alg": "RS256", "kid": "rsa-1", "claims": {...}}
// or, for algorithm confusion, {"hmac_with_pem_of": public jwk, "alg": "HS256",
// "kid": "rsa-1", "claims": {...}}: HS256 keyed with the public key's PEM text.
import { exportJWK, exportSPKI, generateKeyPair, importJWK, SignJWT } from 'jose';

const KEYS = [
  ['rsa-1', 'RS256'],
  ['rsa-2', 'RS256'],
  ['ec-1', 'ES256'],
  ['ed-1', 'EdDSA'],
];

async function keys() {
  const out = { private: {}, public: {} };
  for (const [kid, alg] of KEYS) {
    const { publicKey, privateKey } = await generateKeyPair(alg, { extractable: true, crv: alg === 'EdDSA' ? 'Ed25519' : undefined });
    out.private[kid] = { ...(await exportJWK(privateKey)), kid, alg };
    out.public[kid] = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  }
  return out;
}

async function sign(request) {
  let key;
  if (request.hmac_with_pem_of) {
    const pub = await importJWK(request.hmac_with_pem_of, request.hmac_with_pem_of.alg);
    key = new TextEncoder().encode(await exportSPKI(pub));
  } else {
    key = await importJWK(request.jwk, request.alg);
  }
  const header = { alg: request.alg, typ: 'JWT' };
  if (request.kid) header.kid = request.kid;
  return new SignJWT(request.claims).setProtectedHeader(header).sign(key);
}

async function stdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

const command = process.argv[2];
if (command === 'keys') {
  process.stdout.write(JSON.stringify(await keys()));
} else if (command === 'sign') {
  const requests = JSON.parse(await stdin());
  const tokens = [];
  for (const r of requests) tokens.push(await sign(r));
  process.stdout.write(JSON.stringify(tokens));
} else {
  process.stderr.write('usage: node jose.mjs keys | sign < requests.json\n');
  process.exit(2);
}
