// Tests of connect() against protocoltest.FaultServer (test/server, path
// /fault/{scenario}): a wsroom.v3 server that misbehaves on purpose. Each
// test has a session of its own; the server's log of the session's
// requests says what the client sent.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../src/index.js";
import { startServer, until, next, fast } from "./helpers.js";

let srv;
const clients = [];
let sessions = 0;

// open connects to a scenario in a new session; it returns the client and
// a function that resolves with the session's log of requests of op.
const open = (scenario, query = "", options = {}) => {
  const session = "js" + ++sessions;
  const path = "/fault/" + scenario + "?session=" + session + (query && "&" + query);
  const c = connect(srv.ws + path, { ...fast, ...options });
  clients.push(c);
  const log = async (op) => {
    const res = await fetch(srv.http + path);
    const all = await res.json();
    return all.filter((r) => !op || r.op === op);
  };
  return { c, log };
};

// collect records a room's messages as [data, frame, kind].
const collect = (room) => {
  const got = [];
  room.on("message", (data, frame, kind) => got.push({ data, seq: frame.seq, epoch: frame.epoch, kind }));
  return got;
};

before(async () => {
  srv = await startServer();
});
after(async () => {
  for (const c of clients) c.close();
  await srv.stop();
});

test("hello: the connection id and the limits", async () => {
  const { c } = open("ok", "rate=7&inflight=9");
  const [hello] = await next(c, "hello");
  assert.equal(hello.conn, "fault-1");
  assert.equal(c.connId, "fault-1");
  assert.equal(c.limits.rate, 7);
  assert.equal(c.limits.inflight, 9);
  assert.equal(c.limits.acksPerRoom, 1024);
  assert.equal(c.url.protocol, "ws:");
});

test("ack without epoch and seq: matched by id", async () => {
  const { c } = open("ack-noseq");
  const room = c.join("a");
  const got = collect(room);
  await room.ready;
  const ack = await room.publish("x");
  assert.equal(ack.op, "ack");
  assert.equal(ack.seq, undefined);
  await until(() => got.length === 2, "the messages");
  assert.deepEqual(got.map((m) => [m.seq, m.data]), [[1, { n: 1 }], [2, "x"]]);
});

test("drop-ack: reconnect, resume, and the publish again with the same id", async () => {
  const { c, log } = open("drop-ack", "delay=50ms");
  const room = c.join("a");
  const got = collect(room);
  await room.ready;
  const ack = await room.publish("x");
  assert.equal(ack.seq, 2);
  const pubs = await log("pub");
  assert.deepEqual(pubs.map((p) => [p.conn, p.id]), [[1, pubs[0].id], [2, pubs[0].id]]);
  const joins = await log("join");
  assert.equal(joins[1].resume, "e1:2");
  await until(() => got.length === 3, "the messages");
  assert.deepEqual(got.map((m) => m.seq), [1, 2, 3], "each message once, in order");
});

test("delayed replies: each publish gets its own ack", async () => {
  const { c } = open("delay", "delay=30ms");
  const room = c.join("a");
  const got = collect(room);
  await room.ready;
  const acks = await Promise.all([room.publish("p0"), room.publish("p1"), room.publish("p2")]);
  await until(() => got.length === 4, "the messages");
  const bySeq = new Map(got.map((m) => [m.seq, m.data]));
  acks.forEach((ack, i) => assert.equal(bySeq.get(ack.seq), "p" + i));
});

test("half a frame, then the connection dropped: the publish is sent again with its id", async () => {
  const { c, log } = open("half-frame");
  const room = c.join("a");
  await room.ready;
  const ack = await room.publish(1);
  assert.equal(ack.seq, 2);
  const pubs = await log("pub");
  assert.equal(pubs.length, 2);
  assert.equal(pubs[1].id, pubs[0].id);
  assert.equal(pubs[1].conn, 2);
});

for (const code of [1001, 1011, 4000]) {
  test("close " + code + ": reconnect and resume the room", async () => {
    const { c, log } = open("close-" + code);
    const room = c.join("a");
    const got = collect(room);
    const [info] = await next(c, "reconnecting");
    assert.equal(info.code, code);
    await until(() => got.length === 2, "the messages");
    assert.deepEqual(got.map((m) => m.data), [{ n: 1 }, { n: 2 }]);
    const joins = await log("join");
    assert.deepEqual(joins.map((j) => [j.conn, j.resume]), [[1, undefined], [2, "e1:1"]]);
  });
}

for (const [scenario, resume] of [["refuse-resume", "e2:0"], ["refuse-resume-fresh", undefined]]) {
  test(scenario + ": a resync event, then a join " + (resume ? "from " + resume : "afresh"), async () => {
    const { c, log } = open(scenario);
    const room = c.join("a");
    const got = collect(room);
    const [info] = await next(room, "resync");
    assert.equal(info.resume, resume);
    await until(() => got.length === 2, "the messages");
    assert.deepEqual(got.map((m) => m.epoch + ":" + m.seq), ["e1:1", "e2:1"]);
    const joins = await log("join");
    assert.deepEqual(joins.map((j) => j.resume), [undefined, "e1:1", resume]);
    assert.deepEqual(room.position, { epoch: "e2", seq: 1 });
  });
}

test("resync frame: the room is dropped and joined again from its resume", async () => {
  const { c, log } = open("resync-frame");
  const room = c.join("a");
  const got = collect(room);
  const [info] = await next(room, "resync");
  assert.deepEqual(info, { reason: "trimmed", resume: "e2:0" });
  await until(() => got.length === 2, "the messages");
  assert.deepEqual(got.map((m) => m.epoch + ":" + m.seq), ["e1:1", "e2:1"]);
  const joins = await log("join");
  assert.deepEqual(joins.map((j) => [j.conn, j.resume]), [[1, undefined], [1, "e2:0"]]);
});

test("payloads: data, text and bytes", async () => {
  const { c } = open("payloads");
  const room = c.join("a");
  const got = collect(room);
  await until(() => got.length === 3, "the messages");
  assert.deepEqual(got[0].data, { a: 1 });
  assert.equal(got[0].kind, "data");
  assert.equal(got[1].data, "plain text");
  assert.equal(got[1].kind, "text");
  assert.ok(got[2].data instanceof Uint8Array);
  assert.deepEqual([...got[2].data], [0xff, 0x00, 0x01]);
  assert.equal(got[2].kind, "bytes");
});

for (const code of ["internal", "unavailable"]) {
  test(code + ": sent again with the same id", async () => {
    const { c, log } = open(code);
    const room = c.join("a");
    await room.ready;
    const ack = await room.publish(1);
    assert.equal(ack.seq, 2);
    const pubs = await log("pub");
    assert.equal(pubs.length, 2);
    assert.equal(pubs[1].id, pubs[0].id);
  });
}

test("a join answered internal is made again", async () => {
  const { c, log } = open("join-internal");
  const room = c.join("a");
  const joined = await room.ready;
  assert.equal(joined.op, "joined");
  assert.equal((await log("join")).length, 2);
});

test("unavailable for good: maxRetries tries, then the publish rejects", async () => {
  const { c, log } = open("unavailable-always", "", { maxRetries: 2 });
  const room = c.join("a");
  await room.ready;
  await assert.rejects(room.publish(1), (err) => err.code === "unavailable");
  const pubs = await log("pub");
  assert.equal(pubs.length, 3, "the first try and two retries");
  assert.ok(pubs.every((p) => p.id === pubs[0].id));
});

test("a final error rejects at once and is not sent again", async () => {
  const { c, log } = open("reject");
  const room = c.join("a");
  await room.ready;
  await assert.rejects(room.publish(1), (err) => err.code === "bad_request");
  // A join after it is answered after any frame sent before it.
  await c.join("b").ready;
  assert.equal((await log("pub")).length, 1);
});

test("publishes waiting for an ack are bounded: maxPending, then the server's acksPerRoom", async () => {
  // Replies come late: the publishes wait, unsent, for the join.
  const { c } = open("delay", "delay=100ms", { maxPending: 2 });
  const room = c.join("a");
  const first = [room.publish(1), room.publish(2)];
  await assert.rejects(room.publish(3), (err) => err.code === "queue_full");
  assert.equal((await Promise.all(first)).length, 2);

  const other = open("ok", "acksPerRoom=1");
  await next(other.c, "hello");
  const r = other.c.join("a");
  const one = r.publish(1);
  await assert.rejects(r.publish(2), (err) => err.code === "queue_full");
  assert.equal((await one).op, "ack");
});
