// falgate playground's service worker: shows the notification the gateway pushed (Web Push, decrypted by
// the browser) when a video is ready or failed, and opens the video when it is clicked.
"use strict";

self.addEventListener("push", (event) => {
  const note = event.data ? event.data.json() : { title: "falgate", body: "A request finished.", data: {} };
  const data = note.data || {};
  event.waitUntil(self.registration.showNotification(note.title, { body: note.body, data, tag: data.request_id }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = event.notification.data && event.notification.data.video_url;
  if (url) event.waitUntil(self.clients.openWindow(url));
});
