// actorq dashboard: refreshes the parts of a page marked data-live="URL" by
// fetching that URL's HTML fragment every few seconds. No other script runs.
"use strict";
(function () {
  var period = parseInt(document.body.getAttribute("data-refresh"), 10) || 2000;
  var parts = document.querySelectorAll("[data-live]");
  if (!parts.length) return;
  function refresh(part) {
    return fetch(part.getAttribute("data-live"), {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (response.status === 401) { window.location.href = "/login"; return null; }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          part.innerHTML = html;
          part.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () { /* the server is away: try again next round */ });
  }
  function tick() {
    if (document.hidden) { window.setTimeout(tick, period); return; }
    Promise.all(Array.prototype.map.call(parts, refresh)).then(function () {
      window.setTimeout(tick, period);
    });
  }
  window.setTimeout(tick, period);
})();
