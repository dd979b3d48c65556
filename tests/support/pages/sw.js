// The test service worker: reports every push (decrypted text, raw bytes, and the
// notifications shown) and every pushsubscriptionchange back to the page server.
'use strict';

function post(path, body) {
  return fetch(path, {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(body),
  }).catch(err => console.log('[tidings-sw] report to ' + path + ' failed: ' + err));
}

function bytesToBase64Url(buffer) {
  const bytes = new Uint8Array(buffer);
  let raw = '';
  for (let i = 0; i < bytes.length; i++) raw += String.fromCharCode(bytes[i]);
  return btoa(raw).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', event => event.waitUntil(self.clients.claim()));

self.addEventListener('push', event => {
  const text = event.data ? event.data.text() : null;
  const data = event.data ? bytesToBase64Url(event.data.arrayBuffer()) : null;
  console.log('[tidings-sw] push: ' + text);
  event.waitUntil((async () => {
    let notificationError = null;
    let notifications = [];
    try {
      // A visible notification keeps Firefox's quota for silent pushes untouched.
      await self.registration.showNotification('Tidings test', {body: text || '', tag: 'tidings-' + Date.now()});
      notifications = (await self.registration.getNotifications()).map(n => ({title: n.title, body: n.body}));
    } catch (err) {
      notificationError = String(err);
    }
    await post('/report/push', {text, data, notifications, notificationError});
  })());
});

self.addEventListener('pushsubscriptionchange', event => {
  const json = sub => (sub ? sub.toJSON() : null);
  console.log('[tidings-sw] pushsubscriptionchange');
  event.waitUntil(post('/report/subscriptionchange', {
    oldSubscription: json(event.oldSubscription),
    newSubscription: json(event.newSubscription),
  }));
});
