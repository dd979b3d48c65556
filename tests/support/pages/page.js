// The test page: registers the service worker, then runs the commands the test
// queues on the page server (subscribe, unsubscribe, get) and reports each result.
'use strict';

const POLL_MS = 100;

function log(msg) {
  console.log('[tidings-page] ' + msg);
  document.getElementById('log').textContent += msg + '\n';
}

async function post(path, body) {
  try {
    await fetch(path, {
      method: 'POST',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify(body),
    });
  } catch (err) {
    console.log('[tidings-page] report to ' + path + ' failed: ' + err);
  }
}

function reportError(id, where, err) {
  const message = (err && (err.name ? err.name + ': ' : '') + err.message) || String(err);
  log('error in ' + where + ': ' + message);
  return post('/report/error', {id, where, message});
}

function base64UrlToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/')
    + '='.repeat((4 - (text.length % 4)) % 4);
  const raw = atob(padded);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(what + ' did not settle in ' + ms + ' ms')), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// One subscribe attempt can hang for good when it races the browser's push
// connection at start-up; retry with a fresh call until the deadline.
async function subscribe(registration, command) {
  const deadline = Date.now() + command.timeout_ms;
  const options = {userVisibleOnly: true};
  if (command.key) options.applicationServerKey = base64UrlToBytes(command.key);
  let attempt = 0;
  let lastError = null;
  while (Date.now() < deadline) {
    attempt += 1;
    const left = deadline - Date.now();
    try {
      const sub = await withTimeout(
        registration.pushManager.subscribe(options),
        Math.min(command.attempt_ms, left),
        'pushManager.subscribe attempt ' + attempt,
      );
      log('subscribed after ' + attempt + ' attempt(s): ' + sub.endpoint);
      return {subscription: sub.toJSON(), attempts: attempt};
    } catch (err) {
      lastError = err;
      log('subscribe attempt ' + attempt + ' failed: ' + err);
      // A real refusal (bad key, permission) will not get better by retrying.
      if (err && err.name && err.name !== 'Error' && err.name !== 'AbortError') throw err;
      await new Promise(resolve => setTimeout(resolve, 250));
    }
  }
  throw lastError || new Error('subscribe timed out');
}

async function run(registration, command) {
  const {id, op} = command;
  try {
    if (op === 'subscribe') {
      const result = await subscribe(registration, command);
      await post('/report/subscription', {id, ...result});
    } else if (op === 'get') {
      const sub = await registration.pushManager.getSubscription();
      await post('/report/subscription', {id, subscription: sub ? sub.toJSON() : null});
    } else if (op === 'unsubscribe') {
      const sub = await registration.pushManager.getSubscription();
      const done = sub ? await sub.unsubscribe() : false;
      await post('/report/unsubscribed', {id, unsubscribed: done});
    } else if (op === 'close') {
      // With dom.allow_scripts_to_close_windows, closing the only window quits
      // Firefox the normal way, so it saves its prefs (the push uaid) first.
      // Shown notifications are windows of their own (no desktop notification
      // daemon when headless): close them first, or this is not the last window.
      const shown = await registration.getNotifications();
      shown.forEach(n => n.close());
      await post('/report/closing', {id, notifications: shown.length});
      window.close();
    } else if (op === 'permission') {
      const state = await registration.pushManager.permissionState({userVisibleOnly: true});
      await post('/report/permission', {id, state});
    } else {
      throw new Error('unknown command ' + op);
    }
  } catch (err) {
    await reportError(id, op, err);
  }
}

async function main() {
  let registration;
  try {
    registration = await navigator.serviceWorker.register('/sw.js', {scope: '/'});
    await navigator.serviceWorker.ready;
    log('service worker ready');
    await post('/report/ready', {scope: registration.scope});
  } catch (err) {
    await reportError(null, 'register', err);
    return;
  }
  // Push API commands run one after another; 'close' jumps the queue.
  let chain = Promise.resolve();
  for (;;) {
    let command = null;
    try {
      const response = await fetch('/command', {cache: 'no-store'});
      if (response.status === 200) command = await response.json();
    } catch (err) {
      // The page server is gone (test over); keep quiet and retry.
    }
    if (command) {
      log('command ' + command.id + ': ' + command.op);
      if (command.op === 'close') {
        run(registration, command);
      } else {
        chain = chain.then(() => run(registration, command));
      }
    } else {
      await new Promise(resolve => setTimeout(resolve, POLL_MS));
    }
  }
}

main();
