// The browser runtime's service worker: the push handler that wakes it. A pushed
// reTHINK message is a Connection invitation (show "Incoming call" with the caller's
// name), or the caller's delete of the Connection (the ringing notification becomes
// "Missed call", same tag). Accept or
// Decline on the notification answer with a reTHINK response (200 or 486) through the
// push element, since a sleeping runtime has no message connection; the answer carries
// the runtime's credential (the page keeps it in the Cache API for the worker).
'use strict';

const REPORT = new URL(self.location).searchParams.get('report');

function report(kind, body) {
  if (!REPORT) return Promise.resolve();
  return fetch(REPORT.replace(/\/$/, '') + '/report/' + kind, {
    method: 'POST', mode: 'no-cors', body: JSON.stringify(body),
  }).catch(err => console.log('[tidings-hyperty-sw] report failed: ' + err));
}

// connection://d/id/subscription -> connection://d/id (the notification's tag)
function objectUrl(url) {
  const match = /^([a-z][a-z0-9+.-]*:\/\/[^/]+\/[^/]+)/.exec(url);
  return match ? match[1] : url;
}

function isInvitation(message) {
  const schema = (message.body && message.body.schema) || '';
  return message.type === 'create' && (schema.endsWith('/Connection') || message.from.startsWith('connection://'));
}

function callerName(message) {
  const profile = (message.body && message.body.identity && message.body.identity.userProfile) || {};
  return profile.name || profile.username || (message.body && message.body.source) || 'Someone';
}

async function answer(message, code, description) {
  const response = {
    id: message.id, type: 'response', from: message.to, to: message.from,
    body: {code, description},
  };
  // The runtime's credential, put in the cache by the page when it registered.
  const cached = await (await caches.open('tidings-hyperty')).match('credential');
  const headers = {'Content-Type': 'application/json'};
  if (cached) headers.Authorization = 'Bearer ' + (await cached.text());
  await fetch('messages', {method: 'POST', headers, body: JSON.stringify(response)});
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', event => event.waitUntil(self.clients.claim()));

self.addEventListener('push', event => {
  event.waitUntil((async () => {
    const text = event.data ? event.data.text() : null;
    let message = null;
    let shown = null;
    let error = null;
    try {
      message = JSON.parse(text);
      const tag = objectUrl(message.from);
      if (isInvitation(message)) {
        // `verified` is set by the push element only, after it checked the assertion.
        const verified = message.body.identity && message.body.identity.verified === true;
        shown = {title: 'Incoming call', body: callerName(message) + ' is calling' + (verified ? ' (verified caller)' : ''), tag};
        await self.registration.showNotification(shown.title, {
          body: shown.body, tag, requireInteraction: true, data: message,
          actions: [{action: 'accept', title: 'Accept'}, {action: 'decline', title: 'Decline'}],
        });
      } else if (message.type === 'delete') {
        // The caller hung up before the answer: the ringing notification becomes a
        // missed call (same tag, so it replaces it rather than adding one).
        const ringing = await self.registration.getNotifications({tag});
        const invitation = ringing.length ? ringing[0].data : null;
        if (invitation && isInvitation(invitation)) {
          shown = {title: 'Missed call', body: callerName(invitation) + ' called', tag};
          await self.registration.showNotification(shown.title, {body: shown.body, tag, data: null});
        } else {
          for (const notification of ringing) notification.close();
          // close() takes effect asynchronously: wait (briefly) until it is gone.
          for (let i = 0; i < 40 && (await self.registration.getNotifications({tag})).length; i++) {
            await new Promise(resolve => setTimeout(resolve, 25));
          }
        }
      }
    } catch (err) {
      error = String(err);
    }
    const notifications = (await self.registration.getNotifications())
      .map(n => ({title: n.title, body: n.body, tag: n.tag}));
    console.log('[tidings-hyperty-sw] push ' + (message && message.type) + ', showing ' + notifications.length);
    await report('push', {text, type: message && message.type, shown, notifications, notificationError: error});
  })());
});

self.addEventListener('notificationclick', event => {
  const message = event.notification.data;
  event.notification.close();
  if (event.action === 'decline') {
    event.waitUntil(answer(message, 486, 'Busy Here'));
  } else {
    event.waitUntil(Promise.all([answer(message, 200, 'OK'), self.clients.openWindow('./')]));
  }
});
