// falgate playground, "notify me when done": a Web Push subscription made through a service worker
// (/sw.js) and registered with POST /v1/devices, so a finished video is announced with the tab closed.
// Offered only when the gateway has a VAPID key (GET /v1/push/vapid-public-key answers 200).
"use strict";

(() => {
  const KEY_STORAGE = "falgate.playground.key"; // the key playground.js keeps for this tab
  const button = document.getElementById("notify");
  const status = document.getElementById("notify-status");
  if (!button || !("serviceWorker" in navigator) || !("PushManager" in window)) return;

  function headers(extra = {}) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
  }

  function fromBase64Url(text) {
    const base64 = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
    return Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  }

  async function subscribe(publicKey) {
    button.disabled = true;
    status.textContent = "";
    try {
      if ((await Notification.requestPermission()) !== "granted") throw new Error("notifications are blocked");
      const registration = await navigator.serviceWorker.register("/sw.js");
      await navigator.serviceWorker.ready;
      const subscription =
        (await registration.pushManager.getSubscription()) ||
        (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: fromBase64Url(publicKey) }));
      const answer = await fetch("/v1/devices", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify({ platform: "webpush", subscription: subscription.toJSON(), label: "playground" }),
      });
      const body = await answer.json().catch(() => null);
      if (!answer.ok) throw new Error((body && typeof body.detail === "string" && body.detail) || `the gateway answered ${answer.status}`);
      button.dataset.device = body.id;
      status.textContent = "You will be notified when each video is ready, even with this tab closed.";
    } catch (error) {
      status.textContent = `Notifications unavailable: ${error.message}`;
      button.disabled = false;
    }
  }

  fetch("/v1/push/vapid-public-key")
    .then((answer) => (answer.ok ? answer.json() : null))
    .then((body) => {
      if (!body) return;
      button.hidden = false;
      button.addEventListener("click", () => subscribe(body.public_key));
    })
    .catch(() => {}); // no Web Push on this gateway: the button stays hidden
})();
