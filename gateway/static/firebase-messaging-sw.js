// firebase-messaging-sw.js: push wake-up for the web phone (json-v1 §8) - a TEMPLATE.
//
// Firebase requires this file at the root of the site. Replace the FIREBASE_* placeholders
// with the web configuration of your Firebase project (the same values the gateway
// passes to the page as notificationConfiguration) and FIREBASE_SDK_VERSION with the
// version of the Firebase JS SDK you use (e.g. 10.12.2).
//
// When the gateway has an incoming call for a registration with no connection it sends a
// data message with wakeupToken, identifier, callIdentifier, caller and url. This worker
// shows a notification; a click opens (or focuses) the phone with
// ?wakeupToken=...&identifier=..., and the page calls
// tryRestoreLogin(server, secure, true, identifier, onRestoreCall, wakeupToken).

/* global importScripts, firebase */

const CONFIG = {
  apiKey: "FIREBASE_API_KEY",
  authDomain: "FIREBASE_AUTH_DOMAIN",
  projectId: "FIREBASE_PROJECT_ID",
  messagingSenderId: "FIREBASE_MESSAGING_SENDER_ID",
  appId: "FIREBASE_APP_ID",
};
const SDK_VERSION = "FIREBASE_SDK_VERSION";

const configured = !Object.values(CONFIG).some((v) => v.startsWith("FIREBASE_")) && !SDK_VERSION.startsWith("FIREBASE_");

function wakeupUrl(data) {
  const url = new URL(data.url || "/", self.location.origin);
  if (data.wakeupToken) url.searchParams.set("wakeupToken", data.wakeupToken);
  if (data.identifier) url.searchParams.set("identifier", data.identifier);
  return url.href;
}

function showCall(data) {
  const caller = data.callerName || data.caller || "unknown caller";
  return self.registration.showNotification("Incoming call", {
    body: `Call from ${caller}`,
    tag: data.callIdentifier || "incoming-call",
    renotify: true,
    requireInteraction: true,
    data: { url: wakeupUrl(data) },
  });
}

if (configured) {
  importScripts(
    `https://www.gstatic.com/firebasejs/${SDK_VERSION}/firebase-app-compat.js`,
    `https://www.gstatic.com/firebasejs/${SDK_VERSION}/firebase-messaging-compat.js`,
  );
  firebase.initializeApp(CONFIG);
  firebase.messaging().onBackgroundMessage((payload) => showCall(payload.data || {}));
} else {
  // Plain Web Push (a webhook push service): the payload is the JSON data message.
  self.addEventListener("push", (event) => {
    let data = {};
    try {
      data = event.data ? event.data.json() : {};
    } catch {
      data = {};
    }
    event.waitUntil(showCall(data.data || data));
  });
}

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = event.notification.data && event.notification.data.url;
  if (!target) return;
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const path = new URL(target).pathname;
      for (const client of windows) {
        if (new URL(client.url).pathname === path && "navigate" in client) {
          return client.navigate(target).then((c) => c && c.focus());
        }
      }
      return self.clients.openWindow(target);
    }),
  );
});
