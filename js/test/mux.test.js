// Tests of connect(): many rooms on one connection (wsroom.v3), against a
// real wsroom server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../src/index.js";
import { startServer, until, next, sleep, fast } from "./helpers.js";

let srv;
const clients = [];
const open = (query = "", options = {}) => {
  const c = connect(srv.ws + "/ws" + query, { ...fast, ...options });
  clients.push(c);
  return c;
};
// collect records a room's messages.
const collect = (room) => {
  const got = [];
  room.on("message", (data, m) => got.push({ data, seq: m.seq, epoch: m.epoch }));
  return got;
};
const publishN = async (room, from, to) => {
  for (let k = from; k <= to; k++) await srv.ctl("publish?room=" + room, JSON.stringify({ k }));
};
// assertExactly checks that got holds the messages {k} from..to, each
// once, in order, with contiguous sequence numbers.
const assertExactly = (got, from, to) => {
  assert.deepEqual(
    got.map((m) => m.data.k),
    Array.from({ length: to - from + 1 }, (_, i) => from + i),
  );
  for (let i = 1; i < got.length; i++) {
    if (got[i].epoch === got[i - 1].epoch) assert.equal(got[i].seq, got[i - 1].seq + 1);
  }
};

before(async () => {
  srv = await startServer(["-history", "20"]);
});
after(async () => {
  for (const c of clients) c.close();
  await srv.stop();
});

test("join, publish and ack in several rooms", async () => {
  const a = open("?user=ana");
  const b = open("?user=bo");
  const names = ["m1-red", "m1-green", "m1-blue"];
  const roomsA = names.map((n) => a.join(n, { members: true }));
  const roomsB = names.map((n) => b.join(n));
  const gotB = roomsB.map(collect);
  await Promise.all([...roomsA, ...roomsB].map((r) => r.ready));
  assert.equal(a.state, "open");
  // hello came first: the connection's id and the server's default limits.
  assert.equal(typeof a.connId, "string");
  assert.notEqual(a.connId, b.connId);
  assert.equal(a.limits.rate, 20);
  assert.equal(a.limits.burst, 40);
  assert.equal(a.limits.acksPerRoom, 1024);
  assert.deepEqual(
    roomsA[0].position,
    null,
    "an empty room has no position to resume from",
  );

  const acks = await Promise.all(roomsA.map((r, i) => r.publish({ k: i + 1 })));
  acks.forEach((ack, i) => {
    assert.equal(ack.op, "ack");
    assert.equal(ack.room, names[i]);
    assert.equal(ack.seq, 1);
    assert.equal(typeof ack.epoch, "string");
  });
  await until(() => gotB.every((g) => g.length === 1), "b's messages");
  gotB.forEach((g, i) => assert.deepEqual(g.map((m) => m.data.k), [i + 1]));
  assert.deepEqual(roomsB[2].position, { epoch: acks[2].epoch, seq: 1 });

  // A later join with members and last.
  const c = open("?user=cy");
  const late = c.join("m1-red", { last: 5, members: true });
  const got = collect(late);
  const [joined] = await late.ready.then((j) => [j]);
  assert.equal(joined.seq, 1);
  // PROTOCOL.md spells a member {"id", "info"}; the server sends the Go
  // field names {"ID", "Info"} (wsroom.Member has no JSON tags). The client
  // passes members on as they come.
  assert.deepEqual(joined.members.map((m) => m.info ?? m.Info).sort(), ["ana", "bo", "cy"]);
  await until(() => got.length === 1, "the last message");
  assert.equal(got[0].data.k, 1);

  // Ephemeral: acked without a number, received without one.
  const ack = await roomsA[1].publish({ typing: true }, { ephemeral: true });
  assert.equal(ack.seq, undefined);
  await until(() => gotB[1].length === 2, "the ephemeral message");
  assert.equal(gotB[1][1].seq, undefined);
  assert.deepEqual(roomsB[1].position, { epoch: acks[1].epoch, seq: 1 });
});

test("reconnect after dropped connections resumes every room with no gap and no duplicate", async (t) => {
  // A server of its own, whose history outlasts the disconnects.
  const main = srv;
  srv = await startServer(["-history", "1000"]);
  t.after(async () => {
    await srv.stop();
    srv = main;
  });
  const c = open();
  const rooms = ["m2-a", "m2-b"].map((n) => c.join(n));
  const got = rooms.map(collect);
  const resyncs = [];
  rooms.forEach((r) => r.on("resync", (info) => resyncs.push(info)));
  await Promise.all(rooms.map((r) => r.ready));
  const states = [];
  c.on("state", (s) => states.push(s));
  const n = 120;
  const publishing = Promise.all([publishN("m2-a", 1, n), publishN("m2-b", 1, n)]);
  const drops = (async () => {
    for (let i = 0; i < 3; i++) {
      await until(() => got[0].length > (i + 1) * 25, "messages before drop " + i, 10000);
      await srv.ctl("drop");
      await next(c, "open");
    }
  })();
  await Promise.all([publishing, drops]);
  await until(() => got.every((g) => g.length >= n), "every message", 10000);
  await sleep(50);
  got.forEach((g) => assertExactly(g, 1, n));
  assert.deepEqual(resyncs, []);
  assert.ok(states.filter((s) => s === "reconnecting").length >= 3, states.join(" "));
});

test("a disconnect longer than the history forces a resync, then a fresh join", async () => {
  const c = open();
  const room = c.join("m3", { last: 3 });
  const got = collect(room);
  await room.ready;
  await publishN("m3", 1, 2);
  await until(() => got.length === 2, "the first messages");

  await srv.ctl("drop?hold=1");
  await next(c, "reconnecting");
  await publishN("m3", 3, 30); // the history keeps 20: 11..30
  const resynced = next(room, "resync");
  await srv.ctl("accept");
  const [info] = await resynced;
  assert.equal(info.resume, undefined);
  assert.match(info.reason, /resync/);
  got.length = 0; // what the application does on resync
  await until(() => got.length === 3, "the last 3 messages after the resync");
  assertExactly(got, 28, 30);
  await publishN("m3", 31, 31);
  await until(() => got.length === 4, "a live message");
  assertExactly(got, 28, 31);
});

test("a history moved to a new epoch resyncs from the new epoch's start", async () => {
  const c = open();
  const room = c.join("m4");
  const got = collect(room);
  const resyncs = [];
  room.on("resync", (info) => resyncs.push(info));
  await room.ready;
  await publishN("m4", 1, 3);
  await until(() => got.length === 3, "the first messages");
  const oldEpoch = got[0].epoch;

  // While connected: the room tells its members with a resync frame.
  await srv.ctl("reset");
  await publishN("m4", 4, 5);
  await until(() => got.length === 5, "the new epoch's messages");
  assert.equal(resyncs.length, 1);
  assert.match(resyncs[0].resume, /:0$/);
  const newEpoch = got[3].epoch;
  assert.notEqual(newEpoch, oldEpoch);
  assert.equal(resyncs[0].resume, newEpoch + ":0");
  assert.deepEqual(got.slice(3).map((m) => [m.data.k, m.seq]), [[4, 1], [5, 2]]);

  // While away: the join's resume is refused with an error that names the
  // new epoch.
  await srv.ctl("drop?hold=1");
  await next(c, "reconnecting");
  await srv.ctl("reset");
  await publishN("m4", 6, 7);
  await srv.ctl("accept");
  await until(() => got.length === 7, "the newer epoch's messages");
  assert.equal(resyncs.length, 2);
  assert.equal(resyncs[1].resume, got[5].epoch + ":0");
  assert.deepEqual(got.slice(5).map((m) => [m.data.k, m.seq]), [[6, 1], [7, 2]]);
});

test("publishes made offline or unacked at a disconnect are delivered once", async () => {
  const c = open();
  const room = c.join("m5");
  await room.ready;

  // Offline: queued, sent with the same id after the rejoin.
  await srv.ctl("drop?hold=1");
  await next(c, "reconnecting");
  assert.equal(room.state, "joining");
  const offline = [1, 2, 3].map((k) => room.publish({ k }));
  await assert.rejects(room.publish({ typing: true }, { ephemeral: true }), { code: "offline" });
  await sleep(100);
  await srv.ctl("accept");
  const acks = await Promise.all(offline);
  assert.deepEqual(acks.map((a) => a.seq), [1, 2, 3]);

  // In flight: some reach the server, whose acks are lost with the
  // connection; all are sent again and published once.
  const inflight = [];
  for (let k = 4; k <= 40; k++) {
    inflight.push(room.publish({ k }));
    if (k === 15 || k === 30) await srv.ctl("drop");
    await sleep(1);
  }
  const acks2 = await Promise.all(inflight);
  assert.deepEqual(acks2.map((a) => a.seq), Array.from({ length: 37 }, (_, i) => i + 4));

  // What the room holds: each once, in order.
  const check = open();
  const r = check.join("m5", { last: 100 });
  const got = collect(r);
  await r.ready;
  await until(() => got.length >= 20, "the history");
  await sleep(50);
  assertExactly(got, 21, 40); // the history keeps the last 20
});

test("errors reject the matching promises", async () => {
  const c = open();
  const bad = c.join("no spaces allowed");
  const [err] = await Promise.all([next(bad, "error"), assert.rejects(bad.ready, { code: "bad_room" })]);
  assert.equal(err[0].code, "bad_room");
  assert.equal(bad.state, "left");
  assert.equal(c.rooms.has("no spaces allowed"), false);

  await assert.rejects(c.request({ op: "pub", room: "m6-nowhere", data: 1 }), (e) => {
    assert.equal(e.name, "WsroomError");
    assert.equal(e.code, "not_joined");
    assert.equal(e.frame.room, "m6-nowhere");
    return true;
  });
  await assert.rejects(c.request({ op: "frob" }), { code: "unknown_op" });
  assert.throws(() => {
    c.join("m6");
    c.join("m6");
  }, /already/);

  const room = c.rooms.get("m6");
  await room.ready;
  await room.leave();
  assert.equal(room.state, "left");
  await assert.rejects(room.publish({ k: 1 }), { code: "not_joined" });

  // Removed by the server: told, pending publishes rejected, not rejoined.
  const kicked = c.join("m6-kick");
  await kicked.ready;
  const left = next(kicked, "left");
  assert.equal((await srv.ctl("kick?room=m6-kick")).trim(), "1");
  const [frame] = await left;
  assert.equal(frame.reason, "removed");
  await assert.rejects(kicked.publish(1), { code: "not_joined" });
  await srv.ctl("drop");
  await next(c, "open");
  await sleep(50);
  assert.deepEqual([...c.rooms.keys()], []);
});

test("close rejects what waits and stops reconnecting", async () => {
  const c = open();
  const room = c.join("m7");
  await room.ready;
  await srv.ctl("drop?hold=1");
  await next(c, "reconnecting");
  const p = room.publish({ k: 1 });
  const closed = next(c, "closed");
  c.close();
  await closed;
  await assert.rejects(p, { code: "closed" });
  assert.equal(c.state, "closed");
  assert.equal(room.state, "left");
  await srv.ctl("accept");
  await sleep(200);
  assert.equal(c.state, "closed");
});

// PROTOCOL.md section 5 promises that a pub sent again with its id within
// 2 minutes is not published twice, also when the room was closed for
// being idle meanwhile (the Registry keeps the ids).
test("a publish sent again after its room expired while idle is not published twice", async (t) => {
  const main = srv;
  srv = await startServer(["-idle", "100ms"]);
  t.after(async () => {
    await srv.stop();
    srv = main;
  });
  const pub = { op: "pub", room: "m8", id: "m8-once", data: { k: 1 } };
  const c = open();
  await c.join("m8").ready;
  const first = await c.request(pub);
  c.close(); // as if the ack had been lost with the connection
  await sleep(400); // the room expires
  const again = open();
  await again.join("m8").ready;
  const second = await again.request(pub);
  assert.deepEqual(second, first);
});
