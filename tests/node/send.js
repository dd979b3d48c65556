#!/usr/bin/env node
// Sends one Web Push message with the npm `web-push` library and prints one JSON
// line describing the push service's answer.
//
// Input: a JSON object on stdin (or as the first argument):
//   subscription     {endpoint, keys: {p256dh, auth}}            (required)
//   payload          string, or payloadBase64 for bytes          (optional)
//   vapid            {subject, publicKey, privateKey}            (optional)
//   ttl, urgency, topic, contentEncoding ("aes128gcm"|"aesgcm"), headers, timeout
// Output: {"ok": bool, "statusCode": N, "headers": {...}, "body": "...",
//          "request": {"method", "endpoint", "headers", "bodyLength"}}
//   or    {"ok": false, "error": "...", ...} when no answer came back.
//
// web-push sends with https.request only. For an http:// endpoint this script
// lets the library build the request (encryption, VAPID header, TTL, Urgency,
// Topic) with generateRequestDetails() and sends exactly that with http.request.
'use strict';

const http = require('http');
const path = require('path');
const webPush = require(path.join(__dirname, 'node_modules', 'web-push'));

function readInput() {
  if (process.argv[2]) return Promise.resolve(process.argv[2]);
  return new Promise((resolve, reject) => {
    let text = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', chunk => { text += chunk; });
    process.stdin.on('end', () => resolve(text));
    process.stdin.on('error', reject);
  });
}

function options(input) {
  const out = {};
  if (input.vapid) out.vapidDetails = input.vapid;
  if (input.ttl !== undefined && input.ttl !== null) out.TTL = input.ttl;
  if (input.urgency) out.urgency = input.urgency;
  if (input.topic) out.topic = input.topic;
  if (input.contentEncoding) out.contentEncoding = input.contentEncoding;
  if (input.headers) out.headers = input.headers;
  if (input.timeout) out.timeout = input.timeout;
  return out;
}

function sendPlainHttp(details) {
  return new Promise((resolve, reject) => {
    const url = new URL(details.endpoint);
    const request = http.request({
      hostname: url.hostname,
      port: url.port,
      path: url.pathname + url.search,
      method: details.method,
      headers: details.headers,
      timeout: details.timeout || 30000,
    }, response => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', chunk => { body += chunk; });
      response.on('end', () => resolve({statusCode: response.statusCode, headers: response.headers, body}));
    });
    request.on('timeout', () => request.destroy(new Error('Socket timeout')));
    request.on('error', reject);
    if (details.body) request.write(details.body);
    request.end();
  });
}

async function main() {
  const input = JSON.parse(await readInput());
  const payload = input.payloadBase64 !== undefined && input.payloadBase64 !== null
    ? Buffer.from(input.payloadBase64, 'base64')
    : (input.payload === undefined ? null : input.payload);
  const opts = options(input);
  const details = webPush.generateRequestDetails(input.subscription, payload, opts);
  const request = {
    method: details.method,
    endpoint: details.endpoint,
    headers: details.headers,
    bodyLength: details.body ? details.body.length : 0,
  };
  let answer;
  try {
    if (details.endpoint.startsWith('http:')) {
      answer = await sendPlainHttp(details);
    } else {
      answer = await webPush.sendNotification(input.subscription, payload, opts);
    }
  } catch (err) {
    if (err instanceof webPush.WebPushError) {
      answer = {statusCode: err.statusCode, headers: err.headers, body: err.body};
    } else {
      return {ok: false, error: String(err && err.message || err), request};
    }
  }
  const ok = answer.statusCode >= 200 && answer.statusCode <= 299;
  return {ok, statusCode: answer.statusCode, headers: answer.headers, body: answer.body, request};
}

main().then(
  result => { console.log(JSON.stringify(result)); },
  err => {
    console.log(JSON.stringify({ok: false, error: String(err && err.message || err)}));
  },
);
