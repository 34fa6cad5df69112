// Tests of connectRoom(): one room per connection with the JSON codec,
// against a real wsroom server.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connectRoom } from "../src/index.js";
import { startServer, until, next, sleep, fast } from "./helpers.js";

let srv;
const conns = [];
const open = (room, options = {}) => {
  const c = connectRoom(srv.ws + "/rooms/" + room, { ...fast, ...options });
  conns.push(c);
  return c;
};
const collect = (c) => {
  const got = [];
  c.on("message", (data, env) => got.push({ data, seq: env.seq, epoch: env.epoch }));
  return got;
};
const publishN = async (room, from, to) => {
  for (let k = from; k <= to; k++) await srv.ctl("publish?room=" + room, JSON.stringify({ k }));
};
const ks = (got) => got.map((m) => m.data.k);
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

before(async () => {
  srv = await startServer(["-history", "20"]);
});
after(async () => {
  for (const c of conns) c.close();
  await srv.stop();
});

test("one room: send, receive envelopes, resume after drops with no gap or duplicate", async () => {
  const c = open("r1");
  const got = collect(c);
  const opens = [];
  c.on("open", (info) => opens.push(info));
  await next(c, "open");
  assert.equal(c.send({ k: 1 }), true);
  await until(() => got.length === 1, "its own message");
  assert.equal(got[0].seq, 1);
  assert.deepEqual(c.position, { epoch: got[0].epoch, seq: 1 });

  // Drops, each short enough for the history of 20.
  for (let round = 0; round < 3; round++) {
    const from = 2 + round * 10;
    await srv.ctl("drop?hold=1");
    await next(c, "reconnecting");
    assert.equal(c.send({ k: 0 }), false, "nothing is sent or queued while away");
    await publishN("r1", from, from + 9);
    await srv.ctl("accept");
    await until(() => got.length === from + 9, "the messages of round " + round);
  }
  assert.deepEqual(ks(got), range(1, 31));
  assert.deepEqual(opens.map((o) => o.resumed), [false, true, true, true]);
});

test("one room: 4000 without resume= starts afresh", async () => {
  const c = open("r2");
  const got = collect(c);
  await next(c, "open");
  await publishN("r2", 1, 2);
  await until(() => got.length === 2, "the first messages");
  await srv.ctl("drop?hold=1");
  await next(c, "reconnecting");
  await publishN("r2", 3, 30); // past the history of 20
  const resynced = next(c, "resync");
  const closes = [];
  c.on("reconnecting", (info) => closes.push(info.code));
  await srv.ctl("accept");
  const [info] = await resynced;
  assert.equal(info.resume, undefined);
  assert.match(info.reason, /resync/);
  assert.equal(c.position, null);
  await next(c, "open");
  assert.ok(closes.includes(4000), closes.join(" "));
  // The room sends no history (no WithHistory): live messages go on.
  await publishN("r2", 31, 32);
  await until(() => got.length === 4, "live messages");
  assert.deepEqual(ks(got), [1, 2, 31, 32]);
});

test("one room: 4000 with resume=EPOCH:0 resumes from the new epoch's start", async () => {
  const c = open("r3");
  const got = collect(c);
  const resyncs = [];
  c.on("resync", (info) => resyncs.push(info));
  await next(c, "open");
  await publishN("r3", 1, 3);
  await until(() => got.length === 3, "the first messages");

  // While connected: the room's loop sees the new epoch and closes.
  await srv.ctl("reset");
  await publishN("r3", 4, 5);
  await until(() => got.length === 5, "the new epoch's messages");
  assert.equal(resyncs.length, 1);
  assert.equal(resyncs[0].resume, got[3].epoch + ":0");
  assert.match(resyncs[0].reason, /resume=/);
  assert.deepEqual(got.slice(3).map((m) => [m.data.k, m.seq]), [[4, 1], [5, 2]]);

  // While away: the handshake's resume is refused the same way.
  await srv.ctl("drop?hold=1");
  await next(c, "reconnecting");
  await srv.ctl("reset");
  await publishN("r3", 6, 7);
  await srv.ctl("accept");
  await until(() => got.length === 7, "the newer epoch's messages");
  assert.equal(resyncs.length, 2);
  assert.equal(resyncs[1].resume, got[5].epoch + ":0");
  assert.deepEqual(got.slice(5).map((m) => [m.data.k, m.seq]), [[6, 1], [7, 2]]);
  await sleep(50);
  assert.equal(got.length, 7);
});
