// The demo page: a browser Hyperty runtime. Registers the runtime at the push element
// (the first registration returns the runtime's credential, kept in localStorage and in
// the Cache API for the service worker), asks the domain for a hyperty address (reTHINK
// address allocation), subscribes for push with the element's VAPID key, registers the
// subscription and the hyperty, and can place a test call to itself. `?report=URL` sends what
// happened to URL/report/<kind> too (the tests read it there).
'use strict';

const params = new URLSearchParams(location.search);
const REPORT = params.get('report');

function log(text) {
  console.log('[tidings-hyperty] ' + text);
  document.getElementById('log').textContent += text + '\n';
}

function report(kind, body) {
  if (!REPORT) return Promise.resolve();
  // no-cors with a text body: a simple request any server can take.
  return fetch(REPORT.replace(/\/$/, '') + '/report/' + kind, {
    method: 'POST', mode: 'no-cors', body: JSON.stringify(body),
  }).catch(err => console.log('[tidings-hyperty] report failed: ' + err));
}

function base64UrlToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (text.length % 4)) % 4);
  const raw = atob(padded);
  return Uint8Array.from(raw, c => c.charCodeAt(0));
}

function remembered(name, make) {
  let value = localStorage.getItem(name);
  if (!value) { value = make(); localStorage.setItem(name, value); }
  return value;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(what + ' did not settle in ' + ms + ' ms')), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Right after start-up getSubscription and subscribe can hang while the browser's push connection opens:
// retry with a fresh call until it works.
async function subscribe(registration, key) {
  const options = {userVisibleOnly: true, applicationServerKey: base64UrlToBytes(key)};
  const deadline = Date.now() + 60000;
  for (let attempt = 1; ; attempt++) {
    try {
      const existing = await withTimeout(registration.pushManager.getSubscription(), 3000, 'getSubscription');
      if (existing) return existing;
      return await withTimeout(registration.pushManager.subscribe(options), 3000, 'subscribe');
    } catch (err) {
      if (Date.now() > deadline || (err.name && err.name !== 'Error' && err.name !== 'AbortError')) throw err;
      log('subscribe attempt ' + attempt + ' failed (' + err + '), retrying');
      await new Promise(resolve => setTimeout(resolve, 250));
    }
  }
}

let nextId = Math.floor(Math.random() * 1e6);

async function post(message) {
  const headers = {'Content-Type': 'application/json'};
  const credential = localStorage.getItem('tidings-credential');
  if (credential) headers.Authorization = 'Bearer ' + credential;
  const response = await fetch('messages', {method: 'POST', headers, body: JSON.stringify(message)});
  const answer = await response.json();
  if (!response.ok) throw new Error('the element answered ' + response.status + ': ' + answer.message);
  return answer;
}

// The first registration (no subscription yet) returns the runtime's credential, once.
async function credentialFor(runtime, config) {
  let credential = localStorage.getItem('tidings-credential');
  if (!credential) {
    const answer = await post({
      id: nextId++, type: 'create', from: runtime + '/registry', to: config.element,
      body: {value: {hyperties: []}},
    });
    if (answer.body.code !== 200) throw new Error('registration refused: ' + answer.body.description);
    credential = answer.body.value.credential;
    localStorage.setItem('tidings-credential', credential);
  }
  // The service worker answers calls with it: it cannot read localStorage.
  const cache = await caches.open('tidings-hyperty');
  await cache.put('credential', new Response(credential));
  return credential;
}

// reTHINK address allocation: the domain, not the runtime, makes hyperty addresses.
async function allocate(runtime, config) {
  const answer = await post({
    id: nextId++, type: 'create', from: runtime + '/address-allocation', to: config.allocation,
    body: {scheme: 'hyperty', value: {number: 1, allocationKey: runtime}},
  });
  if (answer.body.code !== 200) throw new Error('allocation refused: ' + answer.body.description);
  return answer.body.value.allocated[0];
}

async function main() {
  const config = await (await fetch('config')).json();
  document.getElementById('element').textContent = config.element;
  const runtime = remembered('tidings-runtime', () => 'hyperty-runtime://' + config.domain + '/' + crypto.randomUUID());
  await credentialFor(runtime, config);
  let hyperty = localStorage.getItem('tidings-hyperty');
  if (!hyperty) {
    hyperty = await allocate(runtime, config);
    localStorage.setItem('tidings-hyperty', hyperty);
  }
  document.getElementById('runtime').textContent = runtime;
  document.getElementById('hyperty').textContent = hyperty;

  const worker = 'sw.js' + (REPORT ? '?report=' + encodeURIComponent(REPORT) : '');
  await navigator.serviceWorker.register(worker, {scope: './'});
  const registration = await navigator.serviceWorker.ready;
  const subscription = await subscribe(registration, config.applicationServerKey);
  log('subscribed: ' + subscription.endpoint);

  const answer = await post({
    id: nextId++, type: 'create', from: runtime + '/registry', to: config.element,
    body: {value: {subscription: subscription.toJSON(), hyperties: [hyperty]}},
  });
  if (answer.body.code !== 200) throw new Error('registration refused: ' + answer.body.description);
  log('registered at ' + config.element);
  await report('subscription', {subscription: subscription.toJSON(), runtime, hyperty});

  const button = document.getElementById('call');
  button.disabled = false;
  button.onclick = () => setTimeout(() => post({
    id: nextId++, type: 'create',
    from: 'connection://' + config.domain + '/' + crypto.randomUUID() + '/subscription',
    to: hyperty,
    body: {
      source: hyperty,
      schema: 'hyperty-catalogue://catalogue.' + config.domain + '/.well-known/dataschema/Connection',
      identity: {idp: config.domain, userProfile: {name: 'Demo caller', username: 'demo@' + config.domain}},
      value: {name: 'call', status: 'created'},
    },
  }).then(a => log('invitation: ' + a.body.code + ' ' + a.body.description)), 3000);
}

main().catch(err => {
  log('error: ' + err);
  report('error', {id: null, where: 'hyperty page', message: String(err)});
});
