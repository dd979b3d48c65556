'use strict';
// Interop helper for tests/webpush/test_interop_node.py: runs the npm web-push package
// (and the http_ece module it uses) on a JSON list of operations read from stdin and
// writes one JSON result per operation to stdout. Binary values travel as base64url.

const crypto = require('crypto');
const webpush = require('web-push');
const ece = require('http_ece');

function b64(buf) {
  return Buffer.from(buf).toString('base64url');
}

function ecdhFromPrivate(privateKeyB64) {
  const ecdh = crypto.createECDH('prime256v1');
  ecdh.setPrivateKey(Buffer.from(privateKeyB64, 'base64url'));
  return ecdh;
}

function publicKeyObject(rawB64) {
  const raw = Buffer.from(rawB64, 'base64url');
  if (raw.length !== 65 || raw[0] !== 4) {
    throw new Error('not an uncompressed P-256 point');
  }
  return crypto.createPublicKey({
    key: { kty: 'EC', crv: 'P-256', x: b64(raw.subarray(1, 33)), y: b64(raw.subarray(33, 65)) },
    format: 'jwk',
  });
}

const operations = {
  // web-push's own encrypt(): what a node application server sends.
  encrypt(op) {
    const out = webpush.encrypt(op.p256dh, op.auth, Buffer.from(op.payload, 'base64url'),
      op.encoding);
    return {
      body: b64(out.cipherText),
      salt: out.salt,
      localPublicKey: b64(out.localPublicKey),
    };
  },
  // Decrypt a body made by Tidings, as a node user agent would.
  decrypt(op) {
    const params = {
      version: op.encoding,
      privateKey: ecdhFromPrivate(op.privateKey),
      authSecret: op.auth,
    };
    if (op.encoding === 'aesgcm') {
      params.dh = op.dh;
      params.salt = op.salt;
    }
    return { plaintext: b64(ece.decrypt(Buffer.from(op.body, 'base64url'), params)) };
  },
  generateVapidKeys() {
    return webpush.generateVAPIDKeys();
  },
  vapidHeaders(op) {
    return webpush.getVapidHeaders(op.audience, op.subject, op.publicKey, op.privateKey,
      op.encoding, op.expiration);
  },
  // Verify a JWT's ES256 signature with node's crypto (raw r||s, as JWS has it).
  verifyJwt(op) {
    const [header, claims, signature] = op.token.split('.');
    const ok = crypto.verify('sha256', Buffer.from(header + '.' + claims),
      { key: publicKeyObject(op.publicKey), dsaEncoding: 'ieee-p1363' },
      Buffer.from(signature, 'base64url'));
    return {
      valid: ok,
      header: JSON.parse(Buffer.from(header, 'base64url').toString('utf8')),
      claims: JSON.parse(Buffer.from(claims, 'base64url').toString('utf8')),
    };
  },
};

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const results = JSON.parse(input).map((op) => {
    try {
      return { ok: true, result: operations[op.op](op) };
    } catch (err) {
      return { ok: false, error: String(err && err.message ? err.message : err) };
    }
  });
  process.stdout.write(JSON.stringify(results));
});
