// The call page: the browser runtime answers a call with media. The service worker opens
// it when the ringing notification is clicked (`call.html?connection=<object URL>`), with
// the invitation left in the Cache API. The page takes the camera and microphone, holds
// the runtime's message connection (the inbox long-poll, so the caller's offer and
// candidates come here and not by push), answers 200 with `value.media`, then answers
// the caller's offer. Signals are reTHINK `update`s of the Connection object, as the
// Python Connector sends them (tidings/hyperty/connector.py): from our hyperty, with
// the object in `body.resource`. Hang-up is a `delete` either way; then the page leaves
// the inbox (the runtime sleeps again: the next message is pushed).
// `?report=URL` sends what happened to URL/report/call (the tests read it there).
'use strict';

const params = new URLSearchParams(location.search);
const REPORT = params.get('report');
const CONNECTION = params.get('connection');
// A page served from a loopback origin is a one-machine call: ICE stays on 127.0.0.1.
// The browser may gather on other interfaces too: those candidates are not sent, and the
// peer's candidates are used only once we have a loopback one (else the browser would
// check them from another interface and the peer would answer to that address).
const LOOPBACK = ['127.0.0.1', 'localhost', '[::1]'].includes(location.hostname);

let nextId = Math.floor(Math.random() * 1e6) + 1e6;
let invitation = null;
let me = null;
let peer = null;
let pc = null;
let stream = null;
let ended = false;
let offerAnswered = false;
const polling = new AbortController();
const candidates = {gathered: [], sent: []};
const peerCandidates = [];  // held until we have a loopback candidate (LOOPBACK)

function log(text) {
  console.log('[tidings-call] ' + text);
  document.getElementById('log').textContent += text + '\n';
}

function report(body) {
  if (!REPORT) return Promise.resolve();
  return fetch(REPORT.replace(/\/$/, '') + '/report/call', {
    method: 'POST', mode: 'no-cors', body: JSON.stringify({connection: CONNECTION, ...body}),
  }).catch(err => console.log('[tidings-call] report failed: ' + err));
}

async function element(method, path, body, signal) {
  const headers = {Authorization: 'Bearer ' + localStorage.getItem('tidings-credential')};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, {method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body)});
  return {status: response.status, document: await response.json()};
}

async function post(message) {
  const {status, document} = await element('POST', 'messages', message);
  if (status >= 300 || (document.body && document.body.code >= 300)) {
    throw new Error(message.type + ' refused: ' + status + ' ' + JSON.stringify(document));
  }
  return document;
}

// connection://d/id/changes -> connection://d/id
function objectUrl(url) {
  const match = /^([a-z][a-z0-9+.-]*:\/\/[^/]+\/[^/]+)/.exec(url);
  return match ? match[1] : url;
}

function candidateAddress(candidate) {
  return candidate.candidate.split(' ')[4];  // "candidate:F C proto prio ADDRESS port typ ..."
}

// Signals go out in order, the description before any candidate.
let sending = Promise.resolve();
let described = false;
const early = [];

function signal(attribute, value) {
  sending = sending.then(() => post({
    id: nextId++, type: 'update', from: me, to: peer,
    body: {source: me, resource: CONNECTION, attribute, value},
  })).catch(err => log('signal lost: ' + err));
  return sending;
}

function sendCandidate(candidate) {
  if (!described) { early.push(candidate); return; }
  if (candidate === null) {
    if (LOOPBACK && !candidates.sent.length) {
      // Firefox gathers host candidates only on the default route's interfaces in a
      // content process (media.peerconnection.ice.loopback notwithstanding): no call.
      end('no loopback ICE candidate', true);
      return;
    }
    signal('iceCandidates', null);
    return;
  }
  if (!candidate.candidate) return;  // one m-line's end of candidates
  candidates.gathered.push(candidate.candidate);
  if (LOOPBACK && candidateAddress(candidate) !== '127.0.0.1') return;
  candidates.sent.push(candidate.candidate);
  signal('iceCandidates', {candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex});
  peerCandidates.splice(0).forEach(addPeerCandidate);
}

function addPeerCandidate(value) {
  if (LOOPBACK && !candidates.sent.length) { peerCandidates.push(value); return; }
  pc.addIceCandidate(value).catch(err => log('candidate refused: ' + err));
}

async function onMessage(message) {
  const fromPeer = objectUrl(message.from) === CONNECTION;
  if (message.type === 'update' && fromPeer) {
    const {attribute, value} = message.body;
    if (attribute === 'connectionDescription' && value && value.type === 'offer') {
      await pc.setRemoteDescription(value);
      await pc.setLocalDescription(await pc.createAnswer());
      await signal('connectionDescription', {type: 'answer', sdp: pc.localDescription.sdp});
      described = offerAnswered = true;
      early.splice(0).forEach(sendCandidate);
      log('answered the offer');
    } else if (attribute === 'iceCandidates' && value) {
      addPeerCandidate(value);
    }
  } else if (message.type === 'delete' && fromPeer) {
    await end('hung up by the peer', false);
  } else {
    log('ignored ' + message.type + ' from ' + message.from);
  }
}

async function pollInbox() {
  const query = 'inbox?timeout=25&address=' + encodeURIComponent(me);
  while (!ended) {
    let answer;
    try {
      answer = await element('GET', query, undefined, polling.signal);
    } catch (err) {
      if (ended) return;
      throw err;
    }
    if (answer.status !== 200) throw new Error('inbox answered ' + answer.status);
    for (const message of answer.document.messages) await onMessage(message);
  }
}

async function waitLive() {
  for (let i = 0; i < 250; i++) {
    const response = await fetch('status?address=' + encodeURIComponent(me));
    if ((await response.json()).status === 'live') return;
    await new Promise(resolve => setTimeout(resolve, 20));
  }
  throw new Error('the push element does not see ' + me + ' as live');
}

// Frames decoded per kind (getStats inbound-rtp), the ICE pair in use.
async function mediaStats() {
  const stats = {video: {framesDecoded: 0, packetsReceived: 0}, audio: {packetsReceived: 0}, pair: null};
  if (!pc) return stats;
  const all = await pc.getStats();
  all.forEach(entry => {
    if (entry.type === 'inbound-rtp' && stats[entry.kind]) {
      stats[entry.kind].packetsReceived += entry.packetsReceived || 0;
      if (entry.kind === 'video') stats.video.framesDecoded += entry.framesDecoded || 0;
    }
    if (entry.type === 'candidate-pair' && entry.state === 'succeeded' && entry.nominated) {
      const local = all.get(entry.localCandidateId);
      const remote = all.get(entry.remoteCandidateId);
      stats.pair = {local: local && local.address, remote: remote && remote.address};
    }
  });
  return stats;
}

async function watchMedia() {
  while (!ended) {
    const stats = await mediaStats();
    if (stats.video.framesDecoded > 0 && stats.audio.packetsReceived > 0) {
      log('media: ' + stats.video.framesDecoded + ' video frames decoded');
      await report({event: 'media', stats, candidates});
      return;
    }
    await new Promise(resolve => setTimeout(resolve, 100));
  }
}

async function end(reason, notify) {
  if (ended) return;
  ended = true;
  const stats = await mediaStats();
  if (notify) {
    await post({id: nextId++, type: 'delete', from: me, to: peer, body: {source: me, resource: CONNECTION}})
      .catch(err => log('hang-up lost: ' + err));
  }
  if (pc) pc.close();
  if (stream) stream.getTracks().forEach(track => track.stop());
  polling.abort();
  await element('DELETE', 'inbox?address=' + encodeURIComponent(me)).catch(() => null);
  log('call ended: ' + reason);
  document.getElementById('hangup').disabled = true;
  await report({event: 'ended', reason, stats, candidates, offerAnswered});
}

async function main() {
  const key = location.href.split('#')[0];
  const cache = await caches.open('tidings-hyperty');
  const stored = await cache.match(key);
  if (!stored) throw new Error('no ringing call ' + CONNECTION);
  invitation = await stored.json();
  await cache.delete(key);
  me = invitation.to;
  peer = invitation.body.source;
  document.getElementById('title').textContent = 'Call with ' + (((invitation.body.identity || {}).userProfile || {}).name || peer);

  stream = await navigator.mediaDevices.getUserMedia({audio: true, video: true});
  document.getElementById('local').srcObject = stream;
  const config = await (await fetch('config')).json();
  pc = new RTCPeerConnection({iceServers: config.iceServers || []});
  stream.getTracks().forEach(track => pc.addTrack(track, stream));
  pc.ontrack = event => {
    const remote = document.getElementById('remote');
    remote.srcObject = event.streams[0] || new MediaStream([event.track]);
  };
  pc.onicecandidate = event => sendCandidate(event.candidate);
  pc.oniceconnectionstatechange = () => {
    log('ICE ' + pc.iceConnectionState);
    if (pc.iceConnectionState === 'failed') end('ICE failed', true);
  };

  // The message connection first, then the answer: the offer must come on the inbox.
  pollInbox().catch(err => { log('inbox: ' + err); end('inbox failed', true); });
  await waitLive();
  await post({
    id: invitation.id, type: 'response', from: me, to: invitation.from,
    body: {code: 200, description: 'OK', value: {status: 'accepted', media: true}},
  });
  log('accepted');
  await report({event: 'answered', hyperty: me, peer});
  const button = document.getElementById('hangup');
  button.disabled = false;
  button.onclick = () => end('hung up', true);
  watchMedia();
}

main().catch(err => {
  log('error: ' + err);
  report({event: 'error', message: String(err)});
});
