// Preload (node --require, or NODE_OPTIONS="--require .../plain-http.js") that makes
// `https.request` speak plain HTTP, so the `web-push send-notification` CLI, which
// always sends with https.request, can reach a test push service on an http://
// endpoint. Only for tests against 127.0.0.1; the CLI itself is left untouched.
'use strict';

const http = require('http');
const https = require('https');

https.request = function plainHttpRequest(...args) {
  const [first] = args;
  if (first && typeof first === 'object' && !(first instanceof URL)) {
    // An https.Agent cannot carry a plain connection; use http's default one.
    const {agent, ...rest} = first;
    args[0] = {...rest, protocol: 'http:'};
  }
  return http.request(...args);
};
