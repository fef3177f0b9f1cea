// webrtc-client.js: the JavaScript client library of webrtc-sip-gateway (json-v1).
//
// A dependency-free ES module for modern browsers, served by the gateway at
// /client/webrtc-client.js. The protocol is shared/protocols/json-v1.md; this file
// implements its §11 API. Types: webrtc-client.d.ts; reference: docs/client-api.md.
//
//   import { WebRtcInstance, LOGIN_STATES, CALL_STATES } from "/client/webrtc-client.js";
//   const rtc = new WebRtcInstance(onLoginStatus, onIncomingCall, "my app 1.0");
//   rtc.login(location.host, location.protocol === "https:", false, "alice", "secret", "1001");
//   const call = rtc.createOutgoingCall();
//   call.setCallStateHandler((c, state) => console.log(state));
//   call.setAudioElement(document.querySelector("audio"));
//   call.dial("1002");

export const VERSION = "0.1.0";

/** Login states reported to the login status handler. */
export const LOGIN_STATES = Object.freeze({
  CONNECTING: "CONNECTING",
  SUCCESS: "SUCCESS",
  SERVER_ACCESS: "SERVER_ACCESS",
  DIAL_STRING_MISSING: "DIAL_STRING_MISSING",
  NO_DIAL_STRING_FOR_USER: "NO_DIAL_STRING_FOR_USER",
  CONNECTION_LOST: "CONNECTION_LOST",
  LOGGED_OUT_IMPLICIT: "LOGGED_OUT_IMPLICIT",
  LOGGED_OUT_EXPLICIT: "LOGGED_OUT_EXPLICIT",
  LOGIN_RESTORE_FAILED: "LOGIN_RESTORE_FAILED",
});

/** Call states reported to a call's state handler. */
export const CALL_STATES = Object.freeze({
  IDLE: "IDLE",
  DIALING: "DIALING",
  OFFERING: "OFFERING",
  RINGING: "RINGING",
  CONNECTED: "CONNECTED",
  HOLDING: "HOLDING", // the far party holds the call
  HELD: "HELD", // this client holds the call
  DISCONNECTED: "DISCONNECTED",
});

/** Why a call ended (json-v1 §6). */
export const DISC_REASON = Object.freeze({
  SUCCESS: "SUCCESS",
  DIALSTRING: "DIALSTRING",
  PERMISSION: "PERMISSION",
  CONGESTION: "CONGESTION",
  EQUIPMENT: "EQUIPMENT",
  BUSY: "BUSY",
  REDIRECTED: "REDIRECTED",
  NOTRESPONDING: "NOTRESPONDING",
  NOTSELECTED: "NOTSELECTED",
  REJECTED: "REJECTED",
  USERTERMINATED: "USERTERMINATED",
  MEDIA: "MEDIA",
  ERROR: "ERROR",
});

const WIRE_REASONS = Object.freeze({
  success: DISC_REASON.SUCCESS,
  dialString: DISC_REASON.DIALSTRING,
  permission: DISC_REASON.PERMISSION,
  congestion: DISC_REASON.CONGESTION,
  equipment: DISC_REASON.EQUIPMENT,
  busy: DISC_REASON.BUSY,
  redirected: DISC_REASON.REDIRECTED,
  notResponding: DISC_REASON.NOTRESPONDING,
  notSelected: DISC_REASON.NOTSELECTED,
  rejected: DISC_REASON.REJECTED,
  userTerminated: DISC_REASON.USERTERMINATED,
  media: DISC_REASON.MEDIA,
  error: DISC_REASON.ERROR,
});

const WIRE_STATES = Object.freeze({
  ringing: CALL_STATES.RINGING,
  active: CALL_STATES.CONNECTED,
  holding: CALL_STATES.HOLDING,
  held: CALL_STATES.HELD,
});

/** Unknown reasons map to ERROR (json-v1 §6). */
function reasonFromWire(reason) {
  return Object.prototype.hasOwnProperty.call(WIRE_REASONS, reason)
    ? WIRE_REASONS[reason]
    : DISC_REASON.ERROR;
}

// Timing (milliseconds).
const ICE_GATHER_WAIT = 2500; // send the SDP after this even if gathering goes on (rest trickles)
const HEARTBEAT_INTERVAL = 25000; // register/status while logged in
const HEARTBEAT_TIMEOUT = 10000; // no message from the server for this long after a heartbeat: lost
const RESTORE_REPLY_WAIT = 6000; // a restore the server does not answer counts as failed
const RESTORE_SWEEP = 5000; // calls the server does not mention after a restore are gone
const RECONNECT_FIRST = 1000;
const RECONNECT_MAX = 30000;
const DISCONNECT_CONFIRM_WAIT = 5000; // disconnect() ends the call locally if the server is silent
const OFFER_WAIT = 15000; // answer() waits this long for the server's media offer
const ICE_RECOVER_WAIT = 3000; // ICE disconnected this long (no consent, e.g. a new network): restart it
// WebSocket close codes after which reconnecting would only repeat the failure.
const FATAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1008, 1009]);
const IDENTIFIER_RE = /^[A-Za-z0-9_-]{1,128}$/;
const DTMF_RE = /^[0-9A-Da-d*#,]$/;
const TOKEN_STORE_PREFIX = "webrtc-client:auth:";
const CALL_STORE_PREFIX = "webrtc-client:call:"; // direction of a call, for a restore after reload

function storeCall(identifier, value) {
  const store = sessionStore();
  if (!store) return;
  try {
    if (value) store.setItem(CALL_STORE_PREFIX + identifier, JSON.stringify(value));
    else store.removeItem(CALL_STORE_PREFIX + identifier);
  } catch {
    // storage full or disabled: a restored call then counts as incoming
  }
}

function storedCall(identifier) {
  try {
    return JSON.parse(sessionStore()?.getItem(CALL_STORE_PREFIX + identifier) || "null");
  } catch {
    return null;
  }
}

// ------------------------------------------------------------------------- diagnostics

let loggingEnabled = false;

function log(...args) {
  if (loggingEnabled) console.debug("[webrtc-client]", ...args);
}

function warn(...args) {
  if (loggingEnabled) console.warn("[webrtc-client]", ...args);
}

/** Call an application handler; its exceptions are reported, never propagated. */
function callHandler(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (err) {
    console.error("[webrtc-client] application handler threw:", err);
  }
}

/** Run a promise to completion; failures are logged (never an unhandled rejection). */
function detach(promise, what) {
  promise.catch((err) => warn(`${what} failed:`, err));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function newCallIdentifier() {
  if (globalThis.crypto && typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function sessionStore() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // storage disabled (privacy settings, sandboxed frame)
  }
}

function party(value) {
  if (typeof value === "string") return { dialString: value, displayName: "" };
  if (value && typeof value === "object") {
    return {
      dialString: typeof value.dialString === "string" ? value.dialString : "",
      displayName: typeof value.displayName === "string" ? value.displayName : "",
    };
  }
  return { dialString: "", displayName: "" };
}

// ------------------------------------------------------------------------- addresses

/**
 * The WebSocket URL and the token endpoint for `server` (`host[:port][/path]`, or a full
 * ws:, wss:, http: or https: URL used as is). Without a path the WebSocket path is /ws.
 */
export function serverUrls(server, secure) {
  let text = String(server ?? "").trim();
  if (!text) text = globalThis.location ? location.host : "localhost";
  let ws;
  if (/^(wss?|https?):\/\//i.test(text)) {
    ws = new URL(text);
    if (ws.protocol === "http:") ws.protocol = "ws:";
    if (ws.protocol === "https:") ws.protocol = "wss:";
  } else {
    ws = new URL(`${secure ? "wss" : "ws"}://${text}`);
    if (ws.pathname === "/" || ws.pathname === "") ws.pathname = "/ws";
  }
  const http = new URL(ws.href);
  http.protocol = ws.protocol === "wss:" ? "https:" : "http:";
  http.search = "";
  http.hash = "";
  // The token endpoint sits beside the WebSocket path: /ws -> /api/token, /gw/ws -> /gw/api/token.
  const prefix = http.pathname.endsWith("/ws") ? http.pathname.slice(0, -3) : "";
  http.pathname = `${prefix}/api/token`;
  return { ws, token: http };
}

// ------------------------------------------------------------------------- HTTP auth

function base64(text) {
  const bytes = new TextEncoder().encode(text);
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  let out = "";
  for (let i = 0; i < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | ((bytes[i + 1] ?? 0) << 8) | (bytes[i + 2] ?? 0);
    out += alphabet[(n >> 18) & 63] + alphabet[(n >> 12) & 63];
    out += i + 1 < bytes.length ? alphabet[(n >> 6) & 63] : "=";
    out += i + 2 < bytes.length ? alphabet[n & 63] : "=";
  }
  return out;
}

/** MD5 (RFC 1321) of a UTF-8 string as hex: only for HTTP Digest with algorithm=MD5. */
function md5Hex(text) {
  const data = new TextEncoder().encode(text);
  const words = new Uint32Array((((data.length + 8) >>> 6) + 1) * 16);
  for (let i = 0; i < data.length; i++) words[i >> 2] |= data[i] << ((i % 4) * 8);
  words[data.length >> 2] |= 0x80 << ((data.length % 4) * 8);
  const bits = data.length * 8;
  words[words.length - 2] = bits >>> 0;
  words[words.length - 1] = Math.floor(bits / 0x100000000);
  const S = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];
  const K = Array.from({ length: 64 }, (_, i) => Math.floor(Math.abs(Math.sin(i + 1)) * 2 ** 32) >>> 0);
  let a0 = 0x67452301, b0 = 0xefcdab89, c0 = 0x98badcfe, d0 = 0x10325476;
  for (let chunk = 0; chunk < words.length; chunk += 16) {
    let a = a0, b = b0, c = c0, d = d0;
    for (let i = 0; i < 64; i++) {
      let f, g;
      if (i < 16) { f = (b & c) | (~b & d); g = i; }
      else if (i < 32) { f = (d & b) | (~d & c); g = (5 * i + 1) % 16; }
      else if (i < 48) { f = b ^ c ^ d; g = (3 * i + 5) % 16; }
      else { f = c ^ (b | ~d); g = (7 * i) % 16; }
      const s = S[(i >> 4) * 4 + (i % 4)];
      const sum = (a + f + K[i] + words[chunk + g]) >>> 0;
      a = d; d = c; c = b;
      b = (b + ((sum << s) | (sum >>> (32 - s)))) >>> 0;
    }
    a0 = (a0 + a) >>> 0; b0 = (b0 + b) >>> 0; c0 = (c0 + c) >>> 0; d0 = (d0 + d) >>> 0;
  }
  return [a0, b0, c0, d0]
    .map((w) => Array.from({ length: 4 }, (_, i) => ((w >>> (i * 8)) & 255).toString(16).padStart(2, "0")).join(""))
    .join("");
}

async function sha256Hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Parse a WWW-Authenticate value (possibly several challenges) into [{scheme, params}]. */
export function parseChallenges(header) {
  const out = [];
  const re = /\s*,?\s*([A-Za-z][\w!#$%&'*+.^`|~-]*)(?:\s+|$)|\s*,?\s*([\w!#$%&'*+.^`|~-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)/gy;
  let current = null;
  let m;
  re.lastIndex = 0;
  const text = String(header || "");
  while (re.lastIndex < text.length && (m = re.exec(text)) !== null) {
    if (m[1] !== undefined) {
      current = { scheme: m[1].toLowerCase(), params: {} };
      out.push(current);
    } else if (current) {
      let value = m[3];
      if (value.startsWith('"')) value = value.slice(1, -1).replace(/\\(.)/g, "$1");
      current.params[m[2].toLowerCase()] = value;
    }
    if (m[0] === "") break;
  }
  return out;
}

async function digestAuthorization(challenge, username, password, method, uri) {
  const p = challenge.params;
  const algorithm = (p.algorithm || "MD5").toUpperCase();
  const sha = algorithm.startsWith("SHA-256");
  const hash = sha ? sha256Hex : async (t) => md5Hex(t);
  const cnonce = newCallIdentifier().replace(/-/g, "").slice(0, 16);
  const nc = "00000001";
  let ha1 = await hash(`${username}:${p.realm ?? ""}:${password}`);
  if (algorithm.endsWith("-SESS")) ha1 = await hash(`${ha1}:${p.nonce}:${cnonce}`);
  const ha2 = await hash(`${method}:${uri}`);
  const qops = (p.qop || "").split(",").map((q) => q.trim());
  const useQop = qops.includes("auth");
  const response = useQop
    ? await hash(`${ha1}:${p.nonce}:${nc}:${cnonce}:auth:${ha2}`)
    : await hash(`${ha1}:${p.nonce}:${ha2}`);
  const q = (v) => `"${String(v).replace(/(["\\])/g, "\\$1")}"`;
  const parts = [
    `username=${q(username)}`, `realm=${q(p.realm ?? "")}`, `nonce=${q(p.nonce ?? "")}`,
    `uri=${q(uri)}`, `algorithm=${algorithm}`, `response=${q(response)}`,
  ];
  if (useQop) parts.push("qop=auth", `nc=${nc}`, `cnonce=${q(cnonce)}`);
  if (p.opaque !== undefined) parts.push(`opaque=${q(p.opaque)}`);
  return `Digest ${parts.join(", ")}`;
}

class HttpStatusError extends Error {
  constructor(status) {
    super(`HTTP ${status}`);
    this.status = status;
  }
}

/** True when a request to `url` cannot be read on the network: https, or this machine. */
function privateChannel(url) {
  return url.protocol === "https:" || ["localhost", "127.0.0.1", "[::1]"].includes(url.hostname);
}

/**
 * POST /api/token with Basic or Digest (whatever the server's challenge asks for; Digest
 * SHA-256 preferred; a refused Digest is retried once with Basic over https or loopback). Returns {token, expires} or null when the server has no token
 * endpoint (a deployment without authentication). Throws HttpStatusError(401/403) when
 * the credentials are refused, TypeError when the server cannot be reached.
 */
async function fetchToken(url, username, password) {
  const post = (authorization) =>
    fetch(url, {
      method: "POST",
      credentials: "omit", // no browser login prompt on 401
      cache: "no-store",
      headers: authorization ? { Authorization: authorization } : {},
    });
  let response = await post(null);
  if (response.status === 401) {
    const challenges = parseChallenges(response.headers.get("WWW-Authenticate"));
    const digests = challenges.filter((c) => c.scheme === "digest");
    const digest =
      digests.find((c) => /^SHA-256/i.test(c.params.algorithm || "")) ??
      digests.find((c) => !c.params.algorithm || /^MD5/i.test(c.params.algorithm));
    const uri = url.pathname + url.search;
    const basic = `Basic ${base64(`${username}:${password}`)}`;
    const useDigest =
      digest && (globalThis.crypto?.subtle || !/^SHA/i.test(digest.params.algorithm || ""));
    response = await post(
      useDigest ? await digestAuthorization(digest, username, password, "POST", uri) : basic,
    );
    // A user stored only as HA1 of number:SIP realm (see config [[users]] ha1_md5) cannot
    // answer a Digest challenge under another name or realm; the server offers Basic too.
    // Retry once with Basic, but never send a reusable password in clear text to a remote
    // host: only over https or to this machine.
    const offersBasic = challenges.some((c) => c.scheme === "basic");
    if (response.status === 401 && useDigest && offersBasic && privateChannel(url)) {
      log("Digest login refused; trying Basic once");
      response = await post(basic);
    }
  }
  if ([401, 403, 429].includes(response.status)) throw new HttpStatusError(response.status);
  if (!response.ok) {
    log("token endpoint answered", response.status, "- connecting without a token");
    return null;
  }
  const body = await response.json();
  if (!body || typeof body.access_token !== "string") throw new Error("token endpoint: no access_token");
  const ttl = Number(body.expires_in);
  return { token: body.access_token, expires: Number.isFinite(ttl) ? Date.now() + ttl * 1000 : 0 };
}

/** The `exp` claim of a JWT in milliseconds, 0 when unknown. */
function jwtExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(new TextDecoder().decode(Uint8Array.from(atob(payload), (c) => c.charCodeAt(0))));
    return typeof json.exp === "number" ? json.exp * 1000 : 0;
  } catch {
    return 0;
  }
}

// ------------------------------------------------------------------------- SDP helpers

function waitIceGathering(pc, timeout) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    const timer = setTimeout(done, timeout);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// Private keys shared by WebRtcInstance and WebRtcCall (not part of the API).
const INTERNAL = Symbol("webrtc-client internal");
const SEND = Symbol("send");
const ON_MESSAGE = Symbol("onMessage");
const FINISH = Symbol("finish");
const CONNECTION_RESTORED = Symbol("connectionRestored");
const NEED_NEW_LEG = Symbol("needNewLeg");

// ------------------------------------------------------------------------- WebRtcInstance

/**
 * The connection to the gateway: login, logout, restore, and the calls of this login.
 */
export class WebRtcInstance {
  #onLoginStatus;
  #onIncomingCall;
  #onRestoreCall = null;
  #description;
  #config = null; // what the current login was started with
  #auth = null; // {token, expires} for the WebSocket URL
  #socket = null; // {ws, opened, expectClose, mode}
  #state = null; // last reported LOGIN_STATES value
  #loggedIn = false;
  #everLoggedIn = false; // since the last login()/tryRestoreLogin(): decides SERVER_ACCESS vs reconnect
  #identifier = "";
  #localNumber = "";
  #localName = "";
  #calls = new Map();
  #reconnectTimer = null;
  #reconnectAttempt = 0;
  #heartbeatTimer = null;
  #heartbeatDeadline = null;
  #restoreTimer = null;
  #sweepTimer = null;
  #restoring = false; // between a `restored` register status and the sweep
  #mentioned = new Set(); // calls the server reported since the restore
  #logoutRequested = false;
  #pushConfigured = false;
  #onlineListener = null;

  /**
   * @param {(state: string) => void} onLoginStatus called on every login state change
   * @param {(call: WebRtcCall) => void} onIncomingCall called for each offered incoming call
   * @param {string} [clientDescription] free text shown in call records (<= 256 chars)
   */
  constructor(onLoginStatus, onIncomingCall, clientDescription) {
    this.#onLoginStatus = onLoginStatus;
    this.#onIncomingCall = onIncomingCall;
    const ua = globalThis.navigator ? navigator.userAgent : "";
    this.#description = String(clientDescription || `webrtc-client.js ${VERSION} ${ua}`).slice(0, 256);
  }

  /** Enable or disable diagnostic messages on the browser console (off by default). */
  controlLogging(enable) {
    loggingEnabled = !!enable;
  }

  /** Log in with a username and password (exchanged for a token at POST /api/token). */
  login(server, secure, notification, username, password, number) {
    this.#begin({
      server, secure: !!secure, notification: !!notification, kind: "password",
      username: username ? String(username) : "", password: password ? String(password) : "",
      number: number ? String(number).trim() : "", token: null, identifier: null, wakeupToken: null,
    });
  }

  /** Log in with a JSON Web Token. Without username and number: outgoing calls only. */
  loginWithToken(server, secure, token, username, number) {
    const t = token ? String(token) : "";
    this.#begin({
      server, secure: !!secure, notification: false, kind: "token",
      username: username ? String(username) : "", password: "", number: number ? String(number).trim() : "",
      token: t, identifier: null, wakeupToken: null,
      auth: t ? { token: t, expires: jwtExpiry(t) } : null,
    });
  }

  /**
   * Restore an earlier login (e.g. after a page reload) with its identifier. Calls the
   * login status handler with SUCCESS or LOGIN_RESTORE_FAILED, and `onRestoreCall(call)`
   * for each call the server still has. Returns true when the attempt was started.
   * `wakeupToken` (an extension): the token of a push notification (json-v1 §8).
   */
  tryRestoreLogin(server, secure, notification, identifier, onRestoreCall, wakeupToken) {
    if (typeof identifier !== "string" || !IDENTIFIER_RE.test(identifier)) return false;
    if (typeof WebSocket !== "function") return false;
    this.#onRestoreCall = typeof onRestoreCall === "function" ? onRestoreCall : null;
    this.#begin({
      server, secure: !!secure, notification: !!notification, kind: wakeupToken ? "wakeup" : "restore",
      username: "", password: "", number: "", token: null, identifier,
      wakeupToken: wakeupToken ? String(wakeupToken) : null,
      auth: this.#loadAuth(identifier),
    });
    return true;
  }

  /** Log out: every call ends, then LOGGED_OUT_EXPLICIT. */
  logout() {
    this.#logoutRequested = true;
    this.#stopReconnecting();
    this.#forgetAuth(this.#identifier);
    const socket = this.#socket;
    if (socket && socket.opened && socket.ws.readyState === WebSocket.OPEN && this.#loggedIn) {
      socket.expectClose = true;
      this.#send({ operation: "register", action: "terminate", reason: "userTerminated" });
      // If the server does not answer, finish on our own.
      setTimeout(() => {
        if (this.#socket === socket) this.#loggedOut(LOGIN_STATES.LOGGED_OUT_EXPLICIT, DISC_REASON.USERTERMINATED);
      }, DISCONNECT_CONFIRM_WAIT);
    } else {
      this.#loggedOut(LOGIN_STATES.LOGGED_OUT_EXPLICIT, DISC_REASON.USERTERMINATED);
    }
  }

  /** The registration identifier of the current login ("" when not logged in). */
  getLoginIdentifier() {
    return this.#identifier;
  }

  /** The local display name assigned at login. */
  getLocalDisplayName() {
    return this.#localName;
  }

  /** The local number (dial string) assigned at login. */
  getLocalDialString() {
    return this.#localNumber;
  }

  /** Extension: the last login state reported (null before the first login). */
  getLoginState() {
    return this.#state;
  }

  /** Extension: the calls of this login that have not ended. */
  getCalls() {
    return [...this.#calls.values()];
  }

  /** A new outgoing call in state IDLE; start it with dial(). */
  createOutgoingCall() {
    const call = new WebRtcCall(INTERNAL, this, {
      identifier: newCallIdentifier(),
      incoming: false,
      local: { dialString: this.#localNumber, displayName: this.#localName },
      remote: { dialString: "", displayName: "" },
    });
    return call;
  }

  // -- internals used by WebRtcCall ---------------------------------------------------

  [SEND](message) {
    return this.#send(message);
  }

  [INTERNAL](what, call) {
    if (what === "register") {
      this.#calls.set(call.identifier, call);
      storeCall(call.identifier, { incoming: call.isIncoming() });
    } else if (what === "unregister") {
      storeCall(call.identifier, null);
      if (this.#calls.get(call.identifier) === call) this.#calls.delete(call.identifier);
    } else if (what === "loggedIn") return this.#loggedIn && !!this.#socket?.opened;
    return undefined;
  }

  // -- login machinery ---------------------------------------------------------------

  #begin(config) {
    // A new login replaces the old one: close it quietly and end its calls.
    this.#teardownSocket();
    this.#stopReconnecting();
    this.#clearTimers();
    for (const call of [...this.#calls.values()]) call[FINISH](DISC_REASON.USERTERMINATED);
    this.#calls.clear();
    this.#config = config;
    this.#auth = config.auth ?? null;
    this.#loggedIn = false;
    this.#everLoggedIn = false;
    this.#logoutRequested = false;
    this.#pushConfigured = false;
    this.#identifier = config.identifier ?? "";
    this.#localNumber = config.number;
    this.#localName = config.username;
    this.#report(LOGIN_STATES.CONNECTING);
    detach(this.#connect(config.kind === "wakeup" ? "wakeup" : config.kind === "restore" ? "restore" : "login"), "connect");
  }

  #report(state) {
    if (this.#state === state && state !== LOGIN_STATES.SUCCESS) return;
    this.#state = state;
    log("login state", state);
    callHandler(this.#onLoginStatus, state);
  }

  /**
   * Open a WebSocket. mode: "login" (register/start), "restore" (tryRestoreLogin),
   * "wakeup" (push), "reconnect" (after a drop: restore with the identifier).
   */
  async #connect(mode) {
    const config = this.#config;
    if (!config) return;
    const urls = serverUrls(config.server, config.secure);
    if (config.kind === "password" && config.password && (!this.#auth || this.#authExpired())) {
      try {
        this.#auth = await fetchToken(urls.token, config.username, config.password);
      } catch (err) {
        if (this.#config !== config) return;
        if (err instanceof HttpStatusError) {
          warn("credentials refused:", err.status);
          this.#fail(LOGIN_STATES.SERVER_ACCESS);
          return;
        }
        warn("token endpoint unreachable:", err);
        if (mode === "reconnect") {
          this.#scheduleReconnect();
          return;
        }
        this.#fail(LOGIN_STATES.SERVER_ACCESS);
        return;
      }
      if (this.#config !== config) return;
    }
    const url = new URL(urls.ws.href);
    if (this.#auth?.token) url.searchParams.set("access_token", this.#auth.token);
    if (mode !== "login" && this.#identifier) url.searchParams.set("identifier", this.#identifier);
    if (mode === "wakeup" && config.wakeupToken) url.searchParams.set("wakeupToken", config.wakeupToken);
    let ws;
    try {
      ws = new WebSocket(url.href);
    } catch (err) {
      warn("bad server address:", err);
      this.#fail(LOGIN_STATES.SERVER_ACCESS);
      return;
    }
    const socket = { ws, opened: false, expectClose: false, mode, restoreAnswered: false };
    this.#socket = socket;
    log("connecting", url.origin + url.pathname, mode);
    ws.onopen = () => {
      if (this.#socket !== socket) return;
      socket.opened = true;
      if (mode === "login") {
        this.#sendRegisterStart();
      } else {
        // Restore: the server speaks first. One that does not know the identifier stays
        // silent or refuses; both are handled in #restoreFailed.
        this.#restoreTimer = setTimeout(() => {
          if (this.#socket === socket && !socket.restoreAnswered) this.#restoreFailed(socket, true);
        }, RESTORE_REPLY_WAIT);
      }
    };
    ws.onmessage = (event) => {
      if (this.#socket !== socket) return;
      this.#heartbeatAnswered();
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        warn("unparsable message ignored");
        return;
      }
      if (!message || typeof message !== "object") return;
      log("<", message.operation, message.action, message.state ?? "", message.identifier ?? "", message.reason ?? "");
      try {
        this.#onMessage(socket, message);
      } catch (err) {
        warn("message handling failed:", err);
      }
    };
    ws.onerror = () => {
      // A close event always follows; it decides.
    };
    ws.onclose = (event) => {
      if (this.#socket !== socket) return;
      this.#onClose(socket, event.code);
    };
  }

  #sendRegisterStart() {
    const config = this.#config;
    this.#send({
      operation: "register",
      action: "start",
      localAddress: { dialString: config.number, displayName: "" },
      localSideDescription: this.#description,
    });
  }

  #authExpired() {
    return !!this.#auth && this.#auth.expires > 0 && this.#auth.expires - 5000 < Date.now();
  }

  #send(message) {
    const socket = this.#socket;
    if (!socket || !socket.opened || socket.ws.readyState !== WebSocket.OPEN) {
      warn("not connected; not sent:", message.operation, message.action);
      return false;
    }
    const text = JSON.stringify({ version: 1, ...message });
    log(">", message.operation, message.action, message.identifier ?? "");
    try {
      socket.ws.send(text);
      return true;
    } catch (err) {
      warn("send failed:", err);
      return false;
    }
  }

  #onMessage(socket, message) {
    if (message.operation === "register") {
      this.#onRegister(socket, message);
    } else if (message.operation === "signaling" || message.operation === "media") {
      this.#onCallMessage(message);
    }
  }

  #onRegister(socket, message) {
    if (message.action !== "status") return;
    if (message.state === "active") {
      if (message.reason) {
        warn("register request refused:", message.reason);
        return;
      }
      socket.restoreAnswered = true;
      clearTimeout(this.#restoreTimer);
      const wasLoggedIn = this.#loggedIn && this.#state === LOGIN_STATES.SUCCESS;
      if (typeof message.identifier === "string") {
        if (this.#identifier && message.identifier !== this.#identifier) this.#forgetAuth(this.#identifier);
        this.#identifier = message.identifier;
      }
      const local = party(message.localAddress);
      if (local.dialString) this.#localNumber = local.dialString;
      if (local.displayName) this.#localName = local.displayName;
      this.#loggedIn = true;
      this.#everLoggedIn = true;
      this.#reconnectAttempt = 0;
      this.#saveAuth();
      if (message.assignment === "restored") this.#beginRestoreSweep();
      this.#startHeartbeat();
      if (!wasLoggedIn || message.assignment === "restored" || message.assignment === "wakeup") {
        this.#report(LOGIN_STATES.SUCCESS);
      }
      if (this.#config?.notification && message.notificationConfiguration && !this.#pushConfigured) {
        this.#pushConfigured = true;
        detach(this.#setupPush(message.notificationConfiguration), "push setup");
      }
      return;
    }
    if (message.state !== "terminated") return;
    socket.expectClose = true;
    const reason = message.reason;
    if (this.#logoutRequested) {
      this.#loggedOut(LOGIN_STATES.LOGGED_OUT_EXPLICIT, DISC_REASON.USERTERMINATED);
      return;
    }
    if (socket.mode !== "login" && !socket.restoreAnswered) {
      socket.restoreAnswered = true;
      this.#restoreFailed(socket, false);
      return;
    }
    if (!this.#loggedIn) {
      // Login refused.
      let state = LOGIN_STATES.SERVER_ACCESS;
      if (reason === "dialString") {
        const config = this.#config;
        state = !config.number && config.username ? LOGIN_STATES.NO_DIAL_STRING_FOR_USER : LOGIN_STATES.DIAL_STRING_MISSING;
      }
      this.#fail(state);
      return;
    }
    this.#loggedOut(LOGIN_STATES.LOGGED_OUT_IMPLICIT, reasonFromWire(reason));
  }

  /** A restore the server refused (or ignored, `silent`). */
  #restoreFailed(socket, silent) {
    clearTimeout(this.#restoreTimer);
    const config = this.#config;
    if (socket.mode === "reconnect" && config && config.kind !== "restore" && config.kind !== "wakeup") {
      // After a network drop: the calls are gone, but the login can be made afresh.
      log("restore refused after reconnect; logging in again");
      this.#endAllCalls(DISC_REASON.ERROR);
      this.#forgetAuth(this.#identifier);
      this.#identifier = "";
      this.#loggedIn = false;
      if (silent && socket.ws.readyState === WebSocket.OPEN) {
        socket.mode = "login";
        this.#sendRegisterStart();
      } else {
        this.#teardownSocket();
        detach(this.#connect("login"), "connect");
      }
      return;
    }
    this.#forgetAuth(this.#identifier);
    this.#teardownSocket();
    this.#identifier = "";
    this.#loggedIn = false;
    this.#endAllCalls(DISC_REASON.ERROR);
    this.#config = null;
    this.#report(LOGIN_STATES.LOGIN_RESTORE_FAILED);
  }

  #onClose(socket, code) {
    this.#stopHeartbeat();
    clearTimeout(this.#restoreTimer);
    this.#socket = null;
    log("connection closed", code);
    if (socket.expectClose || this.#logoutRequested) {
      if (this.#logoutRequested) this.#loggedOut(LOGIN_STATES.LOGGED_OUT_EXPLICIT, DISC_REASON.USERTERMINATED);
      return;
    }
    if (!this.#config) return;
    if (!socket.opened) {
      // The upgrade failed: bad address, certificate, credentials, or the server is down.
      if (!this.#everLoggedIn) {
        if (socket.mode === "restore" || socket.mode === "wakeup") {
          this.#restoreFailed(socket, false);
        } else {
          this.#fail(LOGIN_STATES.SERVER_ACCESS);
        }
      } else {
        this.#scheduleReconnect();
      }
      return;
    }
    if (FATAL_CLOSE_CODES.has(code)) {
      warn("server closed the connection with", code);
      this.#loggedOut(LOGIN_STATES.LOGGED_OUT_IMPLICIT, DISC_REASON.ERROR);
      return;
    }
    if (!this.#everLoggedIn) {
      this.#fail(LOGIN_STATES.SERVER_ACCESS);
      return;
    }
    this.#connectionLost();
  }

  #connectionLost() {
    this.#stopHeartbeat();
    this.#loggedIn = false;
    for (const call of this.#calls.values()) call[NEED_NEW_LEG](true);
    this.#report(LOGIN_STATES.CONNECTION_LOST);
    this.#scheduleReconnect();
  }

  #scheduleReconnect() {
    if (this.#logoutRequested || !this.#config) return;
    clearTimeout(this.#reconnectTimer);
    const base = Math.min(RECONNECT_MAX, RECONNECT_FIRST * 2 ** this.#reconnectAttempt);
    const delay = Math.round(base * (0.8 + Math.random() * 0.4));
    this.#reconnectAttempt += 1;
    log(`reconnecting in ${delay} ms (attempt ${this.#reconnectAttempt})`);
    this.#reconnectTimer = setTimeout(() => this.#reconnectNow(), delay);
    if (!this.#onlineListener && globalThis.addEventListener) {
      this.#onlineListener = () => {
        if (this.#reconnectTimer) this.#reconnectNow();
      };
      globalThis.addEventListener("online", this.#onlineListener);
    }
  }

  #reconnectNow() {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    if (this.#logoutRequested || !this.#config || this.#socket) return;
    this.#report(LOGIN_STATES.CONNECTING);
    detach(this.#connect(this.#identifier ? "reconnect" : "login"), "reconnect");
  }

  #stopReconnecting() {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = null;
    this.#reconnectAttempt = 0;
    if (this.#onlineListener) {
      globalThis.removeEventListener("online", this.#onlineListener);
      this.#onlineListener = null;
    }
  }

  #startHeartbeat() {
    this.#stopHeartbeat();
    this.#heartbeatTimer = setInterval(() => {
      if (!this.#loggedIn || this.#heartbeatDeadline) return;
      if (!this.#send({ operation: "register", action: "status", identifier: this.#identifier })) return;
      const socket = this.#socket;
      this.#heartbeatDeadline = setTimeout(() => {
        this.#heartbeatDeadline = null;
        if (this.#socket !== socket || !socket) return;
        warn("no answer to the heartbeat: connection lost");
        this.#teardownSocket();
        this.#connectionLost();
      }, HEARTBEAT_TIMEOUT);
    }, HEARTBEAT_INTERVAL);
  }

  #heartbeatAnswered() {
    clearTimeout(this.#heartbeatDeadline);
    this.#heartbeatDeadline = null;
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeatTimer);
    this.#heartbeatTimer = null;
    this.#heartbeatAnswered();
  }

  #clearTimers() {
    this.#stopHeartbeat();
    clearTimeout(this.#restoreTimer);
    clearTimeout(this.#sweepTimer);
    this.#restoring = false;
  }

  #teardownSocket() {
    const socket = this.#socket;
    this.#socket = null;
    this.#stopHeartbeat();
    if (!socket) return;
    socket.expectClose = true;
    socket.ws.onopen = socket.ws.onmessage = socket.ws.onclose = socket.ws.onerror = null;
    try {
      socket.ws.close(1000);
    } catch {
      // already closing
    }
  }

  #fail(state) {
    this.#teardownSocket();
    this.#stopReconnecting();
    this.#clearTimers();
    this.#loggedIn = false;
    this.#endAllCalls(DISC_REASON.ERROR);
    this.#config = null;
    this.#auth = null;
    this.#report(state);
  }

  #loggedOut(state, callReason) {
    this.#teardownSocket();
    this.#stopReconnecting();
    this.#clearTimers();
    this.#forgetAuth(this.#identifier);
    this.#loggedIn = false;
    this.#endAllCalls(callReason);
    this.#identifier = "";
    this.#config = null;
    this.#auth = null;
    this.#report(state);
  }

  #endAllCalls(reason) {
    for (const call of [...this.#calls.values()]) call[FINISH](reason);
    this.#calls.clear();
  }

  // -- restore -------------------------------------------------------------------------

  #beginRestoreSweep() {
    this.#restoring = true;
    this.#mentioned = new Set();
    clearTimeout(this.#sweepTimer);
    this.#sweepTimer = setTimeout(() => {
      this.#restoring = false;
      for (const call of [...this.#calls.values()]) {
        if (!this.#mentioned.has(call.identifier) && call.getState() !== CALL_STATES.IDLE) {
          log("call not restored:", call.identifier);
          call[FINISH](DISC_REASON.ERROR);
        }
      }
    }, RESTORE_SWEEP);
    for (const call of this.#calls.values()) call[CONNECTION_RESTORED]();
  }

  #onCallMessage(message) {
    const id = message.identifier;
    if (typeof id !== "string") return;
    if (this.#restoring) this.#mentioned.add(id);
    let call = this.#calls.get(id);
    if (message.operation === "signaling" && message.action === "start") {
      if (call) {
        call[ON_MESSAGE](message);
        return;
      }
      call = new WebRtcCall(INTERNAL, this, {
        identifier: id,
        incoming: true,
        local: message.localAddress ? party(message.localAddress) : { dialString: this.#localNumber, displayName: this.#localName },
        remote: party(message.remoteAddress),
        state: CALL_STATES.OFFERING,
      });
      this.#calls.set(id, call);
      storeCall(id, { incoming: true });
      callHandler(this.#onIncomingCall, call);
      return;
    }
    if (!call) {
      const state = WIRE_STATES[message.state];
      if (message.operation === "signaling" && message.action === "status" && state && !message.reason) {
        // A call restored after a page reload: the application takes it over.
        const stored = storedCall(id);
        call = new WebRtcCall(INTERNAL, this, {
          identifier: id,
          // Unknown direction (storage lost): a call still ringing must be outgoing.
          incoming: stored ? !!stored.incoming : state !== CALL_STATES.RINGING,
          restored: true,
          local: { dialString: this.#localNumber, displayName: this.#localName },
          remote: party(message.remoteAddress),
          state,
        });
        this.#calls.set(id, call);
        storeCall(id, { incoming: call.isIncoming() });
        callHandler(this.#onRestoreCall, call);
        call[INTERNAL]("announce");
        return;
      }
      log("message for an unknown call ignored:", id);
      return;
    }
    call[ON_MESSAGE](message);
  }

  // -- auth kept for a restore after reload -----------------------------------------

  #saveAuth() {
    const store = sessionStore();
    if (!store || !this.#identifier || !this.#auth?.token) return;
    try {
      store.setItem(TOKEN_STORE_PREFIX + this.#identifier, JSON.stringify(this.#auth));
    } catch {
      // quota or privacy mode: a restore then goes without the token
    }
  }

  #loadAuth(identifier) {
    const store = sessionStore();
    if (!store) return null;
    try {
      const saved = JSON.parse(store.getItem(TOKEN_STORE_PREFIX + identifier) || "null");
      if (saved && typeof saved.token === "string" && (!saved.expires || saved.expires > Date.now())) return saved;
    } catch {
      // ignore a damaged entry
    }
    return null;
  }

  #forgetAuth(identifier) {
    const store = sessionStore();
    if (!store || !identifier) return;
    try {
      store.removeItem(TOKEN_STORE_PREFIX + identifier);
    } catch {
      // ignore
    }
  }

  // -- push (json-v1 §8) -------------------------------------------------------------

  /**
   * Register for push wake-up. `configuration` is the push service's web configuration
   * from the server: a Firebase web config ({apiKey, projectId, messagingSenderId, appId,
   * vapidKey, [sdkVersion]}) or a plain Web Push one ({vapidPublicKey}). The token goes
   * to the server with register/status.
   */
  async #setupPush(configuration) {
    if (!("serviceWorker" in navigator) || !globalThis.PushManager || !globalThis.Notification) {
      warn("push not supported by this browser");
      return;
    }
    const permission = Notification.permission === "default" ? await Notification.requestPermission() : Notification.permission;
    if (permission !== "granted") {
      warn("notification permission", permission);
      return;
    }
    let token;
    if (configuration.messagingSenderId || configuration.apiKey) {
      const version = configuration.sdkVersion || "10.12.2";
      const base = `https://www.gstatic.com/firebasejs/${version}`;
      const { initializeApp } = await import(`${base}/firebase-app.js`);
      const { getMessaging, getToken } = await import(`${base}/firebase-messaging.js`);
      const registration = await navigator.serviceWorker.register("/firebase-messaging-sw.js");
      const app = initializeApp(configuration);
      token = await getToken(getMessaging(app), {
        vapidKey: configuration.vapidKey,
        serviceWorkerRegistration: registration,
      });
    } else if (configuration.vapidPublicKey || configuration.applicationServerKey) {
      const registration = await navigator.serviceWorker.register("/firebase-messaging-sw.js");
      const key = configuration.vapidPublicKey || configuration.applicationServerKey;
      const raw = atob(key.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(key.length / 4) * 4, "="));
      const subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: Uint8Array.from(raw, (c) => c.charCodeAt(0)),
      });
      token = JSON.stringify(subscription);
    } else {
      warn("unknown notification configuration");
      return;
    }
    if (!token) return;
    const url = new URL(location.href);
    url.search = "";
    url.hash = "";
    this.#send({
      operation: "register",
      action: "status",
      identifier: this.#identifier,
      notificationToken: token,
      notificationUrl: url.href,
    });
  }
}

// ------------------------------------------------------------------------- WebRtcCall

/**
 * One call. Outgoing calls come from WebRtcInstance.createOutgoingCall(); incoming and
 * restored calls are handed to the application by the instance's handlers.
 */
export class WebRtcCall {
  #instance;
  #identifier;
  #incoming;
  #state;
  #reason = null;
  #local;
  #remote;
  #onState = null;
  #onMedia = null;
  #onRequestFailed = null;
  #audioElement = null;
  #localVideo = null;
  #remoteVideo = null;
  #fallbackAudio = null;
  #pc = null;
  #localStream = null;
  #remoteStream = null;
  #sdpSent = false; // our offer/answer is out: later candidates trickle
  #sdpAction = "offer";
  #pendingOffer = null;
  #offerWaiters = [];
  #answering = false;
  #muted = false;
  #pendingDigits = ""; // sent while the media path was still connecting
  #digitWait = null;
  #videoActive = false;
  #pendingRequest = null;
  #reoffer = null; // our re-offer (adding the camera, restarting ICE), until answered or refused
  #iceTimer = null; // ICE disconnected: restart it unless it recovers by itself
  #chain = Promise.resolve();
  #disconnectTimer = null;
  #newLegNeeded = false;
  #restored = false;

  /** Not for applications: calls are made by WebRtcInstance. */
  constructor(key, instance, init) {
    if (key !== INTERNAL) throw new TypeError("use WebRtcInstance.createOutgoingCall()");
    this.#instance = instance;
    this.#identifier = init.identifier;
    this.#incoming = init.incoming;
    this.#local = { ...init.local };
    this.#remote = { ...init.remote };
    this.#state = init.state ?? CALL_STATES.IDLE;
    this.#restored = !!init.restored;
    if (this.#restored) this.#newLegNeeded = true;
  }

  /** The call identifier (json-v1 `identifier`). */
  get identifier() {
    return this.#identifier;
  }

  /** Set the handler called as fn(call, state) on every state change. */
  setCallStateHandler(handler) {
    this.#onState = typeof handler === "function" ? handler : null;
  }

  /** Play the remote audio in this element (HTMLAudioElement). */
  setAudioElement(element) {
    this.#audioElement = element ?? null;
    this.#attachRemote();
  }

  hasAudioElement() {
    return !!this.#audioElement;
  }

  /**
   * Show local and remote video (HTMLVideoElement). Set before dial()/answer() the call
   * asks for the camera; set during a connected call it offers video to the server.
   */
  setVideoElements(localElement, remoteElement) {
    this.#localVideo = localElement ?? null;
    this.#remoteVideo = remoteElement ?? null;
    this.#attachLocal();
    this.#attachRemote();
    if (this.#localVideo && this.#pc && this.#state === CALL_STATES.CONNECTED && !this.#localStream?.getVideoTracks().length) {
      this.#queue(() => this.#addVideo(), "adding video");
    }
  }

  hasVideoElements() {
    return !!(this.#localVideo && this.#remoteVideo);
  }

  /** Set the handler called as fn(call) when video becomes active or inactive. */
  setMediaStateHandler(handler) {
    this.#onMedia = typeof handler === "function" ? handler : null;
  }

  /**
   * Extension: the handler called as fn(call, request, reason) when the server refuses a
   * request ("hold", "retrieve", "transfer", "renegotiate", or "restartIce" for the
   * library's own ICE restart) and the call stays as it was.
   */
  setRequestFailedHandler(handler) {
    this.#onRequestFailed = typeof handler === "function" ? handler : null;
  }

  /** Place the call to `number` (optionally naming the callee `name`). */
  dial(number, name) {
    if (this.#incoming || this.#state !== CALL_STATES.IDLE) {
      warn("dial() needs a new outgoing call");
      return;
    }
    const dialString = String(number ?? "").trim();
    this.#remote = { dialString, displayName: name ? String(name) : "" };
    this.#instance[INTERNAL]("register", this);
    this.#setState(CALL_STATES.DIALING);
    if (!dialString) {
      queueMicrotask(() => this[FINISH](DISC_REASON.DIALSTRING));
      return;
    }
    if (!this.#instance[INTERNAL]("loggedIn")) {
      queueMicrotask(() => this[FINISH](DISC_REASON.ERROR));
      return;
    }
    const local = this.#instance;
    this.#local = { dialString: local.getLocalDialString(), displayName: local.getLocalDisplayName() };
    this.#instance[SEND]({
      operation: "signaling",
      action: "start",
      identifier: this.#identifier,
      remoteAddress: this.#remote,
      localAddress: { dialString: this.#local.dialString, displayName: this.#local.displayName },
    });
    this.#queue(() => this.#sendOffer(), "dialing");
  }

  /** Alert on an offered incoming call: the caller hears ringing, state RINGING. */
  accept() {
    if (!this.#incoming || this.#state !== CALL_STATES.OFFERING) {
      warn("accept() needs an offered incoming call");
      return;
    }
    this.#instance[SEND]({ operation: "signaling", action: "accept", identifier: this.#identifier });
  }

  /** Answer an incoming call (state OFFERING or RINGING). */
  answer() {
    if (!this.#incoming || ![CALL_STATES.OFFERING, CALL_STATES.RINGING].includes(this.#state) || this.#answering) {
      warn("answer() needs an offered incoming call");
      return;
    }
    this.#answering = true;
    detach(this.#answer(), "answering");
  }

  /** Decline an incoming call; `busy` (an extension) declines with busy instead of rejected. */
  decline(busy) {
    if (!this.#incoming || ![CALL_STATES.OFFERING, CALL_STATES.RINGING].includes(this.#state)) {
      warn("decline() needs an offered incoming call");
      return;
    }
    this.#terminate(busy ? "busy" : "rejected", busy ? DISC_REASON.BUSY : DISC_REASON.REJECTED);
  }

  /** Hang up (or cancel). DISCONNECTED follows when the server confirms. */
  disconnect() {
    if (this.#state === CALL_STATES.DISCONNECTED) return;
    if (this.#state === CALL_STATES.IDLE) {
      this[FINISH](DISC_REASON.USERTERMINATED);
      return;
    }
    this.#terminate("userTerminated", DISC_REASON.USERTERMINATED);
  }

  /** Put the call on hold: HELD, the microphone stops feeding this call. */
  hold() {
    if (![CALL_STATES.CONNECTED, CALL_STATES.HOLDING].includes(this.#state)) {
      warn("hold() needs a connected call");
      return;
    }
    this.#request("hold", { action: "hold" });
  }

  /** Take the call off hold: CONNECTED, the microphone feeds it again. */
  retrieve() {
    if (this.#state !== CALL_STATES.HELD) {
      warn("retrieve() needs a held call");
      return;
    }
    this.#request("retrieve", { action: "retrieve" });
  }

  /**
   * Transfer: attended to another WebRtcCall of the same login (both CONNECTED, HELD or
   * HOLDING); blind when given a number (an extension). Both calls end REDIRECTED.
   */
  transfer(transferCall) {
    const ok = [CALL_STATES.CONNECTED, CALL_STATES.HELD, CALL_STATES.HOLDING];
    if (!ok.includes(this.#state)) {
      warn("transfer() needs a connected or held call");
      return;
    }
    if (typeof transferCall === "string") {
      this.#request("transfer", { action: "transfer", remoteAddress: { dialString: transferCall.trim(), displayName: "" } });
      return;
    }
    if (!(transferCall instanceof WebRtcCall) || transferCall === this || !ok.includes(transferCall.getState())) {
      warn("transfer() needs another connected or held call");
      return;
    }
    this.#request("transfer", { action: "transfer", transferIdentifier: transferCall.identifier });
  }

  /**
   * Send one DTMF digit (0-9, *, #, A-D) as RFC 4733 events. True when queued: digits
   * sent right after CONNECTED, before the browser's media path is up, are kept and
   * sent in order once it is.
   */
  sendDigit(digit) {
    const d = String(digit ?? "");
    if (!DTMF_RE.test(d)) {
      warn("not a DTMF digit:", digit);
      return false;
    }
    if (this.#state !== CALL_STATES.CONNECTED || !this.#pc) {
      warn("sendDigit() needs a connected call");
      return false;
    }
    const sender = this.#pc.getSenders().find((s) => s.track?.kind === "audio" && s.dtmf);
    if (!sender) {
      warn("DTMF not negotiated");
      return false;
    }
    if (!sender.dtmf.canInsertDTMF || this.#pendingDigits) {
      // The call is CONNECTED as soon as the far end answers; the browser's DTLS may
      // still be a moment away, and RTCDTMFSender refuses digits until then. Keep them.
      if (this.#pc.connectionState === "connected" && !sender.dtmf.canInsertDTMF) {
        warn("DTMF not negotiated");
        return false;
      }
      this.#pendingDigits += d.toUpperCase();
      this.#sendPendingDigits(sender);
      return true;
    }
    // Appending keeps digits sent in quick succession in order.
    sender.dtmf.insertDTMF(sender.dtmf.toneBuffer + d.toUpperCase(), 100, 70);
    return true;
  }

  /** Hand the kept digits to RTCDTMFSender once it takes them (up to 10 s), in order. */
  #sendPendingDigits(sender) {
    if (this.#digitWait) return;
    const pc = this.#pc;
    const deadline = Date.now() + 10000;
    const tick = () => {
      this.#digitWait = null;
      if (this.#pc !== pc || this.#state !== CALL_STATES.CONNECTED) {
        this.#pendingDigits = "";
        return;
      }
      if (sender.dtmf.canInsertDTMF) {
        const digits = this.#pendingDigits;
        this.#pendingDigits = "";
        sender.dtmf.insertDTMF(sender.dtmf.toneBuffer + digits, 100, 70);
      } else if (Date.now() > deadline || ["failed", "closed"].includes(pc.connectionState)) {
        warn("DTMF not sent, the media path did not come up:", this.#pendingDigits);
        this.#pendingDigits = "";
      } else {
        this.#digitWait = setTimeout(tick, 50);
      }
    };
    this.#digitWait = setTimeout(tick, 50);
  }

  /** Extension: mute or unmute the microphone for this call. */
  setMuted(muted) {
    this.#muted = !!muted;
    this.#applyMicrophone();
  }

  /** Extension: whether the microphone is muted for this call. */
  isMuted() {
    return this.#muted;
  }

  /** Extension: true for calls that came in, false for dialed ones. */
  isIncoming() {
    return this.#incoming;
  }

  getState() {
    return this.#state;
  }

  /** The DISC_REASON once DISCONNECTED, else null. */
  getDisconnectReason() {
    return this.#reason;
  }

  getLocalNumber() {
    return this.#local.dialString;
  }

  getLocalName() {
    return this.#local.displayName;
  }

  getRemoteNumber() {
    return this.#remote.dialString;
  }

  getRemoteName() {
    return this.#remote.displayName;
  }

  /** True when video is negotiated and flowing in at least one direction. */
  getMediaVideoActive() {
    return this.#videoActive;
  }

  // -- messages from the server ------------------------------------------------------

  [ON_MESSAGE](message) {
    if (this.#state === CALL_STATES.DISCONNECTED) return;
    if (message.operation === "signaling") {
      if (message.action === "status") this.#onStatus(message);
      else if (message.action === "start") this.#onRestart(message);
      return;
    }
    if (message.operation !== "media") return;
    if (message.action === "offer" && typeof message.sdp === "string") {
      const offered = this.#state === CALL_STATES.OFFERING || this.#state === CALL_STATES.RINGING;
      if (this.#incoming && offered && !this.#pc && !this.#restored) {
        // An offered call: keep the offer until answer().
        this.#pendingOffer = message.sdp;
        for (const resolve of this.#offerWaiters.splice(0)) resolve();
        return;
      }
      const sdp = message.sdp;
      this.#queue(() => this.#onServerOffer(sdp), "renegotiation");
    } else if (message.action === "answer" && typeof message.sdp === "string") {
      const sdp = message.sdp;
      this.#queue(() => this.#onServerAnswer(sdp), "applying the answer");
    } else if (Array.isArray(message.ice)) {
      const candidates = message.ice;
      this.#queue(async () => {
        for (const c of candidates) {
          if (!this.#pc || !c || typeof c.candidate !== "string") continue;
          await this.#pc.addIceCandidate(c.candidate ? c : null).catch((e) => warn("bad candidate", e));
        }
      }, "adding candidates");
    }
  }

  #onStatus(message) {
    if (message.remoteAddress) {
      const remote = party(message.remoteAddress);
      if (remote.dialString) this.#remote.dialString = remote.dialString;
      if (remote.displayName) this.#remote.displayName = remote.displayName;
    }
    if (message.state === "terminated") {
      this[FINISH](reasonFromWire(message.reason));
      return;
    }
    const state = WIRE_STATES[message.state];
    if (message.reason) {
      // A refused request: the call stays as it was (json-v1 §9).
      const request = this.#pendingRequest ?? "request";
      this.#pendingRequest = null;
      const attempt = this.#reoffer;
      if (attempt && request === attempt.what) this.#queue(() => this.#withdrawReoffer(attempt), "withdrawing the re-offer");
      warn(`${request} refused:`, message.reason);
      if (state && state !== this.#state) this.#setState(state);
      callHandler(this.#onRequestFailed, this, request, reasonFromWire(message.reason));
      return;
    }
    if (!state) return; // `terminating`: wait for `terminated`
    if (this.#pendingRequest && ((this.#pendingRequest === "hold" && state === CALL_STATES.HELD) ||
        (this.#pendingRequest === "retrieve" && state === CALL_STATES.CONNECTED))) {
      this.#pendingRequest = null;
    }
    this.#setState(state);
  }

  /** signaling/start for a call we know: after a restore, an incoming call still offered. */
  #onRestart(message) {
    if (message.remoteAddress) this.#remote = party(message.remoteAddress);
    if (this.#state !== CALL_STATES.OFFERING && this.#state !== CALL_STATES.RINGING) return;
    this.#pc?.close();
    this.#pc = null;
    this.#pendingOffer = null;
    this.#answering = false;
    this.#setState(CALL_STATES.OFFERING);
  }

  [CONNECTION_RESTORED]() {
    // The server sends a fresh media offer for every connected call (json-v1 §7).
    this.#newLegNeeded = true;
  }

  [NEED_NEW_LEG](value) {
    this.#newLegNeeded = value;
  }

  [INTERNAL](what) {
    if (what === "announce") callHandler(this.#onState, this, this.#state);
  }

  // -- media -----------------------------------------------------------------------

  #queue(task, what) {
    const run = this.#chain.then(() => (this.#state === CALL_STATES.DISCONNECTED ? undefined : task()));
    this.#chain = run.catch((err) => {
      warn(`${what} failed:`, err);
      this.#mediaFailed(err);
    });
  }

  #mediaFailed(err) {
    if (this.#state === CALL_STATES.DISCONNECTED) return;
    warn("media failure, ending the call:", err?.name, err?.message);
    this.#terminate("media", DISC_REASON.MEDIA);
  }

  #newPeerConnection() {
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", rtcpMuxPolicy: "require" });
    this.#remoteStream = new MediaStream();
    pc.addEventListener("track", (event) => {
      if (this.#pc !== pc) return;
      this.#remoteStream.addTrack(event.track);
      event.track.addEventListener("ended", () => this.#remoteStream?.removeTrack(event.track));
      this.#applyMicrophone();
      this.#attachRemote();
    });
    pc.addEventListener("icecandidate", (event) => {
      if (this.#pc !== pc || !this.#sdpSent) return;
      const candidate = event.candidate ? event.candidate.toJSON() : { candidate: "" };
      this.#instance[SEND]({ operation: "media", action: this.#sdpAction, identifier: this.#identifier, ice: [candidate] });
    });
    pc.addEventListener("connectionstatechange", () => {
      if (this.#pc !== pc) return;
      log("call", this.#identifier, "connection", pc.connectionState);
    });
    pc.addEventListener("iceconnectionstatechange", () => {
      if (this.#pc !== pc) return;
      const state = pc.iceConnectionState;
      clearTimeout(this.#iceTimer);
      this.#iceTimer = null;
      // The path broke (the network changed, a NAT binding expired): new ICE
      // credentials and candidates, with the DTLS session kept (json-v1 §10).
      if (state === "failed") this.#queue(() => this.#restartIce(pc), "restarting ICE");
      else if (state === "disconnected") this.#iceRestartLater(pc);
    });
    this.#pc = pc;
    this.#sdpSent = false;
    return pc;
  }

  async #getLocalMedia() {
    if (this.#localStream) return this.#localStream;
    const wantVideo = !!(this.#localVideo || this.#remoteVideo);
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: wantVideo });
    } catch (err) {
      if (!wantVideo) throw err;
      warn("camera unavailable, audio only:", err?.name);
      stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
    }
    if (this.#state === CALL_STATES.DISCONNECTED) {
      stream.getTracks().forEach((t) => t.stop());
      throw new Error("call ended while opening the microphone");
    }
    this.#localStream = stream;
    this.#attachLocal();
    return stream;
  }

  #addLocalTracks(pc, stream) {
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    this.#applyMicrophone();
  }

  async #sendOffer() {
    const stream = await this.#getLocalMedia();
    const pc = this.#newPeerConnection();
    this.#addLocalTracks(pc, stream);
    if (!stream.getVideoTracks().length && this.#remoteVideo) {
      pc.addTransceiver("video", { direction: "recvonly" });
    }
    await pc.setLocalDescription();
    await waitIceGathering(pc, ICE_GATHER_WAIT);
    if (this.#pc !== pc || this.#state === CALL_STATES.DISCONNECTED) return;
    this.#sdpAction = "offer";
    this.#sdpSent = true;
    this.#instance[SEND]({ operation: "media", action: "offer", identifier: this.#identifier, sdp: pc.localDescription.sdp });
  }

  async #onServerAnswer(sdp) {
    const pc = this.#pc;
    if (!pc || pc.signalingState !== "have-local-offer") {
      log("answer without a pending offer ignored");
      return;
    }
    await pc.setRemoteDescription({ type: "answer", sdp });
    this.#reofferSettled();
    this.#checkVideo();
  }

  #waitForOffer() {
    if (this.#pendingOffer) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no media offer from the server")), OFFER_WAIT);
      this.#offerWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async #answer() {
    try {
      await this.#waitForOffer();
      if (this.#state === CALL_STATES.DISCONNECTED) return;
      await this.#answerOffer(this.#pendingOffer, true);
      this.#pendingOffer = null;
      if (this.#state === CALL_STATES.DISCONNECTED) return;
      this.#instance[SEND]({ operation: "signaling", action: "answer", identifier: this.#identifier });
    } catch (err) {
      this.#answering = false;
      this.#mediaFailed(err);
    }
  }

  /** Answer a server offer on a new peer connection (fresh: incoming call or restored leg). */
  async #answerOffer(sdp, fresh) {
    const stream = await this.#getLocalMedia();
    if (fresh) {
      this.#pc?.close();
      this.#newPeerConnection();
    }
    const pc = this.#pc;
    if (pc.signalingState === "have-local-offer") {
      // Glare: the server's offer wins (json-v1 §10); a camera we were adding stays
      // attached and goes out in our answer if the server's offer has video.
      const lost = this.#reoffer;
      await pc.setLocalDescription({ type: "rollback" });
      this.#reofferSettled();
      this.#iceRestartAgain(lost);
    }
    await pc.setRemoteDescription({ type: "offer", sdp });
    if (fresh) this.#addLocalTracks(pc, stream);
    await pc.setLocalDescription();
    await waitIceGathering(pc, ICE_GATHER_WAIT);
    if (this.#pc !== pc || this.#state === CALL_STATES.DISCONNECTED) return;
    this.#sdpAction = "answer";
    this.#sdpSent = true;
    this.#instance[SEND]({ operation: "media", action: "answer", identifier: this.#identifier, sdp: pc.localDescription.sdp });
    this.#checkVideo();
  }

  async #onServerOffer(sdp) {
    const fresh = this.#newLegNeeded || !this.#pc;
    this.#newLegNeeded = false;
    await this.#answerOffer(sdp, fresh);
  }

  async #restartIce(pc) {
    const live = [CALL_STATES.CONNECTED, CALL_STATES.HOLDING, CALL_STATES.HELD].includes(this.#state);
    if (this.#pc !== pc || !live) return;
    if (this.#reoffer || pc.signalingState !== "stable") {
      this.#iceRestartLater(pc); // after the negotiation under way
      return;
    }
    log("call", this.#identifier, "restarting ICE");
    pc.restartIce();
    await pc.setLocalDescription();
    await waitIceGathering(pc, ICE_GATHER_WAIT);
    if (this.#pc !== pc || this.#state === CALL_STATES.DISCONNECTED) return;
    this.#sendReoffer({ pc, sender: null, track: null, timer: null, what: "restartIce" });
  }

  /** Restart ICE after ICE_RECOVER_WAIT unless the path recovers meanwhile. */
  #iceRestartLater(pc) {
    clearTimeout(this.#iceTimer);
    this.#iceTimer = setTimeout(() => {
      if (this.#pc === pc && ["failed", "disconnected"].includes(pc.iceConnectionState)) {
        this.#queue(() => this.#restartIce(pc), "restarting ICE");
      }
    }, ICE_RECOVER_WAIT);
  }

  /** Our ICE restart was refused or lost a glare: try again if the path is still broken then. */
  #iceRestartAgain(attempt) {
    if (attempt && !attempt.track && this.#pc === attempt.pc) this.#iceRestartLater(attempt.pc);
  }

  /**
   * Send our re-offer (pc's local description). Not awaited: the server's answer is
   * applied by a task queued behind this one. A server that refuses the re-offer
   * answers with a status carrying a reason, and one that never answers is given up
   * on after OFFER_WAIT; either way the offer is rolled back (see #onStatus).
   */
  #sendReoffer(attempt) {
    this.#pendingRequest = attempt.what;
    this.#sdpAction = "offer";
    this.#instance[SEND]({ operation: "media", action: "offer", identifier: this.#identifier, sdp: attempt.pc.localDescription.sdp });
    attempt.timer = setTimeout(() => {
      if (this.#reoffer !== attempt) return;
      warn(`${attempt.what}: no answer from the server`);
      this.#queue(() => this.#withdrawReoffer(attempt), "withdrawing the re-offer");
      if (attempt.track) callHandler(this.#onRequestFailed, this, attempt.what, DISC_REASON.ERROR);
    }, OFFER_WAIT);
    this.#reoffer = attempt;
  }

  async #addVideo() {
    const pc = this.#pc;
    if (!pc || this.#state !== CALL_STATES.CONNECTED) return;
    let camera;
    try {
      camera = await navigator.mediaDevices.getUserMedia({ video: true });
    } catch (err) {
      warn("camera unavailable:", err?.name);
      return;
    }
    const track = camera.getVideoTracks()[0];
    if (this.#pc !== pc || this.#state === CALL_STATES.DISCONNECTED) {
      track.stop();
      return;
    }
    this.#localStream.addTrack(track);
    const sender = pc.addTrack(track, this.#localStream);
    this.#attachLocal();
    await pc.setLocalDescription();
    await waitIceGathering(pc, ICE_GATHER_WAIT);
    // refused or unanswered, the call stays audio-only (#withdrawReoffer)
    this.#sendReoffer({ pc, sender, track, timer: null, what: "renegotiate" });
  }

  /** Our re-offer was refused or never answered: back to the call as it was. */
  async #withdrawReoffer(attempt) {
    if (this.#reoffer !== attempt) return;
    this.#reofferSettled();
    const { pc, sender, track } = attempt;
    if (this.#pc !== pc) return;
    if (pc.signalingState === "have-local-offer") {
      await pc.setLocalDescription({ type: "rollback" });
    }
    if (!track) {
      this.#iceRestartAgain(attempt);
      return;
    }
    pc.removeTrack(sender);
    track.stop();
    this.#localStream?.removeTrack(track);
    this.#attachLocal();
  }

  /** Our re-offer got its answer, lost a glare or is being withdrawn: forget it. */
  #reofferSettled() {
    const attempt = this.#reoffer;
    if (!attempt) return;
    this.#reoffer = null;
    clearTimeout(attempt.timer);
    if (this.#pendingRequest === attempt.what) this.#pendingRequest = null;
  }

  #checkVideo() {
    const pc = this.#pc;
    if (!pc) return;
    const active = pc.getTransceivers().some(
      (t) => t.receiver.track?.kind === "video" && t.currentDirection && !["inactive", "stopped"].includes(t.currentDirection),
    );
    if (active !== this.#videoActive) {
      this.#videoActive = active;
      this.#attachRemote();
      callHandler(this.#onMedia, this);
    }
  }

  /** Microphone (and camera) feed this call only while it is neither held nor muted. */
  #applyMicrophone() {
    const held = this.#state === CALL_STATES.HELD;
    for (const track of this.#localStream?.getTracks() ?? []) {
      track.enabled = !held && !(this.#muted && track.kind === "audio");
    }
    // While this client holds the call, its remote audio is silent too.
    for (const track of this.#remoteStream?.getTracks() ?? []) track.enabled = !held;
  }

  #attachLocal() {
    if (!this.#localVideo) return;
    const tracks = this.#localStream?.getVideoTracks() ?? [];
    this.#localVideo.muted = true;
    const current = this.#localVideo.srcObject;
    if (tracks.length && !(current instanceof MediaStream && current.getVideoTracks()[0] === tracks[0])) {
      this.#localVideo.srcObject = new MediaStream(tracks);
      this.#play(this.#localVideo);
    } else if (!tracks.length && current) {
      this.#localVideo.srcObject = null;
    }
  }

  #attachRemote() {
    const stream = this.#remoteStream;
    if (!stream || !stream.getTracks().length) return;
    const audioTracks = stream.getAudioTracks();
    const videoTracks = stream.getVideoTracks();
    const setSource = (element, tracks) => {
      const current = element.srcObject;
      const same = current instanceof MediaStream && current.getTracks().length === tracks.length &&
        tracks.every((t) => current.getTracks().includes(t));
      if (!same) element.srcObject = new MediaStream(tracks);
      this.#play(element);
    };
    if (this.#audioElement) {
      setSource(this.#audioElement, audioTracks);
      if (this.#remoteVideo && videoTracks.length) {
        this.#remoteVideo.muted = true;
        setSource(this.#remoteVideo, videoTracks);
      }
    } else if (this.#remoteVideo) {
      setSource(this.#remoteVideo, [...audioTracks, ...videoTracks]);
    } else {
      // No element from the application: play the audio anyway.
      this.#fallbackAudio ??= new Audio();
      this.#fallbackAudio.autoplay = true;
      setSource(this.#fallbackAudio, audioTracks);
    }
    if (this.#fallbackAudio && (this.#audioElement || this.#remoteVideo)) {
      this.#fallbackAudio.srcObject = null;
      this.#fallbackAudio = null;
    }
  }

  #play(element) {
    if (typeof element.play !== "function") return;
    const result = element.play();
    if (result && typeof result.catch === "function") {
      result.catch((err) => warn("playback blocked until a user gesture:", err?.name));
    }
  }

  // -- requests and endings -------------------------------------------------------

  #request(name, fields) {
    this.#pendingRequest = name;
    if (!this.#instance[SEND]({ operation: "signaling", identifier: this.#identifier, ...fields })) {
      this.#pendingRequest = null;
      queueMicrotask(() => callHandler(this.#onRequestFailed, this, name, DISC_REASON.ERROR));
    }
  }

  #terminate(wireReason, localReason) {
    const sent = this.#instance[SEND]({
      operation: "signaling",
      action: "terminate",
      identifier: this.#identifier,
      reason: wireReason,
    });
    if (!sent || this.#state === CALL_STATES.IDLE) {
      this[FINISH](localReason);
      return;
    }
    clearTimeout(this.#disconnectTimer);
    this.#disconnectTimer = setTimeout(() => this[FINISH](localReason), DISCONNECT_CONFIRM_WAIT);
  }

  #setState(state) {
    if (this.#state === state || this.#state === CALL_STATES.DISCONNECTED) return;
    this.#state = state;
    log("call", this.#identifier, state);
    this.#applyMicrophone();
    callHandler(this.#onState, this, state);
  }

  [FINISH](reason) {
    if (this.#state === CALL_STATES.DISCONNECTED) return;
    clearTimeout(this.#disconnectTimer);
    clearTimeout(this.#iceTimer);
    this.#reason = reason;
    this.#pendingOffer = null;
    for (const resolve of this.#offerWaiters.splice(0)) resolve();
    if (this.#pc) {
      this.#pc.close();
      this.#pc = null;
    }
    for (const track of this.#localStream?.getTracks() ?? []) track.stop();
    this.#localStream = null;
    this.#remoteStream = null;
    for (const element of [this.#audioElement, this.#localVideo, this.#remoteVideo, this.#fallbackAudio]) {
      if (element) element.srcObject = null;
    }
    this.#fallbackAudio = null;
    this.#instance[INTERNAL]("unregister", this);
    if (this.#videoActive) {
      this.#videoActive = false;
      callHandler(this.#onMedia, this);
    }
    this.#state = CALL_STATES.DISCONNECTED;
    log("call", this.#identifier, "DISCONNECTED", reason);
    callHandler(this.#onState, this, CALL_STATES.DISCONNECTED);
  }
}
