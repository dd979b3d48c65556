// The browser runtime's service worker: the push handler that wakes it. A pushed
// reTHINK message is a Connection invitation (show "Incoming call from <caller>"), or
// the caller's delete of the Connection (the ringing notification becomes "Missed call",
// same tag). Accept or Decline on the notification answer with a reTHINK response (200
// or 486) through the push element, since a sleeping runtime has no message connection;
// the answer carries the runtime's credential (the page keeps it in the Cache API for
// the worker). Accepting a call with media (`value.media`) opens the call page
// (call.html), which answers itself once it holds the message connection, so the
// caller's offer comes on its inbox rather than by push.
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

// The call page a click on a media invitation opens (it reads the invitation from the cache).
function callPage(tag) {
  return 'call.html?connection=' + encodeURIComponent(tag) +
    (REPORT ? '&report=' + encodeURIComponent(REPORT) : '');
}

function wantsMedia(message) {
  return Boolean(message && message.body && message.body.value && message.body.value.media === true);
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
        const profile = (message.body.identity && message.body.identity.userProfile) || {};
        const address = profile.username || message.body.source || message.from;
        shown = {title: 'Incoming call from ' + callerName(message), body: address + (verified ? ' (verified caller)' : ''), tag};
        if (wantsMedia(message)) {
          const cache = await caches.open('tidings-hyperty');
          await cache.put(callPage(tag), new Response(JSON.stringify(message)));
        }
        await self.registration.showNotification(shown.title, {
          body: shown.body, tag, requireInteraction: true, data: message,
          actions: [{action: 'accept', title: 'Accept'}, {action: 'decline', title: 'Decline'}],
        });
      } else if (message.type === 'delete') {
        await (await caches.open('tidings-hyperty')).delete(callPage(tag));
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

// What a click on a notification does: a missed call nothing, Decline a 486, a call
// with media opens the call page (which answers), any other call a 200 and the page.
async function onNotificationClick(notification, action) {
  const message = notification.data;
  notification.close();
  if (!message) return null;  // a missed call: nothing to answer
  if (action === 'decline') return answer(message, 486, 'Busy Here');
  if (wantsMedia(message)) return self.clients.openWindow(callPage(notification.tag));
  return Promise.all([answer(message, 200, 'OK'), self.clients.openWindow('./')]);
}

self.addEventListener('notificationclick', event => {
  event.waitUntil(onNotificationClick(event.notification, event.action));
});
