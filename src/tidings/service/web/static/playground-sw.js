// The playground's service worker: shows each push as a notification and hands its
// text to every open playground page.
'use strict';

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', event => event.waitUntil(self.clients.claim()));

async function tellPages(message) {
  const pages = await self.clients.matchAll({type: 'window', includeUncontrolled: true});
  for (const page of pages) page.postMessage(message);
}

self.addEventListener('push', event => {
  let text = null;
  if (event.data) {
    try { text = event.data.text(); } catch (err) { text = '(undecodable payload)'; }
  }
  const received = Date.now();
  event.waitUntil(Promise.all([
    self.registration.showNotification('Tidings playground', {
      body: text === null ? '(push without payload)' : text,
      tag: 'tidings-' + received,
      icon: '/static/favicon.svg',
    }),
    tellPages({kind: 'push', text, received}),
  ]));
});

self.addEventListener('pushsubscriptionchange', event => {
  event.waitUntil(tellPages({kind: 'subscriptionchange'}));
});

self.addEventListener('notificationclick', event => {
  event.notification.close();
  event.waitUntil((async () => {
    const pages = await self.clients.matchAll({type: 'window', includeUncontrolled: true});
    if (pages.length) return pages[0].focus();
    return self.clients.openWindow('/playground/');
  })());
});
