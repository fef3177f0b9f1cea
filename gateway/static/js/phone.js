// The web phone served at /: plain JS on top of the client library only.

import { WebRtcInstance, LOGIN_STATES, CALL_STATES, DISC_REASON } from "/client/webrtc-client.js";
import { Ringer } from "/js/ringer.js";

const $ = (id) => document.getElementById(id);
const LOGIN_KEY = "webphone.login"; // localStorage: the form without the password
const SESSION_KEY = "webphone.session"; // sessionStorage: identifier for a restore after reload
const ENDED_CALL_LINGER = 15000; // ended calls stay visible this long (or until dismissed)
const KEYS = [
  ["1", ""], ["2", "ABC"], ["3", "DEF"],
  ["4", "GHI"], ["5", "JKL"], ["6", "MNO"],
  ["7", "PQRS"], ["8", "TUV"], ["9", "WXYZ"],
  ["*", ""], ["0", "+"], ["#", ""],
];

const LOGIN_TEXT = {
  [LOGIN_STATES.CONNECTING]: "Connecting…",
  [LOGIN_STATES.SUCCESS]: "Logged in",
  [LOGIN_STATES.SERVER_ACCESS]: "Cannot access the server: check the address, the certificate and your credentials",
  [LOGIN_STATES.DIAL_STRING_MISSING]: "The gateway needs your number to log you in",
  [LOGIN_STATES.NO_DIAL_STRING_FOR_USER]: "No number is assigned to this user",
  [LOGIN_STATES.CONNECTION_LOST]: "Connection lost, reconnecting…",
  [LOGIN_STATES.LOGGED_OUT_IMPLICIT]: "Logged out by the gateway",
  [LOGIN_STATES.LOGGED_OUT_EXPLICIT]: "Logged out",
  [LOGIN_STATES.LOGIN_RESTORE_FAILED]: "Your session could not be restored; please log in again",
};

const STATE_TEXT = {
  [CALL_STATES.IDLE]: "Preparing…",
  [CALL_STATES.DIALING]: "Dialing…",
  [CALL_STATES.OFFERING]: "Incoming call",
  [CALL_STATES.RINGING]: "Ringing…",
  [CALL_STATES.CONNECTED]: "Connected",
  [CALL_STATES.HOLDING]: "On hold by the other party",
  [CALL_STATES.HELD]: "On hold",
  [CALL_STATES.DISCONNECTED]: "Ended",
};

/** The disconnect reason in words, from the point of view of this call. */
function reasonText(call, wasConnected) {
  const incoming = call.isIncoming();
  switch (call.getDisconnectReason()) {
    case DISC_REASON.SUCCESS:
      if (wasConnected) return "Call ended by the other party";
      return incoming ? "Missed call: the caller hung up" : "Call ended";
    case DISC_REASON.DIALSTRING: return "Number unknown or invalid";
    case DISC_REASON.PERMISSION: return "Not allowed to call this number";
    case DISC_REASON.CONGESTION: return "Network busy, try again later";
    case DISC_REASON.EQUIPMENT: return "The other side could not be reached (equipment failure)";
    case DISC_REASON.BUSY: return incoming ? "Declined as busy" : "Busy";
    case DISC_REASON.REDIRECTED: return "Call transferred";
    case DISC_REASON.NOTRESPONDING: return "No answer";
    case DISC_REASON.NOTSELECTED: return "Answered on another device";
    case DISC_REASON.REJECTED: return incoming ? "You declined the call" : "Call declined";
    case DISC_REASON.USERTERMINATED: return wasConnected ? "You hung up" : "Cancelled";
    case DISC_REASON.MEDIA: return "Audio could not be connected (media failure)";
    case DISC_REASON.ERROR: return "Call failed";
    default: return "Call ended";
  }
}

// Tests and curious developers can follow what happened.
const events = (window.phoneEvents = []);
function record(type, detail = {}) {
  events.push({ t: Math.round(performance.now()), type, ...detail });
}

const ringer = new Ringer();
const entries = new Map(); // WebRtcCall -> {li, connectedAt, wasConnected, timer}
let loggedIn = false;
let restoring = false;

const rtc = new WebRtcInstance(onLoginStatus, onIncomingCall, "webrtc-gateway web phone");
window.phone = { rtc, events };
if (new URLSearchParams(location.search).has("debug")) rtc.controlLogging(true);

// ------------------------------------------------------------------------- login

function readSaved(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) || "null");
  } catch {
    return null;
  }
}

function writeSaved(storage, key, value) {
  try {
    if (value === null) storage.removeItem(key);
    else storage.setItem(key, JSON.stringify(value));
  } catch {
    // storage unavailable: the phone works, it just forgets
  }
}

function fillLoginForm() {
  const saved = readSaved(localStorage, LOGIN_KEY) ?? {};
  $("server").value = saved.server ?? location.host;
  $("secure").checked = saved.secure ?? location.protocol === "https:";
  $("number").value = saved.number ?? "";
  $("username").value = saved.username ?? "";
}

function onLoginSubmit(event) {
  event.preventDefault();
  ringer.prime(); // a user gesture: lets the ringing tone play later
  const server = $("server").value.trim() || location.host;
  const secure = $("secure").checked;
  const number = $("number").value.trim();
  const username = $("username").value.trim();
  const password = $("password").value;
  writeSaved(localStorage, LOGIN_KEY, { server, secure, number, username });
  $("login-error").textContent = "";
  $("login").disabled = true;
  record("login", { number, username });
  rtc.login(server, secure, false, username, password, number);
}

function onLoginStatus(state) {
  record("login-state", { state });
  const status = $("status");
  status.dataset.state = state;
  let text = LOGIN_TEXT[state] ?? state;
  if (state === LOGIN_STATES.SUCCESS) {
    const name = rtc.getLocalDisplayName();
    const number = rtc.getLocalDialString();
    text = number ? `Logged in as ${name ? `${name} (${number})` : number}` : "Logged in (outgoing calls only)";
    loggedIn = true;
    restoring = false;
    $("password").value = "";
    const saved = readSaved(localStorage, LOGIN_KEY) ?? {};
    writeSaved(sessionStorage, SESSION_KEY, {
      identifier: rtc.getLoginIdentifier(),
      server: saved.server ?? location.host,
      secure: saved.secure ?? location.protocol === "https:",
    });
  } else if (state === LOGIN_STATES.CONNECTING || state === LOGIN_STATES.CONNECTION_LOST) {
    // Still (re)connecting: keep the phone on screen if it was.
  } else {
    loggedIn = false;
    restoring = false;
    writeSaved(sessionStorage, SESSION_KEY, null);
    ringer.stop();
    hideBanner();
    if (state !== LOGIN_STATES.LOGGED_OUT_EXPLICIT) $("login-error").textContent = text;
  }
  $("status-text").textContent = text;
  const showPhone = loggedIn || ((state === LOGIN_STATES.CONNECTING || state === LOGIN_STATES.CONNECTION_LOST) && (entries.size > 0 || !$("phone-panel").hidden));
  $("phone-panel").hidden = !showPhone;
  $("login-panel").hidden = showPhone || restoring;
  $("logout").hidden = !showPhone;
  $("login").disabled = state === LOGIN_STATES.CONNECTING && !showPhone;
  $("call-button").disabled = !loggedIn;
  if (state === LOGIN_STATES.SUCCESS && !$("phone-panel").contains(document.activeElement)) {
    $("dial-number").focus();
  }
}

// ------------------------------------------------------------------------- calls

function label(call) {
  const name = call.getRemoteName();
  const number = call.getRemoteNumber();
  return name && name !== number ? `${name} (${number})` : number || "unknown";
}

function notice(text) {
  $("notice").textContent = text;
  record("notice", { text });
}

function connectedCalls(except) {
  return [...entries.keys()].filter((c) => c !== except && c.getState() === CALL_STATES.CONNECTED);
}

/** One call talks at a time: hold the others before a new one connects. */
function holdOthers(except) {
  for (const other of connectedCalls(except)) other.hold();
}

function useVideo(call) {
  call.setVideoElements($("local-video"), $("remote-video"));
  $("video-stage").hidden = false;
}

function placeCall() {
  const number = $("dial-number").value.trim();
  if (!number) {
    notice("Enter a number to call.");
    $("dial-number").focus();
    return;
  }
  if (!loggedIn) return;
  ringer.prime();
  holdOthers(null);
  const call = rtc.createOutgoingCall();
  const entry = addCall(call);
  if ($("video-mode").checked) useVideo(call);
  call.setAudioElement(entry.li.querySelector("audio"));
  record("dial", { number });
  call.dial(number);
  $("dial-number").value = "";
}

function onIncomingCall(call) {
  record("incoming", { number: call.getRemoteNumber(), name: call.getRemoteName() });
  const entry = addCall(call);
  call.setAudioElement(entry.li.querySelector("audio"));
  call.accept(); // the caller hears ringing
  showBanner(call);
  ringer.start();
}

function onRestoreCall(call) {
  record("restored", { number: call.getRemoteNumber(), state: call.getState() });
  const entry = addCall(call);
  call.setAudioElement(entry.li.querySelector("audio"));
}

function answer(call, video) {
  ringer.prime();
  holdOthers(call);
  if (video || $("video-mode").checked) useVideo(call);
  record("answer", { number: call.getRemoteNumber() });
  call.answer();
}

function addCall(call) {
  const li = $("call-template").content.firstElementChild.cloneNode(true);
  const id = `call-${call.identifier}`;
  li.id = id;
  li.setAttribute("aria-labelledby", `${id}-who`);
  li.querySelector(".call-who").id = `${id}-who`;
  const entry = { li, connectedAt: 0, wasConnected: false, timer: null };
  entries.set(call, entry);
  const q = (sel) => li.querySelector(sel);
  q(".call-actions").setAttribute("aria-label", "Call controls");
  q(".transfer-label").setAttribute("for", `${id}-transfer`);
  q(".act-transfer-target").id = `${id}-transfer`;
  q(".act-answer").addEventListener("click", () => answer(call, false));
  q(".act-decline").addEventListener("click", () => call.decline());
  q(".act-hold").addEventListener("click", () => call.hold());
  q(".act-retrieve").addEventListener("click", () => {
    holdOthers(call);
    call.retrieve();
  });
  q(".act-mute").addEventListener("click", () => {
    call.setMuted(!call.isMuted());
    render(call);
  });
  // Video during an audio call: the library renegotiates with the camera added.
  q(".act-video").addEventListener("click", () => {
    record("add-video", { number: call.getRemoteNumber() });
    useVideo(call);
    render(call);
  });
  q(".act-keypad").addEventListener("click", () => {
    const pad = q(".dtmf");
    pad.hidden = !pad.hidden;
    q(".act-keypad").setAttribute("aria-expanded", String(!pad.hidden));
    if (!pad.hidden) pad.querySelector("button").focus();
  });
  q(".act-transfer").addEventListener("click", () => {
    const target = [...entries.keys()].find((c) => c.identifier === q(".act-transfer-target").value);
    if (!target) return;
    record("transfer", { from: call.getRemoteNumber(), to: target.getRemoteNumber() });
    call.transfer(target);
  });
  q(".act-hangup").addEventListener("click", () => call.disconnect());
  q(".act-dismiss").addEventListener("click", () => removeCall(call));
  buildKeypad(q(".dtmf"), (digit) => sendDtmf(call, digit), "DTMF");
  q(".dtmf").setAttribute("aria-label", "Send tones");
  call.setCallStateHandler(onCallState);
  call.setMediaStateHandler((c) => {
    record("media", { video: c.getMediaVideoActive() });
    if (c.getMediaVideoActive()) {
      // The far end turned its video on: show it; our camera only on the Video button.
      if (!c.hasVideoElements()) c.setVideoElements(null, $("remote-video"));
      $("video-stage").hidden = false;
    } else if (![...entries.keys()].some((other) => other.getMediaVideoActive())) {
      // ... or off: no frozen last picture.
      $("video-stage").hidden = true;
    }
    render(c);
  });
  call.setRequestFailedHandler((c, request) => {
    if (request === "restartIce") {
      record("request-failed", { request }); // the library tries again by itself
      return;
    }
    notice(`${request[0].toUpperCase()}${request.slice(1)} did not work for the call with ${label(c)}: the gateway refused it.`);
    record("request-failed", { request });
    if (request === "renegotiate") {
      // Video refused: the call stays audio-only and the Video button comes back.
      c.setVideoElements(null, null);
      if (![...entries.keys()].some((other) => other.getMediaVideoActive())) $("video-stage").hidden = true;
      render(c);
    }
  });
  $("calls").prepend(li);
  render(call);
  return entry;
}

function sendDtmf(call, digit) {
  if (call.sendDigit(digit)) {
    const line = entries.get(call)?.li.querySelector(".dtmf-sent");
    if (line) line.textContent = `Sent: ${(line.dataset.digits = (line.dataset.digits ?? "") + digit)}`;
    record("dtmf", { digit });
  }
}

function onCallState(call, state) {
  const entry = entries.get(call);
  record("call-state", { number: call.getRemoteNumber(), state, reason: call.getDisconnectReason() });
  if (!entry) return;
  if (state === CALL_STATES.CONNECTED && !entry.connectedAt) {
    entry.connectedAt = Date.now();
    entry.wasConnected = true;
  }
  if (state !== CALL_STATES.OFFERING && state !== CALL_STATES.RINGING) {
    if (bannerCall === call) hideBanner();
  } else if (call.isIncoming() && !bannerCall) {
    showBanner(call);
  }
  if (!bannerCall) ringer.stop();
  if (state === CALL_STATES.DISCONNECTED) {
    const text = reasonText(call, entry.wasConnected);
    notice(`Call with ${label(call)}: ${text}.`);
    entry.timer = setTimeout(() => removeCall(call), ENDED_CALL_LINGER);
    if (![...entries.keys()].some((c) => c !== call && c.getMediaVideoActive())) $("video-stage").hidden = true;
  }
  render(call);
  renderAll();
}

function removeCall(call) {
  const entry = entries.get(call);
  if (!entry) return;
  clearTimeout(entry.timer);
  entry.li.remove();
  entries.delete(call);
  renderAll();
}

function formatDuration(ms) {
  const s = Math.floor(ms / 1000);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(h ? 2 : 1, "0");
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

function render(call) {
  const entry = entries.get(call);
  if (!entry) return;
  const { li } = entry;
  const q = (sel) => li.querySelector(sel);
  const state = call.getState();
  const ended = state === CALL_STATES.DISCONNECTED;
  const offered = call.isIncoming() && (state === CALL_STATES.OFFERING || state === CALL_STATES.RINGING);
  const live = [CALL_STATES.CONNECTED, CALL_STATES.HELD, CALL_STATES.HOLDING].includes(state);
  li.dataset.state = state;
  li.dataset.reason = call.getDisconnectReason() ?? "";
  q(".call-direction").textContent = call.isIncoming() ? "↘" : "↗";
  q(".call-direction").title = call.isIncoming() ? "Incoming" : "Outgoing";
  const name = call.getRemoteName();
  const number = call.getRemoteNumber();
  q(".call-remote-name").textContent = name && name !== number ? name : number || "Unknown";
  q(".call-remote-number").textContent = name && name !== number ? number : "";
  let text = STATE_TEXT[state] ?? state;
  if (ended) text = reasonText(call, entry.wasConnected);
  else if (state === CALL_STATES.RINGING && call.isIncoming()) text = "Incoming call, ringing";
  if (call.getMediaVideoActive() && !ended) text += " · video";
  if (call.isMuted() && !ended) text += " · muted";
  q(".call-state").textContent = text;
  q(".act-answer").hidden = !offered;
  q(".act-decline").hidden = !offered;
  q(".act-hold").hidden = !(state === CALL_STATES.CONNECTED || state === CALL_STATES.HOLDING);
  q(".act-retrieve").hidden = state !== CALL_STATES.HELD;
  q(".act-mute").hidden = !live;
  q(".act-mute").setAttribute("aria-pressed", String(call.isMuted()));
  q(".act-mute").textContent = call.isMuted() ? "Unmute" : "Mute";
  q(".act-keypad").hidden = state !== CALL_STATES.CONNECTED;
  q(".act-video").hidden = state !== CALL_STATES.CONNECTED || call.hasVideoElements();
  if (state !== CALL_STATES.CONNECTED) q(".dtmf").hidden = true;
  q(".act-hangup").hidden = ended || offered;
  q(".act-hangup").textContent = live ? "Hang up" : "Cancel";
  q(".act-dismiss").hidden = !ended;
  // Transfer: to another live call of this phone.
  const others = [...entries.keys()].filter(
    (c) => c !== call && [CALL_STATES.CONNECTED, CALL_STATES.HELD, CALL_STATES.HOLDING].includes(c.getState()),
  );
  const select = q(".act-transfer-target");
  const previous = select.value;
  select.replaceChildren(...others.map((c) => new Option(`to ${label(c)}`, c.identifier)));
  if (others.some((c) => c.identifier === previous)) select.value = previous;
  q(".transfer-group").hidden = !live || others.length === 0;
  q(".call-duration").textContent = entry.connectedAt && !ended ? formatDuration(Date.now() - entry.connectedAt) : "";
  for (const button of li.querySelectorAll(".call-actions button")) {
    button.setAttribute("aria-label", `${button.textContent} – call with ${label(call)}`);
  }
}

function renderAll() {
  for (const call of entries.keys()) render(call);
  $("no-calls").hidden = entries.size > 0;
}

// ------------------------------------------------------------------------- banner

let bannerCall = null;

function showBanner(call) {
  bannerCall = call;
  $("incoming-caller").textContent = label(call);
  $("incoming").hidden = false;
  $("answer").focus();
}

function hideBanner() {
  bannerCall = null;
  $("incoming").hidden = true;
  // Another call still offered? Show it.
  const next = [...entries.keys()].find(
    (c) => c.isIncoming() && [CALL_STATES.OFFERING, CALL_STATES.RINGING].includes(c.getState()),
  );
  if (next) showBanner(next);
  else ringer.stop();
}

// ------------------------------------------------------------------------- keypads

function buildKeypad(container, onKey, what) {
  for (const [digit, letters] of KEYS) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "key";
    button.dataset.key = digit;
    button.setAttribute("aria-label", `${what} ${digit === "*" ? "star" : digit === "#" ? "hash" : digit}`);
    button.innerHTML = `<span class="digit"></span><span class="letters"></span>`;
    button.querySelector(".digit").textContent = digit;
    button.querySelector(".letters").textContent = letters;
    button.addEventListener("click", () => onKey(digit));
    container.append(button);
  }
}

function typeDigit(digit) {
  const input = $("dial-number");
  input.value += digit;
  record("key", { digit });
}

function onKeyDown(event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const inField = target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement;
  if ($("phone-panel").hidden) return;
  // Digits typed while a call card has the focus go to that call as DTMF.
  const card = target instanceof Element ? target.closest(".call") : null;
  const cardCall = card ? [...entries.keys()].find((c) => entries.get(c).li === card) : null;
  if (/^[0-9*#]$/.test(event.key) && !inField) {
    event.preventDefault();
    if (cardCall && cardCall.getState() === CALL_STATES.CONNECTED) sendDtmf(cardCall, event.key);
    else typeDigit(event.key);
    return;
  }
  if (event.key === "+" && !inField) {
    event.preventDefault();
    typeDigit("+");
    return;
  }
  if (event.key === "Backspace" && !inField) {
    event.preventDefault();
    $("dial-number").value = $("dial-number").value.slice(0, -1);
    return;
  }
  if (event.key === "Enter" && (target === $("dial-number") || (!inField && !(target instanceof HTMLButtonElement)))) {
    event.preventDefault();
    placeCall();
  }
}

// ------------------------------------------------------------------------- start

function start() {
  fillLoginForm();
  buildKeypad($("dialpad"), typeDigit, "Dial");
  $("login-form").addEventListener("submit", onLoginSubmit);
  $("logout").addEventListener("click", () => {
    record("logout");
    rtc.logout();
  });
  $("call-button").addEventListener("click", placeCall);
  $("backspace").addEventListener("click", () => {
    $("dial-number").value = $("dial-number").value.slice(0, -1);
  });
  $("answer").addEventListener("click", () => bannerCall && answer(bannerCall, false));
  $("answer-video").addEventListener("click", () => bannerCall && answer(bannerCall, true));
  $("decline").addEventListener("click", () => bannerCall && bannerCall.decline());
  document.addEventListener("keydown", onKeyDown);
  setInterval(() => {
    for (const [call, entry] of entries) {
      if (entry.connectedAt && call.getState() !== CALL_STATES.DISCONNECTED) {
        entry.li.querySelector(".call-duration").textContent = formatDuration(Date.now() - entry.connectedAt);
      }
    }
  }, 1000);
  renderAll();

  // Opened from a push notification (firebase-messaging-sw.js): wake the login up.
  const params = new URLSearchParams(location.search);
  const wakeupToken = params.get("wakeupToken");
  const wakeupIdentifier = params.get("identifier");
  const session = readSaved(sessionStorage, SESSION_KEY);
  if (wakeupToken && wakeupIdentifier) {
    history.replaceState(null, "", location.pathname);
    const saved = readSaved(localStorage, LOGIN_KEY) ?? {};
    restoring = true;
    $("login-panel").hidden = true;
    record("wakeup", { identifier: wakeupIdentifier });
    rtc.tryRestoreLogin(saved.server ?? location.host, saved.secure ?? location.protocol === "https:",
      true, wakeupIdentifier, onRestoreCall, wakeupToken);
  } else if (session && session.identifier) {
    // A reload during a session: take the login (and its calls) over.
    restoring = true;
    $("login-panel").hidden = true;
    record("restore", { identifier: session.identifier });
    if (!rtc.tryRestoreLogin(session.server, session.secure, false, session.identifier, onRestoreCall)) {
      restoring = false;
      $("login-panel").hidden = false;
      writeSaved(sessionStorage, SESSION_KEY, null);
    }
  }
  document.body.dataset.ready = "1";
}

start();
