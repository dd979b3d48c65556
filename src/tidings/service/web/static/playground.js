// The playground: register the service worker, subscribe with the demo VAPID key,
// send test messages through POST /demo/send, list what the worker receives.
//
// Links can run the first steps: ?subscribe=1 subscribes on load, and &send=TEXT
// then sends TEXT once (the tests and the README screenshots use this).
'use strict';

const $ = id => document.getElementById(id);
const params = new URLSearchParams(location.search);
let registration = null;
let demo = null;          // {publicKey, keyFile, subject, origin}
let subscription = null;  // PushSubscription
let receivedCount = 0;

function status(id, text, cls) {
  const node = $(id);
  node.textContent = text;
  node.className = 'status' + (cls ? ' ' + cls : '');
}

function mark(state) {
  document.body.dataset.state = state;
}

function base64UrlToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), c => c.charCodeAt(0));
}

function bytesToBase64Url(buffer) {
  const bytes = new Uint8Array(buffer);
  let raw = '';
  for (const b of bytes) raw += String.fromCharCode(b);
  return btoa(raw).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(what + ' took over ' + ms / 1000 + ' s')), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function shellQuote(text) {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
}

function showCommands() {
  if (!subscription) {
    for (const id of ['cmd-tidings', 'cmd-python', 'cmd-curl']) $(id).textContent = 'Subscribe first.';
    return;
  }
  const key = demo.keyFile;
  $('cmd-tidings').textContent = [
    '# sub.json holds the subscription above',
    'tidings send --key ' + shellQuote(key) + ' --subject ' + shellQuote(demo.subject) + ' \\',
    '  --subscription sub.json --ttl 60 "Hello from tidings send"',
  ].join('\n');
  $('cmd-python').textContent = [
    'import json',
    'from pywebpush import webpush',
    '',
    'webpush(',
    '    subscription_info=json.load(open("sub.json")),',
    '    data="Hello from pywebpush",',
    '    vapid_private_key=' + JSON.stringify(key) + ',',
    '    vapid_claims={"sub": ' + JSON.stringify(demo.subject) + '},',
    '    ttl=60,',
    ')',
  ].join('\n');
  $('cmd-curl').textContent = 'Press "Build curl command" to get one for the message below.';
}

function showSubscription() {
  const json = subscription ? JSON.stringify(subscription.toJSON(), null, 2) : '';
  $('sub-json').textContent = json;
  $('sub-box').hidden = !subscription;
  $('subscribe').disabled = Boolean(subscription);
  $('unsubscribe').disabled = !subscription;
  $('send').disabled = !subscription;
  $('build-curl').disabled = !subscription;
  status('sub-state', subscription ? 'Subscribed.' : 'Not subscribed.', subscription ? 'ok' : '');
  showCommands();
}

// Right after the browser starts, subscribe() can hang while its push connection is
// still being set up: retry with a fresh call for up to a minute.
async function subscribe() {
  $('subscribe').disabled = true;
  status('sub-state', 'Subscribing…', 'wait');
  const options = {userVisibleOnly: true, applicationServerKey: base64UrlToBytes(demo.publicKey)};
  const deadline = Date.now() + 60000;
  let lastError = null;
  for (let attempt = 1; Date.now() < deadline; attempt++) {
    try {
      subscription = await withTimeout(registration.pushManager.subscribe(options), 5000, 'subscribe');
      showSubscription();
      mark('subscribed');
      return true;
    } catch (err) {
      lastError = err;
      if (err.name === 'InvalidStateError') {
        // Subscribed earlier with another key (the demo key was replaced): start over.
        const old = await registration.pushManager.getSubscription();
        if (old) await old.unsubscribe();
      } else if (err.name === 'NotAllowedError') {
        break;
      }
      status('sub-state', 'Subscribing… (attempt ' + (attempt + 1) + ')', 'wait');
      await new Promise(resolve => setTimeout(resolve, 500));
    }
  }
  status('sub-state', 'Could not subscribe: ' + (lastError ? lastError.message : 'timed out'), 'bad');
  $('subscribe').disabled = false;
  mark('error');
  return false;
}

async function unsubscribe() {
  if (subscription) await subscription.unsubscribe();
  subscription = null;
  showSubscription();
  status('sub-state', 'Unsubscribed: the service now answers 410 to pushes for it.', 'ok');
  mark('unsubscribed');
}

function formValues() {
  const ttl = Number($('ttl').value || '0');
  return {
    subscription: subscription.toJSON(),
    payload: $('payload').value,
    ttl: Number.isFinite(ttl) ? Math.trunc(ttl) : 60,
    urgency: $('urgency').value || null,
    topic: $('topic').value.trim() || null,
  };
}

async function postDemo(document) {
  const response = await fetch('/demo/send', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(document),
  });
  const result = await response.json();
  if (!response.ok) throw new Error(result.message || 'HTTP ' + response.status);
  return result;
}

function describe(result) {
  const lines = [];
  const answer = result.response;
  lines.push('The push service answered: ' + answer.status + ' (' + answer.ms + ' ms)');
  for (const [name, value] of Object.entries(answer.headers)) lines.push(name + ': ' + value);
  if (answer.body !== undefined) lines.push('', JSON.stringify(answer.body, null, 2));
  lines.push('', 'The request: ' + result.request.method + ' ' + result.request.url);
  for (const [name, value] of Object.entries(result.request.headers)) lines.push(name + ': ' + value);
  return lines.join('\n');
}

async function send(event) {
  if (event) event.preventDefault();
  if (!subscription) return;
  $('send').disabled = true;
  status('send-state', 'Sending…', 'wait');
  try {
    const result = await postDemo(formValues());
    const ok = result.response.status < 300;
    status('send-state', ok ? 'Accepted: ' + result.response.status : 'Refused: ' + result.response.status,
      ok ? 'ok' : 'bad');
    $('send-result').textContent = describe(result);
    $('send-result').hidden = false;
    mark(ok ? 'sent' : 'refused');
  } catch (err) {
    status('send-state', 'Not sent: ' + err.message, 'bad');
    mark('error');
  } finally {
    $('send').disabled = !subscription;
  }
}

async function buildCurl() {
  try {
    const result = await postDemo({...formValues(), dry_run: true});
    $('cmd-curl').textContent = result.request.curl;
    const link = $('body-link');
    if (link.href) URL.revokeObjectURL(link.href);
    const body = result.request.body_base64;
    link.hidden = !body;
    if (body) {
      const bytes = Uint8Array.from(atob(body), c => c.charCodeAt(0));
      link.href = URL.createObjectURL(new Blob([bytes], {type: 'application/octet-stream'}));
    }
  } catch (err) {
    $('cmd-curl').textContent = 'Cannot build it: ' + err.message;
  }
}

function received(message) {
  if (message.kind === 'subscriptionchange') {
    status('sub-state', 'The browser replaced the subscription: subscribe again.', 'wait');
    return;
  }
  if (message.kind !== 'push') return;
  const none = $('none-yet');
  if (none) none.remove();
  const item = document.createElement('li');
  const time = document.createElement('time');
  time.dateTime = new Date(message.received).toISOString();
  time.textContent = new Date(message.received).toLocaleTimeString();
  item.append(time, message.text === null ? '(push without payload)' : message.text);
  $('received').prepend(item);
  receivedCount += 1;
  document.body.dataset.received = String(receivedCount);
  mark('received');
}

async function copy(event) {
  const button = event.currentTarget;
  const text = $(button.dataset.copy).textContent;
  const label = button.textContent;
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch (err) {
    button.textContent = 'Select the text and copy it';
  }
  setTimeout(() => { button.textContent = label; }, 1500);
}

async function main() {
  for (const button of document.querySelectorAll('button.copy')) button.addEventListener('click', copy);
  $('subscribe').addEventListener('click', subscribe);
  $('unsubscribe').addEventListener('click', unsubscribe);
  $('send-form').addEventListener('submit', send);
  $('build-curl').addEventListener('click', buildCurl);
  if (!('serviceWorker' in navigator) || !('PushManager' in window)) {
    status('sw-state', 'This browser has no Push API here (it needs https or localhost).', 'bad');
    mark('error');
    return;
  }
  navigator.serviceWorker.addEventListener('message', event => received(event.data || {}));
  navigator.serviceWorker.startMessages();
  try {
    const [reg, key] = await Promise.all([
      navigator.serviceWorker.register('/playground/sw.js', {scope: '/playground/'}),
      fetch('/api/demo/key').then(r => r.json()),
    ]);
    demo = key;
    await navigator.serviceWorker.ready;
    registration = reg;
    status('sw-state', 'Ready (scope ' + reg.scope + ').', 'ok');
  } catch (err) {
    status('sw-state', 'Cannot register the service worker: ' + err.message, 'bad');
    mark('error');
    return;
  }
  subscription = await registration.pushManager.getSubscription();
  const key = subscription && subscription.options.applicationServerKey;
  if (subscription && key && bytesToBase64Url(key) !== demo.publicKey) {
    await subscription.unsubscribe();  // made with an older demo key: useless now
    subscription = null;
  }
  showSubscription();
  mark('ready');
  if (params.get('subscribe') === '1' && !subscription) await subscribe();
  if (params.has('send') && subscription) {
    $('payload').value = params.get('send');
    await send();
  }
}

main();
