// The Indexify UI's only script: sign in and out, and live invocation pages.
// No framework and no build: served from /ui-assets, allowed by the pages' CSP.
"use strict";

async function postJson(url, body) {
  return fetch(url, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
}

function signIn(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await postJson("/ui/login", { key: form.key.value.trim() });
    if (answer.ok) { window.location.reload(); return; }
    const body = await answer.json().catch(() => ({ detail: answer.statusText }));
    document.getElementById("problem").textContent = body.detail;
  });
}

function signOut(button) {
  button.addEventListener("click", async () => {
    await postJson("/ui/logout", {});
    window.location.assign("/ui");
  });
}

// An invocation page while it runs: follow its progress stream and, on each event, fetch
// the page's live parts again (at most one fetch at a time; events that arrive meanwhile
// cause one more, a moment later, so a burst of events costs two fetches). The stream ends
// with invocation.finished; the last fetch shows the end.
const REFETCH_AFTER_MS = 250;

function followInvocation(live) {
  let fetching = false;
  let again = false;
  let finished = false;
  const refresh = async () => {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const answer = await fetch(live.dataset.fragment, { credentials: "same-origin" });
      if (answer.ok) {
        live.innerHTML = await answer.text();
        live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
        const state = document.getElementById("stream-state");
        if (state) { state.textContent = finished ? "" : "live"; }
      }
    } finally {
      fetching = false;
      if (again) { again = false; window.setTimeout(refresh, REFETCH_AFTER_MS); }
    }
  };
  const source = new EventSource(live.dataset.events, { withCredentials: true });
  for (const kind of ["task.created", "task.started", "task.finished", "invocation.waiting"]) {
    source.addEventListener(kind, refresh);
  }
  source.addEventListener("invocation.finished", () => {
    finished = true;
    source.close();
    live.dataset.live = "false";
    refresh();
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself; a finished invocation's stream is closed above.
    const state = document.getElementById("stream-state");
    if (state && !finished) { state.textContent = "reconnecting…"; }
  });
  source.addEventListener("open", () => {
    const state = document.getElementById("stream-state");
    if (state) { state.textContent = "live"; }
    refresh(); // whatever happened before the stream was open
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const login = document.getElementById("login");
  if (login) { signIn(login); }
  const logout = document.getElementById("logout");
  if (logout) { signOut(logout); }
  const live = document.getElementById("live");
  if (live && live.dataset.live === "true") { followInvocation(live); }
});
