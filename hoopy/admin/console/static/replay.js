// The replay page: asciinema-player (shipped in vendor/) plays the session's recording,
// with a marker for each approval on its timeline.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const el = document.getElementById("player");
  if (!el || !window.AsciinemaPlayer) return;
  let markers = [];
  try { markers = JSON.parse(el.dataset.markers || "[]"); } catch (e) { markers = []; }
  window.hoopyPlayer = window.AsciinemaPlayer.create(el.dataset.cast, el, {
    markers: markers, fit: "width", idleTimeLimit: 2, terminalFontSize: "small", pauseOnMarkers: false,
  });
});
