/*
 * wsroom.js: a small browser client for wsroom rooms that use the JSON
 * codec (wsroom.WithCodec(wsroom.JSON())). No dependencies, no build step.
 * Load it with <script src="wsroom.js"></script>, which defines the global
 * class WSRoom (in CommonJS it is module.exports.WSRoom).
 *
 * It keeps one WebSocket to a room open: it reconnects by itself, with
 * exponential backoff and jitter, and resumes from the last message it saw,
 * so the page gets what it missed while away, once, in order.
 *
 *   const room = new WSRoom("/rooms/lobby?name=Ana", {
 *     onMessage(data, envelope) {},  // each message; data is the JSON value
 *                                    // the server published
 *     onState(state, info) {},       // the connection's state changed
 *     onReset() {},                  // what you show is out of date: drop it,
 *                                    // history follows
 *     shouldReconnect(event, info) { return true }, // after each close
 *   });
 *   room.send({type: "msg", text: "hi"}); // true if it went to the socket
 *   room.close();                         // for good
 *
 * new WSRoom(url, options)
 *   url: "ws:", "wss:", "http:" or "https:" URL, or a path resolved against
 *   the page ("/rooms/lobby"); http(s) becomes ws(s). The query is kept.
 *   Connecting starts at once. Options, all optional:
 *   onMessage(data, envelope)
 *     envelope is what the server sent: {seq, epoch, time, from, data}.
 *     seq and epoch (the message's place in the room's history) are absent
 *     for ephemeral messages (typing, presence, replies to one client);
 *     time is in Unix milliseconds; from is the sender's client ID, absent
 *     for messages the server published itself.
 *   onState(state, info)
 *     state is one of:
 *       "connecting"   first attempt, not connected yet
 *       "connected"    open; info.resumed says whether it resumed
 *       "reconnecting" the connection was lost or refused; the next try
 *                      is in info.delay ms (info.attempt counts tries)
 *       "offline"      not trying: close() was called, shouldReconnect
 *                      returned false, or the browser is offline (it
 *                      tries again as soon as the browser is back online)
 *     info also has code and reason of the last close, and wasOpen: false
 *     when the handshake itself failed (browsers do not say why: ask the
 *     server over plain HTTP if you need to know).
 *   onReset()
 *     The server closed with 4000 (wsroom.StatusResync): the history no
 *     longer covers the last message seen (trimmed, or the server lost its
 *     history). The page should clear what it shows; WSRoom reconnects
 *     without resuming and the room sends its recent history again.
 *   shouldReconnect(event, info)
 *     Called with the CloseEvent after every close not caused by close();
 *     return false to stop (state "offline"), e.g. for application close
 *     codes that mean "do not come back".
 *   minDelay (500), maxDelay (30000): bounds of the backoff, in ms.
 *   stableAfter (5000): a connection that stayed open this long resets
 *     the backoff.
 *
 * room.send(value): JSON-encodes value and sends it. Returns false, and
 *   sends nothing, when not connected: nothing is queued.
 * room.close(): closes the connection (1000) and stops reconnecting.
 * room.state: the current state. room.position: {epoch, seq} of the last
 *   numbered message seen, or null.
 *
 * Resume. Each numbered message carries its position (epoch and seq). On
 * reconnecting, WSRoom adds ?resume=EPOCH:SEQ of the last one to the URL and
 * the room sends exactly the messages after it, then live ones. WSRoom also
 * drops any numbered message at or before the last position, so onMessage
 * never sees one twice. Without a position (nothing seen yet) it connects
 * plainly, and the room's recent history, if it sends any, comes first.
 *
 * Backoff. The n-th retry in a row (n = 0, 1, 2...) waits a random time
 * between half and all of min(maxDelay, minDelay * 2^n): 250-500 ms, then
 * 500-1000 ms, and so on up to 15-30 s. The jitter spreads the reconnects
 * of many pages after a server restart.
 */
(function (global) {
  "use strict";

  /** Close code of wsroom.StatusResync: resume impossible, start afresh. */
  const STATUS_RESYNC = 4000;

  class WSRoom {
    constructor(url, options) {
      this.url = url;
      this.options = Object.assign(
        { minDelay: 500, maxDelay: 30000, stableAfter: 5000 },
        options,
      );
      this.state = "offline";
      this.position = null;
      this._ws = null;
      this._timer = null;
      this._attempt = 0;
      this._closed = false;
      this._everOpen = false;
      this._onOnline = () => {
        if (this._timer !== null) {
          clearTimeout(this._timer);
          this._connect();
        }
      };
      if (typeof addEventListener === "function") {
        addEventListener("online", this._onOnline);
      }
      this._connect();
    }

    /** Sends value as JSON; false if not connected. */
    send(value) {
      const ws = this._ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) return false;
      ws.send(JSON.stringify(value));
      return true;
    }

    /** Closes the connection and stops reconnecting. */
    close() {
      this._stop({});
    }

    _stop(info) {
      if (this._closed) return;
      this._closed = true;
      clearTimeout(this._timer);
      this._timer = null;
      if (typeof removeEventListener === "function") {
        removeEventListener("online", this._onOnline);
      }
      const ws = this._ws;
      this._ws = null;
      if (ws) ws.close(1000, "bye");
      this._setState("offline", info);
    }

    _setState(state, info) {
      this.state = state;
      this._call("onState", state, info);
    }

    _call(name, ...args) {
      const fn = this.options[name];
      if (typeof fn !== "function") return undefined;
      try {
        return fn(...args);
      } catch (err) {
        console.error("WSRoom " + name + ":", err);
        return undefined;
      }
    }

    /** The URL to dial: ws(s), with the resume position if there is one. */
    _dialURL() {
      const base = typeof location !== "undefined" ? location.href : undefined;
      const u = new URL(this.url, base);
      if (u.protocol === "http:") u.protocol = "ws:";
      if (u.protocol === "https:") u.protocol = "wss:";
      const p = this.position;
      if (p) u.searchParams.set("resume", p.epoch + ":" + p.seq);
      else u.searchParams.delete("resume");
      return u.toString();
    }

    _connect() {
      this._timer = null;
      if (this._closed) return;
      if (!this._everOpen && this._attempt === 0) {
        this._setState("connecting", {});
      }
      let ws;
      try {
        ws = new WebSocket(this._dialURL());
      } catch (err) {
        console.error("WSRoom:", err);
        this._retry({ code: 0, reason: String(err), wasOpen: false });
        return;
      }
      this._ws = ws;
      let openedAt = 0;

      ws.onopen = () => {
        if (ws !== this._ws) return;
        openedAt = Date.now();
        this._everOpen = true;
        this._setState("connected", { resumed: this.position !== null });
      };

      ws.onmessage = (event) => {
        if (ws !== this._ws) return;
        let env;
        try {
          env = JSON.parse(event.data);
        } catch {
          return;
        }
        if (env === null || typeof env !== "object") return;
        if (typeof env.seq === "number" && env.seq > 0) {
          const p = this.position;
          if (p && p.epoch === env.epoch && env.seq <= p.seq) return;
          this.position = { epoch: env.epoch, seq: env.seq };
        }
        this._call("onMessage", env.data, env);
      };

      ws.onclose = (event) => {
        if (ws !== this._ws) return;
        this._ws = null;
        const info = {
          code: event.code,
          reason: event.reason,
          wasOpen: openedAt !== 0,
        };
        if (openedAt && Date.now() - openedAt >= this.options.stableAfter) {
          this._attempt = 0;
        }
        if (event.code === STATUS_RESYNC) {
          this.position = null;
          this._call("onReset");
        }
        if (this._call("shouldReconnect", event, info) === false) {
          this._stop(info);
          return;
        }
        this._retry(info);
      };
    }

    _retry(info) {
      if (this._closed) return;
      const o = this.options;
      const ceiling = Math.min(o.maxDelay, o.minDelay * 2 ** this._attempt);
      const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
      this._attempt++;
      this._timer = setTimeout(() => this._connect(), delay);
      const offline = typeof navigator !== "undefined" && navigator.onLine === false;
      this._setState(
        offline ? "offline" : "reconnecting",
        Object.assign({}, info, { delay, attempt: this._attempt }),
      );
    }
  }

  global.WSRoom = WSRoom;
  if (typeof module === "object" && module.exports) module.exports.WSRoom = WSRoom;
})(typeof globalThis !== "undefined" ? globalThis : this);
