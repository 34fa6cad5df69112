// Tests of the client's own logic with a fake WebSocket: close codes,
// backoff, the online and visibility wake-ups, URLs.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { connect, connectRoom } from "../src/index.js";
import { next } from "./helpers.js";

class FakeSocket {
  static all = [];
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  static last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close(code) {
    this.closedWith = code;
    this.readyState = 3;
  }
  // What the server does:
  open() {
    this.readyState = 1;
    this.onopen({});
  }
  receive(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose({ code, reason });
  }
}

const opts = { WebSocket: FakeSocket, minDelay: 1, maxDelay: 1, stableAfter: 60000 };
const dialed = async (n) => {
  while (FakeSocket.all.length < n) await new Promise((r) => setTimeout(r, 1));
  return FakeSocket.all[n - 1];
};
const closers = [];
afterEach(() => {
  for (const c of closers.splice(0)) c.close();
  FakeSocket.all = [];
  delete globalThis.window;
  delete globalThis.document;
});

test("one room: URLs, close codes 4000 with and without resume=, and 1013", async () => {
  const c = connectRoom("http://example.test/rooms/a?user=ana", opts);
  closers.push(c);
  const ws1 = await dialed(1);
  assert.equal(ws1.url, "ws://example.test/rooms/a?user=ana");
  ws1.open();
  ws1.receive({ seq: 7, epoch: "e1", time: 1, data: "x" });
  ws1.receive({ seq: 7, epoch: "e1", time: 1, data: "dup" });
  ws1.receive({ time: 2, data: "ephemeral" });
  assert.deepEqual(c.position, { epoch: "e1", seq: 7 });

  // 1013, try again later: reconnect, resuming.
  ws1.drop(1013, "wsroom: history unavailable, try again");
  const ws2 = await dialed(2);
  assert.equal(ws2.url, "ws://example.test/rooms/a?user=ana&resume=e1%3A7");

  // 4000 naming a new epoch: resume from its start.
  const resync = next(c, "resync");
  ws2.open();
  ws2.drop(4000, "wsroom: messages lost, resync resume=e2:0");
  assert.deepEqual((await resync)[0], { reason: "wsroom: messages lost, resync resume=e2:0", resume: "e2:0" });
  const ws3 = await dialed(3);
  assert.equal(new URL(ws3.url).searchParams.get("resume"), "e2:0");
  ws3.open();
  ws3.receive({ seq: 1, epoch: "e2", time: 3, data: "y" });

  // 4000 alone: afresh.
  ws3.drop(4000, "wsroom: cannot resume, resync");
  const ws4 = await dialed(4);
  assert.equal(new URL(ws4.url).searchParams.has("resume"), false);
  assert.equal(c.position, null);
});

test("backoff: full jitter within the doubling bound, reset after a stable connection", async () => {
  const c = connect("ws://example.test/ws", { WebSocket: FakeSocket, minDelay: 100, maxDelay: 1000, stableAfter: 0 });
  closers.push(c);
  const delays = [];
  c.on("reconnecting", (info) => delays.push(info));
  const ws = await dialed(1);
  assert.deepEqual(ws.protocols, ["wsroom.v3"]);
  // Handshakes that fail (an error and, in Node 20, no close event).
  ws.onerror({});
  for (let i = 0; i < 6; i++) {
    clearTimeout(c._timer);
    c._dial();
    FakeSocket.last().onerror({});
  }
  assert.deepEqual(delays.map((d) => d.attempt), [1, 2, 3, 4, 5, 6, 7]);
  delays.forEach((d, i) => {
    assert.ok(d.delay >= 0 && d.delay <= Math.min(1000, 100 * 2 ** i), JSON.stringify(d));
    assert.equal(d.wasOpen, false);
  });
  // An open connection that lasted stableAfter (0 here) resets it.
  clearTimeout(c._timer);
  c._dial();
  FakeSocket.last().open();
  FakeSocket.last().drop();
  assert.equal(delays.at(-1).attempt, 1);
});

test("online and visibilitychange retry at once", async () => {
  globalThis.window = new EventTarget();
  globalThis.document = Object.assign(new EventTarget(), { visibilityState: "visible" });
  const c = connect("ws://example.test/ws", { WebSocket: FakeSocket, minDelay: 60000, maxDelay: 60000 });
  closers.push(c);
  const ws1 = await dialed(1);
  ws1.onerror({});
  assert.equal(c.state, "reconnecting");
  window.dispatchEvent(new Event("online"));
  assert.equal(FakeSocket.all.length, 2);
  FakeSocket.last().onerror({});
  document.visibilityState = "hidden";
  document.dispatchEvent(new Event("visibilitychange"));
  assert.equal(FakeSocket.all.length, 2, "no retry for a hidden page");
  document.visibilityState = "visible";
  document.dispatchEvent(new Event("visibilitychange"));
  assert.equal(FakeSocket.all.length, 3);
  c.close();
  window.dispatchEvent(new Event("online"));
  assert.equal(FakeSocket.all.length, 3, "no retry after close");
});

test("many rooms: rejoin frames and the resend of unacked publishes", async () => {
  const c = connect("ws://example.test/ws", opts);
  closers.push(c);
  const room = c.join("r", { last: 2, members: true });
  const ws1 = await dialed(1);
  ws1.open();
  assert.deepEqual(ws1.sent[0], { op: "join", room: "r", id: ws1.sent[0].id, last: 2, members: true });
  // Not joined yet: the publish waits.
  const p = room.publish({ k: 1 });
  assert.equal(ws1.sent.length, 1);
  ws1.receive({ op: "joined", room: "r", id: ws1.sent[0].id, epoch: "e", seq: 5 });
  assert.equal(room.position, null, "history follows");
  ws1.receive({ op: "msg", room: "r", seq: 4, epoch: "e", time: 1, data: 4 });
  ws1.receive({ op: "msg", room: "r", seq: 5, epoch: "e", time: 1, data: 5 });
  const pub = ws1.sent[1];
  assert.equal(pub.op, "pub");
  // The connection breaks before the ack.
  ws1.drop();
  const ws2 = await dialed(2);
  ws2.open();
  assert.deepEqual(ws2.sent[0], { op: "join", room: "r", id: ws2.sent[0].id, resume: "e:5", members: true });
  assert.equal(ws2.sent.length, 1, "the publish waits for the rejoin");
  ws2.receive({ op: "joined", room: "r", id: ws2.sent[0].id, epoch: "e", seq: 6 });
  assert.deepEqual(ws2.sent[1], pub, "sent again with the same id");
  ws2.receive({ op: "msg", room: "r", seq: 5, epoch: "e", time: 1, data: 5 }); // a duplicate: dropped
  ws2.receive({ op: "msg", room: "r", seq: 6, epoch: "e", time: 1, data: { k: 1 } });
  ws2.receive({ op: "ack", id: pub.id, room: "r", seq: 6, epoch: "e" });
  assert.deepEqual(await p, { op: "ack", id: pub.id, room: "r", seq: 6, epoch: "e" });
  assert.deepEqual(room.position, { epoch: "e", seq: 6 });

  // An empty room has no position: it is rejoined with the largest last.
  const empty = c.join("empty");
  ws2.receive({ op: "joined", room: "empty", id: ws2.sent.at(-1).id, epoch: "", seq: 0 });
  // unavailable: sent again later with the same id.
  const q = room.publish(2);
  const pub2 = ws2.sent.at(-1);
  ws2.receive({ op: "error", id: pub2.id, room: "r", code: "unavailable", message: "engine down" });
  while (ws2.sent.at(-1) === pub2) await new Promise((r) => setTimeout(r, 1));
  assert.deepEqual(ws2.sent.at(-1), pub2);
  ws2.receive({ op: "ack", id: pub2.id, room: "r", seq: 7, epoch: "e" });
  assert.equal((await q).seq, 7);
  ws2.drop();
  const ws3 = await dialed(3);
  ws3.open();
  assert.deepEqual(
    ws3.sent.map((f) => [f.room, f.resume, f.last]),
    [
      ["r", "e:6", undefined],
      ["empty", ":0", undefined],
    ],
  );
  assert.equal(empty.state, "joining");
});

test("many rooms: a join answered unavailable or internal is retried maxRetries times, then the room ends with an error", async () => {
  const c = connect("ws://example.test/ws", { ...opts, maxRetries: 2 });
  closers.push(c);
  const room = c.join("r");
  const errors = [];
  room.on("error", (err) => errors.push(err));
  const ws = await dialed(1);
  ws.open();
  ws.receive({ op: "hello", conn: "c1", limits: { rate: 20, burst: 40 } });
  assert.equal(c.connId, "c1");
  assert.equal(c.limits.burst, 40);
  // The join, then two retries, each answered with a retryable error.
  for (const code of ["unavailable", "internal"]) {
    const n = ws.sent.length;
    ws.receive({ op: "error", id: ws.sent.at(-1).id, room: "r", code, message: "not now" });
    while (ws.sent.length === n) await new Promise((r) => setTimeout(r, 1));
    assert.equal(ws.sent.at(-1).op, "join");
  }
  assert.equal(errors.length, 0);
  ws.receive({ op: "error", id: ws.sent.at(-1).id, room: "r", code: "unavailable", message: "not now" });
  assert.equal(ws.sent.length, 3, "the join and two retries");
  await assert.rejects(room.ready, (err) => err.code === "unavailable");
  assert.equal(errors.length, 1);
  assert.equal(room.state, "left");
});
