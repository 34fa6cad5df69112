// wsroom client: WebSocket rooms of a wsroom server, in browsers and Node.
// No dependencies. Two modes:
//
//   connect(url, options)      one connection in many rooms, the wsroom.v3
//                              protocol (PROTOCOL.md, Registry.MuxHandler)
//   connectRoom(url, options)  one room per connection, JSON envelopes and
//                              ?resume=EPOCH:SEQ (Room.Handler,
//                              Registry.Handler with wsroom.JSON())
//
// Both reconnect by themselves, with exponential backoff and full jitter,
// and resume from the last message seen. README.md describes the API.

const PROTOCOL = "wsroom.v3";
const STATUS_RESYNC = 4000;

/** The error a request is rejected with; code is the protocol's error code
 * or one of the client's: "offline", "disconnected", "left", "closed",
 * "queue_full". */
export class WsroomError extends Error {
  constructor(code, message, frame) {
    super(message || code);
    this.name = "WsroomError";
    this.code = code;
    this.frame = frame;
  }
}

const fail = (code, message) => Promise.reject(new WsroomError(code, message));

// parsePosition turns "EPOCH:SEQ" into {epoch, seq}, or null.
const parsePosition = (s) => {
  const i = typeof s === "string" ? s.lastIndexOf(":") : -1;
  return i > 0 ? { epoch: s.slice(0, i), seq: +s.slice(i + 1) || 0 } : null;
};

const positionString = (p) => p.epoch + ":" + p.seq;

// Errors after which a request is sent again later with the same id
// (wsroom.v3, item 12); the other codes are final.
const retryable = (code) => code === "unavailable" || code === "internal";

// fromBase64 decodes standard base64 into a Uint8Array.
const fromBase64 = (s) => {
  if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(s);
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
};

// payload returns a msg frame's payload and its kind: the JSON value of
// "data", the string of "text", or the bytes of "bytes" (wsroom.v3, item
// 16; a member whose value is null is absent).
const payload = (f) => {
  if (f.text != null) return [f.text, "text"];
  if (f.bytes != null) {
    try {
      return [fromBase64(f.bytes), "bytes"];
    } catch {
      return [undefined, "bytes"];
    }
  }
  return [f.data, "data"];
};

// fresh reports whether the message m with a sequence number comes after
// position p, and if so makes it the holder's position.
const advance = (holder, m) => {
  if (!(m.seq > 0)) return true; // ephemeral: no position
  const p = holder.position;
  if (p && p.epoch === m.epoch && m.seq <= p.seq) return false;
  holder.position = { epoch: m.epoch, seq: m.seq };
  return true;
};

// randomPrefix returns a random request id prefix, unique per client.
const randomPrefix = () => {
  let s = "";
  const c = globalThis.crypto;
  const words = c && c.getRandomValues ? c.getRandomValues(new Uint32Array(3)) : [0, 0, 0].map(() => Math.random() * 2 ** 32);
  for (const w of words) s += (w >>> 0).toString(36);
  return s + "-";
};

class Emitter {
  constructor(options) {
    this._listeners = {};
    // Options named onSomething listen to the event "something".
    for (const k in options) {
      if (/^on[A-Z]/.test(k) && typeof options[k] === "function") {
        this.on(k[2].toLowerCase() + k.slice(3), options[k]);
      }
    }
  }

  /** Calls fn on each event of this type; returns a function that stops. */
  on(type, fn) {
    const set = (this._listeners[type] ||= new Set());
    set.add(fn);
    return () => set.delete(fn);
  }

  _emit(type, ...args) {
    for (const fn of this._listeners[type] || []) {
      try {
        fn(...args);
      } catch (err) {
        console.error("wsroom: " + type + " listener:", err);
      }
    }
  }
}

// Connection is what both modes share: one WebSocket at a time, kept open
// with reconnects, and the state events.
class Connection extends Emitter {
  constructor(url, options) {
    super(options);
    const o = (this.options = { minDelay: 500, maxDelay: 30000, stableAfter: 5000, ...options });
    this.WebSocket = o.WebSocket || globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError("wsroom: no WebSocket here: pass options.WebSocket");
    const u = new URL(url, globalThis.location && globalThis.location.href);
    u.protocol = u.protocol.replace(/^http/, "ws");
    this.url = u;
    this.state = "connecting";
    this._ws = null;
    this._timer = null;
    this._attempt = 0;
    this._closed = false;
    // Retry at once when the network is back or the page is shown again.
    this._wake = () => {
      if (this._timer !== null && (typeof document === "undefined" || document.visibilityState !== "hidden")) {
        clearTimeout(this._timer);
        this._dial();
      }
    };
    this._listen("addEventListener");
    // Dial once the caller has had the chance to add listeners.
    Promise.resolve().then(() => this._dial());
  }

  _listen(method) {
    if (typeof window !== "undefined" && window[method]) window[method]("online", this._wake);
    if (typeof document !== "undefined" && document[method]) document[method]("visibilitychange", this._wake);
  }

  _set(state, info) {
    this.state = state;
    this._emit("state", state, info);
    this._emit(state, info);
  }

  _dial() {
    this._timer = null;
    if (this._closed) return;
    this._set("connecting", { attempt: this._attempt });
    let ws;
    try {
      ws = new this.WebSocket(this._dialURL(), this._protocols());
    } catch (err) {
      this._lost({ code: 0, reason: String(err), wasOpen: false });
      return;
    }
    this._ws = ws;
    let openedAt = 0;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      openedAt = Date.now();
      this._opened();
    };
    ws.onmessage = (event) => {
      if (ws !== this._ws) return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame && typeof frame === "object") this._frame(frame);
    };
    const end = (code, reason) => {
      if (ws !== this._ws) return;
      this._ws = null;
      if (openedAt && Date.now() - openedAt >= this.options.stableAfter) this._attempt = 0;
      this._lost({ code, reason, wasOpen: openedAt > 0 });
    };
    // A failed handshake may bring an error and no close event (Node 20's
    // WebSocket does so): it ends the attempt. After the opening, a close
    // event follows any error.
    ws.onerror = () => openedAt || end(1006, "");
    ws.onclose = (event) => end(event.code, event.reason);
  }

  _send(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // _delay returns the n-th backoff delay: full jitter, between 0 and
  // min(maxDelay, minDelay * 2^n).
  _delay(n) {
    const o = this.options;
    return Math.round(Math.random() * Math.min(o.maxDelay, o.minDelay * 2 ** n));
  }

  _lost(info) {
    this._down(info);
    if (this._closed) return;
    const should = this.options.shouldReconnect;
    if (should && should(info) === false) {
      this.close();
      return;
    }
    const delay = this._delay(this._attempt++);
    this._timer = setTimeout(() => this._dial(), delay);
    this._set("reconnecting", { ...info, delay, attempt: this._attempt });
  }

  /** Closes the connection (1000) for good. */
  close() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._timer);
    this._timer = null;
    this._listen("removeEventListener");
    const ws = this._ws;
    this._ws = null;
    if (ws) ws.close(1000);
    this._down({ code: 1000, reason: "", wasOpen: !!ws });
    this._set("closed", {});
  }
}

/** Connects to a wsroom.v3 endpoint (Registry.MuxHandler): one connection
 * in many rooms. */
export function connect(url, options) {
  return new Client(url, options);
}

/** Connects to one room (Room.Handler, Registry.Handler) that uses the
 * JSON codec. */
export function connectRoom(url, options) {
  return new RoomConnection(url, options);
}

export class Client extends Connection {
  constructor(url, options) {
    super(url, options);
    /** The rooms joined or being joined, by name. */
    this.rooms = new Map();
    // Requests waiting for their reply, by id, in the order they were made:
    // {frame, resolve, reject, room?, sent}. sent is the connection number
    // the frame was sent on (0: not sent).
    this._pending = new Map();
    this._prefix = randomPrefix();
    this._n = 0;
    this._conn = 0; // connection number, one more on each connection
    this.options.maxPending ??= 1000;
    this.options.maxRetries ??= 6;
    /** The last hello frame's connection id and limits, or null before
     * the first. */
    this.connId = null;
    this.limits = null;
  }

  _protocols() {
    return [PROTOCOL];
  }

  _dialURL() {
    return this.url.href;
  }

  _id() {
    return this._prefix + (++this._n).toString(36);
  }

  _opened() {
    this._conn++;
    this._set("open", {});
    for (const room of this.rooms.values()) this._join(room);
  }

  /** Joins a room; returns its Room at once. Messages, presence and
   * resyncs arrive as its events. */
  join(name, options = {}) {
    if (this._closed) throw new WsroomError("closed", "wsroom: client closed");
    if (this.rooms.has(name)) throw new WsroomError("bad_request", "wsroom: in room " + JSON.stringify(name) + " already");
    const room = new Room(this, name, options);
    this.rooms.set(name, room);
    this._join(room);
    return room;
  }

  // _join sends the join of room, resuming from its position if it has
  // one. Without a position, it asks for the room's last messages as the
  // application asked; a room that was empty when joined resumes from ":0",
  // every message of whichever epoch the room has now.
  _join(room) {
    room._in = false;
    if (room.state !== "left") room.state = "joining";
    const frame = { op: "join", room: room.name, id: this._id() };
    const p = room.position;
    if (p) frame.resume = positionString(p);
    else if (room._wasEmpty) frame.resume = ":0";
    else if (room.options.last > 0) frame.last = room.options.last;
    if (room.options.members) frame.members = true;
    room._joinID = frame.id;
    room._resumed = !!p;
    this._send(frame);
  }

  _pub(room, data, ephemeral) {
    if (room.state === "left") return fail("not_joined", "wsroom: not in room " + JSON.stringify(room.name));
    if (ephemeral && !room._in) return fail("offline", "wsroom: not connected");
    // Bounded: the publishes waiting for an ack (queued while offline
    // included), in all rooms and per room within the server's idempotency
    // window (a publish retried after more than acksPerRoom others of its
    // room could be published twice).
    let all = 0,
      inRoom = 0;
    for (const q of this._pending.values()) {
      if (q.room) all++;
      if (q.room === room) inRoom++;
    }
    const perRoom = this.limits && this.limits.acksPerRoom;
    if (all >= this.options.maxPending || (perRoom > 0 && inRoom >= perRoom)) {
      return fail("queue_full", "wsroom: too many publishes waiting for an ack");
    }
    const frame = { op: "pub", room: room.name, id: this._id(), data };
    if (ephemeral) frame.ephemeral = true;
    return new Promise((resolve, reject) => {
      const req = { frame, resolve, reject, room, sent: 0 };
      this._pending.set(frame.id, req);
      if (room._in) this._sendReq(req);
    });
  }

  _sendReq(req) {
    if (this._send(req.frame)) req.sent = this._conn;
  }

  _leave(room) {
    if (room.state === "left") return Promise.resolve();
    const connected = room._in;
    this._gone(room, new WsroomError("left", "wsroom: left the room"));
    if (!connected) return Promise.resolve();
    return this.request({ op: "leave", room: room.name }).then(
      () => {},
      () => {}, // not connected any more: out of the room anyway
    );
  }

  /** Sends a request frame with its id, or a new one; resolves with the
   * reply that carries it, rejects with a WsroomError on an error reply or if the
   * connection ends first. A low-level escape hatch; rooms use join. */
  request(frame) {
    const id = frame.id || this._id();
    frame = { ...frame, id };
    if (!this._send(frame)) return fail("offline", "wsroom: not connected");
    return new Promise((resolve, reject) => this._pending.set(id, { frame, resolve, reject, sent: this._conn }));
  }

  // _gone takes room out of the client, rejecting its waiting publishes.
  _gone(room, err) {
    if (this.rooms.get(room.name) === room) this.rooms.delete(room.name);
    room.state = "left";
    room._in = false;
    for (const [id, req] of this._pending) {
      if (req.room === room) {
        this._pending.delete(id);
        req.reject(err);
      }
    }
    room._settle(err);
  }

  _resync(room, frame) {
    room.position = parsePosition(frame.resume);
    room._wasEmpty = false;
    room._emit("resync", { reason: frame.reason || frame.message, resume: frame.resume });
    if (room.state !== "left") this._join(room);
  }

  _frame(f) {
    const room = this.rooms.get(f.room);
    const req = f.id !== undefined && this._pending.get(f.id);
    switch (f.op) {
      case "hello":
        this.connId = f.conn;
        this.limits = f.limits || {};
        this._emit("hello", f);
        return;
      case "msg": {
        const [data, kind] = payload(f);
        if (f.room === undefined) this._emit("message", data, f, kind);
        else if (room && room._in && advance(room, f)) room._emit("message", data, f, kind);
        return;
      }
      case "joined":
        if (req) {
          this._pending.delete(f.id);
          req.resolve(f);
        }
        if (!room || f.id !== room._joinID) return;
        if (!room._resumed) {
          // A fresh join: the room's last message is where a resume
          // starts, unless history follows, whose messages set it.
          room._wasEmpty = !f.seq;
          room.position = f.seq > 0 && !(room.options.last > 0) ? { epoch: f.epoch, seq: f.seq } : null;
        }
        room._in = true;
        room._tries = 0;
        room.state = "joined";
        room._settle(null, f);
        room._emit("joined", f);
        for (const q of this._pending.values()) {
          if (q.room === room && q.sent !== this._conn) this._sendReq(q);
        }
        return;
      case "ack":
      case "left":
        if (req) {
          this._pending.delete(f.id);
          req.resolve(f);
        } else if (f.op === "left" && room) {
          this._gone(room, new WsroomError("left", "wsroom: removed from the room: " + f.reason, f));
          room._emit("left", f);
        }
        return;
      case "resync":
        if (room) this._resync(room, f);
        return;
      case "presence":
        if (room && room._in) room._emit("presence", f);
        return;
      case "error":
        this._error(f, room, req);
    }
  }

  _error(f, room, req) {
    const err = new WsroomError(f.code, f.message, f);
    if (room && f.id === room._joinID) {
      room._joinID = null;
      if (f.code === "resync") this._resync(room, f);
      else if (retryable(f.code) && (room._tries = (room._tries || 0) + 1) <= this.options.maxRetries) {
        this._later(() => room.state === "joining" && !room._in && this._join(room), room._tries);
      } else {
        this._gone(room, err);
        room._emit("error", err);
      }
      return;
    }
    if (!req) {
      this._emit("error", err);
      return;
    }
    const r = req.room;
    const again = retryable(f.code) && (req.tries || 0) < this.options.maxRetries;
    if (r && (again || (f.code === "not_joined" && r.state === "joining"))) {
      // Send it again later with the same id: after the rejoin, or after
      // a while when the server could not publish it now (at most
      // maxRetries times: then the publish is rejected with the error).
      req.sent = 0;
      if (again) {
        req.tries = (req.tries || 0) + 1;
        this._later(() => this._pending.get(f.id) === req && r._in && !req.sent && this._sendReq(req), req.tries);
      }
      return;
    }
    this._pending.delete(f.id);
    req.reject(err);
  }

  _later(fn, n = 1) {
    setTimeout(() => this._closed || fn(), this._delay(n));
  }

  _down() {
    for (const room of this.rooms.values()) {
      room._in = false;
      room.state = "joining";
    }
    for (const [id, req] of this._pending) {
      // A numbered publish is kept to be sent again with its id; the rest
      // ends with the connection.
      if (this._closed || !req.room || req.frame.ephemeral) {
        this._pending.delete(id);
        req.reject(new WsroomError(this._closed ? "closed" : "disconnected", "wsroom: connection " + (this._closed ? "closed" : "lost")));
      }
    }
    if (this._closed) {
      for (const room of this.rooms.values()) this._gone(room, new WsroomError("closed", "wsroom: client closed"));
    }
  }
}

export class Room extends Emitter {
  constructor(client, name, options) {
    super(options);
    this.client = client;
    this.name = name;
    this.options = options;
    /** "joining", "joined" or "left". */
    this.state = "joining";
    /** {epoch, seq} of the last numbered message seen, or null. */
    this.position = parsePosition(options.resume);
    this._in = false; // joined on the current connection
    this.ready = new Promise((resolve, reject) => {
      this._settle = (err, joined) => {
        this._settle = () => {};
        if (err) reject(err);
        else resolve(joined);
      };
    });
    this.ready.catch(() => {}); // rejecting it is no unhandled rejection
  }

  /** Publishes data (any JSON value); resolves with the server's ack. A
   * numbered publish made while disconnected waits and is sent, with the
   * same id, once the room is joined again. */
  publish(data, options) {
    return this.client._pub(this, data, !!(options && options.ephemeral));
  }

  /** Leaves the room; its publishes still waiting are rejected. */
  leave() {
    return this.client._leave(this);
  }
}

export class RoomConnection extends Connection {
  constructor(url, options) {
    super(url, options);
    /** {epoch, seq} of the last numbered message seen, or null. */
    this.position = parsePosition(this.options.resume);
  }

  _protocols() {
    return this.options.protocols;
  }

  _dialURL() {
    const u = new URL(this.url);
    if (this.position) u.searchParams.set("resume", positionString(this.position));
    return u.href;
  }

  _opened() {
    this._set("open", { resumed: !!this.position });
  }

  _frame(env) {
    if (advance(this, env)) this._emit("message", env.data, env);
  }

  _down(info) {
    if (info.code !== STATUS_RESYNC) return;
    // The room cannot resume from the position: start again, from the new
    // epoch's start if the reason names it.
    const m = /resume=(\S+)$/.exec(info.reason);
    this.position = m && parsePosition(m[1]);
    this._emit("resync", { reason: info.reason, resume: m ? m[1] : undefined });
  }

  /** Sends data as JSON; false, and nothing sent, when not connected. */
  send(data) {
    return this._send(data);
  }
}
