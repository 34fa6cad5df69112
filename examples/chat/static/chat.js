// The chat page: sign in, the lobby, and one room over WSRoom (wsroom.js).
// Everything a person typed is put in the page with textContent, never as
// HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const cfg = document.body.dataset;
  const ROOM = cfg.room;
  const TOKEN_REQUIRED = cfg.tokenRequired === "true";
  const MAX_NAME = Number(cfg.maxName);
  const MAX_TEXT = Number(cfg.maxText);
  const MAX_UPLOAD = Number(cfg.maxUpload);
  const ROOM_NAME = /^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$/;
  const INLINE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp"]);
  const TYPING_SHOWN_MS = 3000; // how long "X is typing" stays without news
  const TYPING_EVERY_MS = 1500; // how often we say we are typing

  // Storage: the name and token survive reloads (localStorage); the tab key
  // identifies this tab (sessionStorage), so that a reconnect can take over
  // its own name before the server noticed the old connection was gone.
  const saved = {
    get(k) {
      try { return localStorage.getItem("wsroom-chat." + k) || ""; } catch { return ""; }
    },
    set(k, v) {
      try { localStorage.setItem("wsroom-chat." + k, v); } catch { /* private mode */ }
    },
  };
  function tabKey() {
    let key = "";
    try { key = sessionStorage.getItem("wsroom-chat.key") || ""; } catch { /* ignore */ }
    if (!/^[A-Za-z0-9_-]{8,64}$/.test(key)) {
      const b = crypto.getRandomValues(new Uint8Array(16));
      key = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
      try { sessionStorage.setItem("wsroom-chat.key", key); } catch { /* ignore */ }
    }
    return key;
  }

  let me = "";
  let token = "";
  let room = null; // the WSRoom

  function show(el, on) {
    if (el) el.hidden = !on;
  }

  function setError(el, msg) {
    if (!el) return;
    el.textContent = msg || "";
    el.hidden = !msg;
  }

  // Asks the server whether a name (and token) may join ROOM: a browser
  // cannot read why a WebSocket handshake was refused.
  async function check(name) {
    const q = new URLSearchParams({ name, token });
    if (ROOM) {
      q.set("room", ROOM);
      q.set("key", tabKey());
    }
    const res = await fetch("/api/check?" + q);
    const body = await res.json().catch(() => ({}));
    if (res.ok) return { ok: true, name: body.name };
    return { ok: false, status: res.status, field: body.field, error: body.error || "HTTP " + res.status };
  }

  // Sign in.

  function showSignin(msg) {
    show($("lobby"), false);
    show($("chat"), false);
    show($("whoami"), false);
    show($("signin"), true);
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
      r = await check(name);
    } catch {
      return setError($("signin-error"), "The server cannot be reached. Try again in a moment.");
    }
    if (!r.ok) {
      const msg = r.status === 401 ? "Wrong token: ask whoever runs this server for it." : r.error;
      return setError($("signin-error"), msg.charAt(0).toUpperCase() + msg.slice(1));
    }
    saved.set("name", r.name);
    saved.set("token", token);
    signedIn(r.name);
  });

  function signedIn(name) {
    me = name;
    $("me").textContent = "Signed in as " + me;
    show($("whoami"), true);
    show($("signin"), false);
    if (ROOM) enterRoom();
    else showLobby();
  }

  $("rename").addEventListener("click", () => {
    if (room) room.close();
    room = null;
    show($("status"), false);
    showSignin("");
  });

  // The lobby.

  let lobbyTimer = null;

  function showLobby() {
    show($("lobby"), true);
    refreshRooms();
    clearInterval(lobbyTimer);
    lobbyTimer = setInterval(refreshRooms, 5000);
  }

  async function refreshRooms() {
    let rooms;
    try {
      const res = await fetch("/api/rooms?" + new URLSearchParams({ token }));
      if (!res.ok) return;
      rooms = (await res.json()).rooms;
    } catch {
      return;
    }
    const list = $("rooms");
    list.replaceChildren(...rooms.map((r) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = "/r/" + encodeURIComponent(r.name);
      a.textContent = r.name;
      const n = document.createElement("span");
      n.className = "hint";
      n.textContent = ` ${r.clients} ${r.clients === 1 ? "person" : "people"}`;
      li.append(a, n);
      return li;
    }));
    show($("rooms-empty"), rooms.length === 0);
  }

  if ($("goto-form")) {
    $("goto-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const name = $("room").value.trim();
      if (!ROOM_NAME.test(name)) {
        setError($("room-error"), `"${name}" is not a valid room name: ` +
          "a room name is 1 to 64 letters, digits, '-', '_' or '.', and does not start with '.'.");
        return;
      }
      location.assign("/r/" + encodeURIComponent(name));
    });
  }

  // The room.

  const messages = $("messages");
  let presenceVersion = 0;
  let present = null; // names in the room, after the first presence message
  const typing = new Map(); // name → timer

  function enterRoom() {
    show($("chat"), true);
    show($("status"), true);
    messages.replaceChildren();
    const q = new URLSearchParams({ name: me, key: tabKey() });
    if (token) q.set("token", token);
    room = new WSRoom("/rooms/" + encodeURIComponent(ROOM) + "?" + q, {
      onMessage,
      onState,
      onReset() {
        messages.replaceChildren();
      },
      shouldReconnect,
    });
    $("text").focus();
  }

  function onState(state, info) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = {
      connecting: "Connecting…",
      connected: "Connected",
      reconnecting: `Reconnecting… (next try in ${Math.ceil((info.delay || 0) / 1000)} s)`,
      offline: "Offline",
    }[state];
    if (state === "connected") {
      presenceVersion = 0;
      present = null;
      setError($("chat-error"), "");
    }
    if (state === "reconnecting" && !info.wasOpen) diagnose();
  }

  function shouldReconnect(event) {
    if (event.code === 4001) {
      room = null;
      show($("status"), false);
      showSignin(`Someone in this room is already called ${me}: pick another name.`);
      return false;
    }
    if (event.code === 4002) {
      setError($("chat-error"), "You joined this room again from another window with the same name, so this one stopped. Reload the page to use it here.");
      return false;
    }
    if (event.code === 1008 && event.reason) {
      setError($("chat-error"), "The server closed the connection: " + event.reason);
    }
    return true;
  }

  // diagnose asks the server why a handshake failed; if retrying cannot
  // help (wrong token, name taken), it stops and asks for a new sign-in.
  let diagnosing = false;
  async function diagnose() {
    if (diagnosing || !room) return;
    diagnosing = true;
    try {
      const r = await check(me);
      if (!r.ok && room) {
        room.close();
        room = null;
        show($("status"), false);
        showSignin(r.status === 401 ? "Wrong token: ask whoever runs this server for it." : r.error);
      }
    } catch {
      // The server is down: keep retrying.
    } finally {
      diagnosing = false;
    }
  }

  function onMessage(data, env) {
    switch (data && data.type) {
      case "msg":
        stopTyping(data.name);
        addMessage(env, data.name, (li) => {
          const p = document.createElement("p");
          p.className = "text";
          p.textContent = data.text;
          li.append(p);
        });
        break;
      case "file":
        stopTyping(data.name);
        addMessage(env, data.name, (li) => li.append(renderFile(data)));
        break;
      case "presence":
        updatePresence(data);
        break;
      case "typing":
        startTyping(data.name);
        break;
      case "error":
        setError($("chat-error"), data.error);
        break;
    }
  }

  function nearBottom() {
    return messages.scrollHeight - messages.scrollTop - messages.clientHeight < 80;
  }

  function addMessage(env, name, fill) {
    const stick = nearBottom();
    const li = document.createElement("li");
    li.className = "msg" + (name === me ? " mine" : "");
    if (env.seq) li.dataset.seq = env.seq;
    const head = document.createElement("p");
    head.className = "meta";
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = name;
    head.append(who);
    if (env.time) {
      const t = document.createElement("time");
      const d = new Date(env.time);
      t.dateTime = d.toISOString();
      t.textContent = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      head.append(" ", t);
    }
    li.append(head);
    fill(li);
    messages.append(li);
    if (stick) messages.scrollTop = messages.scrollHeight;
  }

  function addNote(text) {
    const stick = nearBottom();
    const li = document.createElement("li");
    li.className = "note";
    li.textContent = text;
    messages.append(li);
    if (stick) messages.scrollTop = messages.scrollHeight;
  }

  function formatSize(n) {
    if (n < 1024) return n + " B";
    if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
    return (n / (1 << 20)).toFixed(1) + " MiB";
  }

  function renderFile(f) {
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
      a.rel = "noopener";
      const img = document.createElement("img");
      img.src = f.url;
      img.alt = f.filename;
      img.className = "shared";
      a.append(img);
      box.append(a);
    } else {
      a.download = f.filename;
      a.textContent = f.filename;
      box.append(a, ` (${formatSize(f.size)}, ${f.mime})`);
    }
    return box;
  }

  function updatePresence(p) {
    if (p.v <= presenceVersion) return; // an older snapshot overtaken by a newer one
    presenceVersion = p.v;
    if (present) {
      for (const n of p.names) if (!present.has(n)) addNote(n + " joined");
      for (const n of present) if (!p.names.includes(n)) addNote(n + " left");
    }
    present = new Set(p.names);
    $("count").textContent = p.names.length;
    $("presence").replaceChildren(...p.names.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      if (n === me) li.className = "mine";
      return li;
    }));
    for (const n of typing.keys()) if (!present.has(n)) stopTyping(n);
  }

  function startTyping(name) {
    if (!name || name === me) return;
    clearTimeout(typing.get(name));
    typing.set(name, setTimeout(() => stopTyping(name), TYPING_SHOWN_MS));
    renderTyping();
  }

  function stopTyping(name) {
    if (!typing.has(name)) return;
    clearTimeout(typing.get(name));
    typing.delete(name);
    renderTyping();
  }

  function renderTyping() {
    const names = [...typing.keys()];
    let text = "";
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = "Several people are typing…";
    $("typing").textContent = text;
  }

  // Sending.

  let lastTyping = 0;

  function sendText() {
    const box = $("text");
    const text = box.value.trim();
    if (!text) return;
    if ([...text].length > MAX_TEXT) {
      setError($("chat-error"), `A message is at most ${MAX_TEXT} characters.`);
      return;
    }
    if (!room || !room.send({ type: "msg", text })) {
      setError($("chat-error"), "Not connected: the message was not sent (it is still in the box).");
      return;
    }
    setError($("chat-error"), "");
    box.value = "";
    lastTyping = 0;
  }

  if ($("send-form")) {
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
    $("text").addEventListener("input", () => {
      const now = Date.now();
      if ($("text").value.trim() && now - lastTyping > TYPING_EVERY_MS && room) {
        if (room.send({ type: "typing" })) lastTyping = now;
      }
    });
    $("file").addEventListener("change", async () => {
      const input = $("file");
      const file = input.files[0];
      input.value = "";
      if (file) await upload(file);
    });
  }

  async function upload(file) {
    const err = $("chat-error");
    if (file.size > MAX_UPLOAD) {
      setError(err, `${file.name} is too large: the limit is ${MAX_UPLOAD >> 20} MiB.`);
      return;
    }
    setError(err, "");
    const note = $("typing");
    note.textContent = `Uploading ${file.name}…`;
    const q = new URLSearchParams({ filename: file.name, name: me, key: tabKey(), token });
    let res, body;
    try {
      res = await fetch(`/api/rooms/${encodeURIComponent(ROOM)}/files?${q}`, {
        method: "POST",
        headers: { "Content-Type": file.type || "application/octet-stream" },
        body: file,
      });
      body = await res.json().catch(() => ({}));
    } catch {
      setError(err, `Uploading ${file.name} failed: the server cannot be reached.`);
      return;
    } finally {
      renderTyping();
    }
    if (!res.ok) {
      const why = body.error || (res.status === 413 ? `the limit is ${MAX_UPLOAD >> 20} MiB` : "HTTP " + res.status);
      setError(err, `${file.name} was not shared: ${why}.`);
      return;
    }
    if (!room || !room.send({ type: "file", id: body.id })) {
      setError(err, `Not connected: ${file.name} was uploaded but not shared. Try again.`);
    }
  }

  // Start.

  async function start() {
    me = saved.get("name");
    token = saved.get("token");
    if (!me || (TOKEN_REQUIRED && !token)) return showSignin("");
    let r;
    try {
      r = await check(me);
    } catch {
      return signedIn(me); // server down: WSRoom keeps trying
    }
    if (!r.ok) return showSignin(r.status === 401 ? "Wrong token: ask whoever runs this server for it." : r.error);
    signedIn(r.name);
  }

  start();
})();
