// The hoopy console: live inbox (polls the server-rendered cards; the server escapes
// everything), and ages and time left that count by themselves. No inline script anywhere.
"use strict";

function fmt(seconds) {
  seconds = Math.max(0, Math.floor(seconds));
  if (seconds >= 86400) return Math.floor(seconds / 86400) + "d " + Math.floor((seconds % 86400) / 3600) + "h";
  if (seconds >= 3600) return Math.floor(seconds / 3600) + "h " + Math.floor((seconds % 3600) / 60) + "m";
  if (seconds >= 60) return Math.floor(seconds / 60) + "m " + (seconds % 60) + "s";
  return seconds + "s";
}

function tick() {
  const now = Date.now() * 1000;
  for (const el of document.querySelectorAll("[data-since]")) {
    el.textContent = fmt((now - Number(el.dataset.since)) / 1e6);
  }
  for (const el of document.querySelectorAll("[data-until]")) {
    const left = (Number(el.dataset.until) - now) / 1e6;
    el.textContent = left > 0 ? fmt(left) : "expired";
    el.classList.toggle("soon", left < 60);
  }
}

// Cards are merged by id: a card being read (or a reason being typed) is never replaced.
function merge(inbox, html) {
  const fresh = document.createElement("template");
  fresh.innerHTML = html;  // server-rendered and escaped; the CSP allows no inline script
  const wanted = [...fresh.content.querySelectorAll("article.card")];
  const ids = new Set(wanted.map((c) => c.id));
  for (const old of [...inbox.querySelectorAll("article.card")]) {
    if (!ids.has(old.id)) old.remove();
  }
  let before = inbox.firstElementChild;
  for (const card of wanted) {
    const have = document.getElementById(card.id);
    if (have) {
      before = have.nextElementSibling;
      continue;
    }
    card.classList.add("new");
    inbox.insertBefore(card, before && before.matches("article.card") ? before : inbox.querySelector("article.card"));
  }
  const empty = inbox.querySelector("#empty");
  if (wanted.length && empty) empty.remove();
  if (!wanted.length && !empty) {
    const p = document.createElement("p");
    p.id = "empty"; p.className = "empty"; p.textContent = "Nothing waits for a decision.";
    inbox.appendChild(p);
  }
  const count = document.getElementById("pending-count");
  if (count) count.textContent = String(wanted.length);
}

async function poll(inbox) {
  try {
    const r = await fetch(inbox.dataset.poll, {credentials: "same-origin", cache: "no-store"});
    if (r.status === 401) { window.location.assign("/ui/signin"); return; }
    if (r.ok) merge(inbox, await r.text());
  } catch (e) { /* the gateway restarts: try again */ }
  setTimeout(() => poll(inbox), 2000);
}

document.addEventListener("DOMContentLoaded", () => {
  tick();
  setInterval(tick, 1000);
  const inbox = document.getElementById("inbox");
  if (inbox && inbox.dataset.poll) setTimeout(() => poll(inbox), 2000);
  document.addEventListener("submit", (ev) => {
    const button = ev.submitter;
    if (button && button.classList.contains("deny")) {
      const reason = ev.target.querySelector("textarea[name=reason]");
      if (reason && !reason.value.trim() && !window.confirm("Deny without a reason?")) ev.preventDefault();
    }
  });
});
