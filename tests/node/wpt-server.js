#!/usr/bin/env node
// Runs the web-push-testing push service bound to 127.0.0.1 only (its own CLI
// listens on every interface and daemonises). Usage: node wpt-server.js [PORT]
// With PORT 0 (the default) the OS picks a free port. Prints one JSON line
// {"ready": true, "port": N, "url": "http://127.0.0.1:N/"} once listening, and
// exits on SIGTERM or SIGINT.
'use strict';

const path = require('path');

const pkg = path.join(__dirname, 'node_modules', 'web-push-testing', 'src');
const WebPushTestingServer = require(path.join(pkg, 'server.js'));
const {PushApiModel} = require(path.join(pkg, 'PushApiModel.js'));

const HOST = '127.0.0.1';
const requested = Number(process.argv[2] || 0);
if (!Number.isInteger(requested) || requested < 0 || requested > 65535) {
  console.error('invalid port: ' + process.argv[2]);
  process.exit(2);
}

const model = new PushApiModel();
const server = new WebPushTestingServer(model, requested);
// startServer() would call listen(port) on all interfaces: do its two steps here.
server.setRequestHandlers();
const listener = server._app.listen(requested, HOST, () => {
  const {port} = listener.address();
  // Endpoints handed to subscribers: the address we really listen on (the
  // package says 'localhost', which may resolve to ::1 first).
  model.notifyUrl = 'http://' + HOST + ':' + port + '/notify/';
  console.log(JSON.stringify({ready: true, port, url: 'http://' + HOST + ':' + port + '/'}));
});
listener.on('error', err => {
  console.error('web-push-testing server failed: ' + err.message);
  process.exit(1);
});

function stop(signal) {
  listener.close(() => process.exit(0));
  listener.closeAllConnections();
  setTimeout(() => process.exit(0), 1000).unref();
  console.error('stopping on ' + signal);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
