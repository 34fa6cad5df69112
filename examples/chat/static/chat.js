// The chat page: sign in, the lobby, and every room the person joined, all
// on one WebSocket through the wsroom client (wsroom.js: js/src/index.js,
// which the server serves with the Go package github.com/wsroom/wsroom/js).
// Everything a person typed is put in the page with
// textContent, never as HTML.

import { connect } from "./wsroom.js";

const $ = (id) => document.getElementById(id);
const cfg = document.body.dataset;
const TOKEN_REQUIRED = cfg.tokenRequired === "true";
const MAX_NAME = Number(cfg.maxName);
const MAX_TEXT = Number(cfg.maxText);
const MAX_UPLOAD = Number(cfg.maxUpload);
const HISTORY = Number(cfg.history);
const ROOM_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;
const INLINE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
const TYPING_SHOWN_MS = 3000; // how long "X is typing" stays without news
const TYPING_EVERY_MS = 1500; // how often we say we are typing
const TITLE = "wsroom chat";

// Storage: the name, token, key and rooms survive reloads (localStorage).
// The key is the person's: every tab of this browser shares it, so that
// the same person may be in a room from several tabs under one name.
const saved = {
  get(k) {
    try { return localStorage.getItem("wsroom-chat." + k) || ""; } catch { return ""; }
  },
  set(k, v) {
    try { localStorage.setItem("wsroom-chat." + k, v); } catch { /* private mode */ }
  },
};
function personKey() {
  let key = saved.get("key");
  if (!/^[A-Za-z0-9_-]{8,64}$/.test(key)) {
    const b = crypto.getRandomValues(new Uint8Array(16));
    key = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    saved.set("key", key);
  }
  return key;
}
function savedRooms() {
  return saved.get("rooms").split(",").filter((r) => ROOM_NAME.test(r));
}

let me = "";
let token = "";
let client = null; // the wsroom client: one connection for every room
let wasOpen = false; // the connection was open once, so a loss is news
const rooms = new Map(); // name → room state (see openRoom)
let current = null; // the room state shown

function show(el, on) {
  if (el) el.hidden = !on;
}

function setError(el, msg) {
  if (!el) return;
  el.textContent = msg || "";
  el.hidden = !msg;
}

function clearErrors() {
  for (const id of ["page-error", "signin-error", "room-error", "chat-error"]) setError($(id), "");
}

// Asks the server whether a name (and token) may join room: a browser
// cannot read why a WebSocket handshake was refused.
async function check(name, room) {
  const q = new URLSearchParams({ name, token, key: personKey() });
  if (room) q.set("room", room);
  const res = await fetch("/api/check?" + q);
  const body = await res.json().catch(() => ({}));
  if (res.ok) return { ok: true, name: body.name };
  return { ok: false, status: res.status, field: body.field, error: body.error || "HTTP " + res.status };
}

const capital = (s) => s.charAt(0).toUpperCase() + s.slice(1);

// Views: exactly one of sign-in, lobby and chat is shown.

function view(which) {
  show($("signin"), which === "signin");
  show($("lobby"), which === "lobby");
  show($("chat"), which === "chat");
  show($("whoami"), which !== "signin");
  show($("status"), which !== "signin" && client !== null);
  clearInterval(lobbyTimer);
  if (which === "lobby") {
    refreshRooms();
    lobbyTimer = setInterval(refreshRooms, 5000);
  }
}

// Sign in.

function showSignin(msg) {
  view("signin");
  $("name").value = me || saved.get("name");
  if ($("token")) $("token").value = token || saved.get("token");
  setError($("signin-error"), msg);
  $("name").focus();
}

$("signin-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = $("name").value.trim();
  if ($("token")) token = $("token").value;
  if (!name) return setError($("signin-error"), "Enter a name.");
  if ([...name].length > MAX_NAME) {
    return setError($("signin-error"), `A name is at most ${MAX_NAME} characters.`);
  }
  if (TOKEN_REQUIRED && !token) return setError($("signin-error"), "Enter the token.");
  let r;
  try {
    r = await check(name, routeRoom());
  } catch {
    return setError($("signin-error"), "The server cannot be reached. Try again in a moment.");
  }
  if (!r.ok) {
    const msg = r.status === 401 ? "Wrong token: ask whoever runs this server for it." : r.error;
    return setError($("signin-error"), capital(msg));
  }
  saved.set("name", r.name);
  saved.set("token", token);
  signedIn(r.name);
});

function signedIn(name) {
  me = name;
  setError($("signin-error"), "");
  $("me").textContent = "Signed in as " + me;
  startClient();
  for (const r of savedRooms()) openRoom(r);
  route();
}

$("rename").addEventListener("click", () => {
  stopClient();
  showSignin("");
});

// The connection.

function startClient() {
  stopClient();
  const q = new URLSearchParams({ name: me, key: personKey() });
  if (token) q.set("token", token);
  wasOpen = false;
  client = connect("/ws?" + q, { onState });
}

function stopClient() {
  if (client) client.close();
  client = null;
  for (const r of rooms.values()) r.list.remove();
  rooms.clear();
  current = null;
  renderRoomList();
  updateTitle();
  show($("status"), false);
}

function onState(state, info) {
  const status = $("status");
  const shown = { connecting: "connecting", open: "connected", reconnecting: "reconnecting", closed: "offline" }[state];
  status.dataset.state = shown;
  // The detail is in a span of its own, which a phone does not show, so
  // that the header keeps its line.
  const detail = document.createElement("span");
  detail.className = "status-detail";
  if (shown === "reconnecting") detail.textContent = ` (next try in ${Math.ceil((info.delay || 0) / 1000)} s)`;
  status.replaceChildren({
    connecting: "Connecting…",
    connected: "Connected",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  }[shown], detail);
  if (state === "open") {
    if (wasOpen) for (const r of rooms.values()) addNote(r, "Back online: missed messages follow.", "back");
    wasOpen = true;
    setError($("chat-error"), "");
  }
  if (state === "reconnecting") {
    if (info.wasOpen) {
      for (const r of rooms.values()) {
        addNote(r, "Connection lost. Messages you send wait and go out when it is back.", "lost");
        r.members.clear();
        renderPresence(r);
      }
    } else if (!wasOpen) diagnose();
  }
}

// diagnose asks the server why the first handshake failed; if retrying
// cannot help (wrong token, bad name), it stops and asks for a new sign-in.
let diagnosing = false;
async function diagnose() {
  if (diagnosing || !client) return;
  diagnosing = true;
  try {
    const r = await check(me, "");
    if (!r.ok && client) {
      stopClient();
      showSignin(r.status === 401 ? "Wrong token: ask whoever runs this server for it." : capital(r.error));
    }
  } catch {
    // The server is down: keep retrying.
  } finally {
    diagnosing = false;
  }
}

// Rooms.

// openRoom joins a room (once) and returns its state.
function openRoom(name) {
  let r = rooms.get(name);
  if (r) return r;
  const list = document.createElement("ol");
  list.className = "messages";
  list.hidden = true;
  list.dataset.room = name;
  $("timeline").append(list);
  r = {
    name,
    list,
    unread: 0,
    lastDay: "",
    members: new Map(), // connection id → name
    names: null, // the names last shown, for "joined" and "left" notes; null until joined
    until: 0, // seq of the last message the latest join replays: notes wait for it
    seen: 0, // seq of the last numbered message shown
    held: [], // notes waiting for the replay to end
    heldTimer: null,
    gone: false, // the join was refused, or the room left: it cannot be used
    nameTaken: false, // refused for the name
    typing: new Map(), // name → timer
    stick: true, // follows the newest message
    error: "",
    base: null, // {epoch, seq} of the first joined: messages up to it are history
  };
  rooms.set(name, r);
  list.addEventListener("scroll", () => {
    r.stick = atBottom(list);
    if (r === current) show($("jump"), !r.stick);
  });
  r.room = client.join(name, {
    last: HISTORY,
    members: true,
    onMessage: (data, msg) => onMessage(r, data, msg),
    onJoined(f) {
      // What the room held when first joined is history, not unread.
      if (!r.base) r.base = { epoch: f.epoch, seq: f.seq || 0 };
      // The history (or, on a resume, what was missed) up to f.seq comes
      // next: "joined" and "left" notes wait for it, to be in time order.
      r.until = f.seq || 0;
      r.members.clear();
      for (const m of f.members || []) r.members.set(m.id, m.info);
      r.gone = r.nameTaken = false;
      renderPresence(r);
      if (r.error) setRoomError(r, "");
      renderRoomState(r);
    },
    onPresence(f) {
      for (const m of f.join || []) r.members.set(m.id, m.info);
      for (const id of f.leave || []) r.members.delete(id);
      renderPresence(r);
    },
    onResync() {
      list.replaceChildren();
      r.lastDay = "";
      r.base = null;
      r.seen = 0;
      r.held = [];
    },
    onError(err) {
      // The join failed for good: the room is not usable until a new
      // sign-in, and for a name someone else has, with another name.
      r.gone = true;
      r.nameTaken = err.code === "forbidden";
      r.members.clear();
      setRoomError(r, r.nameTaken ? capital(err.message) + ": pick another name to join it." : "Cannot join " + name + ": " + err.message);
      renderRoomState(r);
    },
    onLeft(f) {
      r.gone = true;
      r.members.clear();
      setRoomError(r, "You were taken out of " + name + " (" + f.reason + ").");
      renderRoomState(r);
    },
  });
  saved.set("rooms", [...rooms.keys()].join(","));
  renderRoomList();
  return r;
}

function setRoomError(r, msg) {
  r.error = msg;
  if (r === current) setError($("chat-error"), msg);
}

// renderRoomState enables the composer and shows who is here in a room
// that is joined or being joined; in one whose join was refused it
// disables them, and offers another name when the name was the reason.
function renderRoomState(r) {
  if (r !== current) return;
  for (const id of ["text", "file"]) $(id).disabled = r.gone;
  $("send-form").querySelector("button[type=submit]").disabled = r.gone;
  show($("people"), !r.gone);
  show($("refused"), r.nameTaken);
  // The keyboard's focus leaves the disabled box, for the way out.
  if (r.gone && document.activeElement === $("text")) {
    if (r.nameTaken) $("pick-name").focus();
    else $("text").blur();
  }
}

$("pick-name").addEventListener("click", () => {
  const msg = current ? current.error : "";
  stopClient();
  showSignin(msg);
  $("name").select();
});

// showRoom shows a room, joining it if needed, without reloading the page.
function showRoom(name) {
  clearErrors();
  const r = openRoom(name);
  if (current) current.list.hidden = true;
  current = r;
  r.list.hidden = false;
  r.unread = 0;
  view("chat");
  $("room-title").textContent = "#" + name;
  $("text").placeholder = "Message #" + name;
  setError($("chat-error"), r.error);
  renderRoomList();
  renderPresence(r);
  renderTyping(r);
  renderRoomState(r);
  updateTitle();
  scrollDown(r);
  show($("jump"), false);
  if (!r.gone) $("text").focus();
}

function renderRoomList() {
  $("my-rooms").replaceChildren(...[...rooms.values()].map((r) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.room = r.name;
    b.setAttribute("aria-current", r === current ? "true" : "false");
    const n = document.createElement("span");
    n.textContent = "#" + r.name;
    b.append(n);
    if (r.unread > 0) {
      const u = document.createElement("span");
      u.className = "unread";
      u.textContent = r.unread;
      u.setAttribute("aria-label", r.unread + " unread");
      b.append(u);
    }
    b.addEventListener("click", () => go("/r/" + encodeURIComponent(r.name)));
    li.append(b);
    return li;
  }));
}

function updateTitle() {
  let n = 0;
  for (const r of rooms.values()) n += r.unread;
  const base = current ? current.name + " · " + TITLE : TITLE;
  document.title = (n > 0 ? `(${n}) ` : "") + base;
}

// Navigation: /r/NAME shows a room, / the lobby; links within the page
// change the address without a reload.

function go(path) {
  if (location.pathname !== path) history.pushState(null, "", path);
  route();
}

// routeRoom returns the room the address names, or "".
function routeRoom() {
  const m = /^\/r\/([^/]+)$/.exec(location.pathname);
  const name = m ? decodeURIComponent(m[1]) : "";
  return ROOM_NAME.test(name) ? name : "";
}

function route() {
  const name = routeRoom();
  if (name) return showRoom(name);
  if (!/^\/r\//.test(location.pathname)) clearErrors(); // keep the server's word on a bad room name
  if (current) current.list.hidden = true;
  current = null;
  renderRoomList();
  updateTitle();
  view("lobby");
}

window.addEventListener("popstate", () => me && route());
for (const id of ["home", "all-rooms"]) {
  $(id).addEventListener("click", (e) => {
    if (!me) return;
    e.preventDefault();
    go("/");
  });
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && current) {
    current.unread = 0;
    renderRoomList();
    updateTitle();
  }
});

// The lobby.

let lobbyTimer = null;

async function refreshRooms() {
  let list;
  try {
    const res = await fetch("/api/rooms?" + new URLSearchParams({ token }));
    if (!res.ok) return;
    list = (await res.json()).rooms;
  } catch {
    return;
  }
  $("rooms").replaceChildren(...list.map((r) => {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.href = "/r/" + encodeURIComponent(r.name);
    a.textContent = r.name;
    a.addEventListener("click", (e) => {
      e.preventDefault();
      go(a.pathname);
    });
    const n = document.createElement("span");
    n.className = "hint";
    n.textContent = r.people > 0 ? ` ${r.people} here` : " (history)";
    li.append(a, n);
    return li;
  }));
  show($("rooms-empty"), list.length === 0);
}

$("goto-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("room").value.trim();
  if (!ROOM_NAME.test(name)) {
    setError($("room-error"), `"${name}" is not a valid room name: ` +
      "a room name is 1 to 64 letters, digits, '-', '_' or '.', and does not start with '.'.");
    return;
  }
  $("room").value = "";
  go("/r/" + encodeURIComponent(name));
});

// Messages.

const atBottom = (el) => el.scrollHeight - el.scrollTop - el.clientHeight < 40;

function scrollDown(r) {
  r.list.scrollTop = r.list.scrollHeight;
  r.stick = true;
}

// append adds an element to a room's timeline, following it if the room
// was at its newest message.
function append(r, el) {
  const stick = r.stick;
  r.list.append(el);
  if (stick) scrollDown(r);
  else if (r === current) show($("jump"), true);
}

$("jump").addEventListener("click", () => {
  if (current) scrollDown(current);
  show($("jump"), false);
});

function dayLabel(d) {
  const today = new Date();
  const yesterday = new Date(today.getTime() - 864e5);
  if (d.toDateString() === today.toDateString()) return "Today";
  if (d.toDateString() === yesterday.toDateString()) return "Yesterday";
  return d.toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

function addDay(r, d) {
  const key = d.toDateString();
  if (key === r.lastDay) return;
  r.lastDay = key;
  const li = document.createElement("li");
  li.className = "day";
  const s = document.createElement("span");
  s.textContent = dayLabel(d);
  li.append(s);
  append(r, li);
}

function onMessage(r, data, msg) {
  if (msg.seq) {
    r.seen = msg.seq;
    if (r.seen >= r.until) flushNotes(r);
  }
  switch (data && data.type) {
    case "msg":
    case "file": {
      const time = new Date(msg.time || Date.now());
      addDay(r, time);
      append(r, renderMessage(r, data, time, msg.seq));
      stopTyping(r, data.name);
      const old = r.base && msg.epoch === r.base.epoch && msg.seq <= r.base.seq;
      if (!old && data.name !== me && (r !== current || document.visibilityState === "hidden")) {
        r.unread++;
        renderRoomList();
        updateTitle();
      }
      break;
    }
    case "typing":
      // Typing notices are published ephemeral; one that was stored
      // (by a client other than this page) is old news.
      if (!msg.seq) startTyping(r, data.name);
      break;
  }
}

function renderMessage(r, data, time, seq) {
  const li = document.createElement("li");
  li.className = "msg" + (data.name === me ? " mine" : "");
  if (seq) li.dataset.seq = seq;
  const meta = document.createElement("p");
  meta.className = "meta";
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = data.name || "someone";
  const when = document.createElement("time");
  when.dateTime = time.toISOString();
  when.textContent = time.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  meta.append(who, " ", when);
  li.append(meta);
  if (data.type === "file") li.append(renderFile(r, data));
  else {
    const p = document.createElement("p");
    p.className = "text";
    linkify(p, String(data.text));
    li.append(p);
  }
  return li;
}

// linkify puts text in el, with the http and https URLs in it as links.
// Everything is text nodes and created elements: nothing is parsed as HTML.
function linkify(el, text) {
  const re = /\bhttps?:\/\/[^\s<>"']+/gi;
  let last = 0;
  for (const m of text.matchAll(re)) {
    let url = m[0].replace(/[.,;:!?)\]]+$/, "");
    let href;
    try {
      href = new URL(url);
    } catch {
      continue;
    }
    if (href.protocol !== "http:" && href.protocol !== "https:") continue;
    el.append(text.slice(last, m.index));
    const a = document.createElement("a");
    a.href = href.href;
    a.textContent = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    el.append(a);
    last = m.index + url.length;
  }
  el.append(text.slice(last));
}

function addNote(r, text, kind) {
  const li = document.createElement("li");
  li.className = "note" + (kind ? " " + kind : "");
  li.textContent = text;
  append(r, li);
}

// presenceNote adds a "joined" or "left" note after the messages the
// latest join replays (history, or what was missed), which arrive after
// the join's member list: it waits for the last of them (a second at
// most, should it never come).
function presenceNote(r, text) {
  if (r.seen >= r.until) return addNote(r, text);
  r.held.push(text);
  clearTimeout(r.heldTimer);
  r.heldTimer = setTimeout(() => flushNotes(r), 1000);
}

function flushNotes(r) {
  clearTimeout(r.heldTimer);
  const held = r.held;
  r.held = [];
  for (const text of held) addNote(r, text);
}

function formatSize(n) {
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KB";
  return (n / (1 << 20)).toFixed(1) + " MB";
}

// What a file is, for people.
const KINDS = {
  "text/plain": "Text",
  "application/pdf": "PDF document",
  "application/zip": "ZIP archive",
  "application/x-gzip": "Gzip archive",
  "image/bmp": "BMP image",
  "audio/mpeg": "MP3 audio",
  "audio/wave": "WAV audio",
  "audio/ogg": "Ogg audio",
  "application/ogg": "Ogg media",
  "video/mp4": "MP4 video",
  "video/webm": "WebM video",
};
const fileKind = (mime) => KINDS[String(mime).split(";")[0]] || "File";

function renderFile(r, f) {
  const box = document.createElement("p");
  box.className = "file";
  // Links only to this server's files; the server builds them.
  if (typeof f.url !== "string" || !f.url.startsWith("/files/")) {
    box.textContent = "(a file with a bad link)";
    return box;
  }
  const a = document.createElement("a");
  a.href = f.url;
  if (INLINE_TYPES.has(f.mime)) {
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    const img = document.createElement("img");
    img.src = f.url;
    img.alt = f.filename;
    img.className = "shared";
    img.width = 320;
    img.height = 200;
    // The box is fixed, but follow the newest anyway once it is drawn.
    img.addEventListener("load", () => r.stick && scrollDown(r));
    a.append(img);
    box.append(a);
  } else {
    a.download = f.filename;
    a.textContent = f.filename;
    const kind = document.createElement("span");
    kind.className = "file-kind";
    kind.textContent = ` ${fileKind(f.mime)}, ${formatSize(f.size)}`;
    box.append(a, kind);
  }
  return box;
}

// Presence: a person may be here from several tabs, so names are counted
// once.
function renderPresence(r) {
  r = r || current;
  if (!r) return;
  const names = [...new Set(r.members.values())].sort((a, b) => a.localeCompare(b));
  // The first member list (of the first join) is who was here already:
  // notes tell the changes after it. An empty list is no list (not
  // joined yet, or the connection is down): the joiner is always in it.
  if (r.names && r.members.size > 0) {
    for (const n of names) if (!r.names.includes(n)) presenceNote(r, n + " joined");
    for (const n of r.names) if (!names.includes(n)) presenceNote(r, n + " left");
  }
  if (r.members.size > 0) r.names = names;
  for (const n of r.typing.keys()) if (!names.includes(n)) stopTyping(r, n);
  if (r !== current) return;
  $("count").textContent = names.length;
  $("presence").replaceChildren(...names.map((n) => {
    const li = document.createElement("li");
    li.textContent = n;
    if (n === me) li.className = "mine";
    return li;
  }));
}

function startTyping(r, name) {
  if (!name || name === me) return;
  clearTimeout(r.typing.get(name));
  r.typing.set(name, setTimeout(() => stopTyping(r, name), TYPING_SHOWN_MS));
  renderTyping(r);
}

function stopTyping(r, name) {
  if (!r.typing.has(name)) return;
  clearTimeout(r.typing.get(name));
  r.typing.delete(name);
  renderTyping(r);
}

function renderTyping(r) {
  if (r !== current) return;
  const names = [...r.typing.keys()];
  let text = "";
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = "Several people are typing…";
  $("typing").textContent = text;
}

// Sending. A message is published with an id; while the connection is
// down the client keeps it and sends it, with the same id, once the room
// is joined again, so it is published exactly once. Until its ack it is
// shown as waiting.

let lastTyping = 0;

function sendText() {
  const box = $("text");
  const text = box.value.trim();
  if (!text || !current) return;
  if ([...text].length > MAX_TEXT) {
    setError($("chat-error"), `A message is at most ${MAX_TEXT} characters.`);
    return;
  }
  setError($("chat-error"), current.error);
  box.value = "";
  fitText();
  lastTyping = 0;
  const r = current;
  const pending = renderMessage(r, { type: "msg", name: me, text }, new Date());
  pending.classList.add("pending");
  append(r, pending);
  r.room.publish({ type: "msg", text }).then(
    () => pending.remove(),
    (err) => {
      pending.remove();
      setRoomError(r, `Your message was not sent (${err.message}): “${text.slice(0, 80)}”`);
    },
  );
}

$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  sendText();
});
$("text").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendText();
  }
});
// fitText makes the message box as high as its lines, up to its CSS
// max-height, beyond which it scrolls, keeping the caret in view.
function fitText() {
  const box = $("text");
  const atEnd = box.selectionEnd === box.value.length;
  box.style.height = "auto";
  const border = box.offsetHeight - box.clientHeight;
  box.style.height = box.scrollHeight + border + "px";
  if (atEnd) box.scrollTop = box.scrollHeight;
}

$("text").addEventListener("input", () => {
  fitText();
  const now = Date.now();
  if ($("text").value.trim() && now - lastTyping > TYPING_EVERY_MS && current && current.room.state === "joined") {
    lastTyping = now;
    current.room.publish({ type: "typing" }, { ephemeral: true }).catch(() => {});
  }
});
$("file").addEventListener("change", async () => {
  const input = $("file");
  const file = input.files[0];
  input.value = "";
  if (file && current) await upload(current, file);
});

async function upload(r, file) {
  const err = $("chat-error");
  if (file.size > MAX_UPLOAD) {
    setError(err, `${file.name} is too large: the limit is ${MAX_UPLOAD >> 20} MiB.`);
    return;
  }
  setError(err, "");
  const note = $("typing");
  note.textContent = `Uploading ${file.name}…`;
  const q = new URLSearchParams({ filename: file.name, name: me, key: personKey(), token });
  let res, body;
  try {
    res = await fetch(`/api/rooms/${encodeURIComponent(r.name)}/files?${q}`, {
      method: "POST",
      headers: { "Content-Type": file.type || "application/octet-stream" },
      body: file,
    });
    body = await res.json().catch(() => ({}));
  } catch {
    setError(err, `Uploading ${file.name} failed: the server cannot be reached.`);
    return;
  } finally {
    renderTyping(r);
  }
  if (!res.ok) {
    const why = body.error || (res.status === 413 ? `the limit is ${MAX_UPLOAD >> 20} MiB` : "HTTP " + res.status);
    setError(err, `${file.name} was not shared: ${why}.`);
    return;
  }
  r.room.publish({ type: "file", id: body.id }).catch((e) => {
    setRoomError(r, `${file.name} was uploaded but not shared (${e.message}). Try again.`);
  });
}

// Start.

async function start() {
  me = saved.get("name");
  token = saved.get("token");
  if (!me || (TOKEN_REQUIRED && !token)) return showSignin("");
  let r;
  try {
    r = await check(me, "");
  } catch {
    return signedIn(me); // server down: the client keeps trying
  }
  if (!r.ok) return showSignin(r.status === 401 ? "Wrong token: ask whoever runs this server for it." : capital(r.error));
  signedIn(r.name);
}

// On a phone the people list starts folded, to leave the screen to the
// messages.
if (matchMedia("(max-width: 40rem)").matches) $("people").open = false;

start();

// For tests and the curious: the state of the page.
window.chat = { rooms, get current() { return current; }, get client() { return client; } };
