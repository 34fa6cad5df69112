// Tests of room presence (PROTOCOL.md, section 3.7) against a real wsroom
// server whose members are users.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../src/index.js";
import { startServer, until, fast } from "./helpers.js";

let srv;
const clients = [];
const open = (user) => {
  const c = connect(srv.ws + "/ws?user=" + user, { ...fast });
  clients.push(c);
  return c;
};
const users = (room) => (room.members ? [...room.members.keys()].sort() : null);

before(async () => {
  srv = await startServer(["-presence", "3", "-by-user"]);
});
after(async () => {
  for (const c of clients) c.close();
  await srv.stop();
});

test("a user with two connections is one member, who leaves with the last", async () => {
  const obs = open("obs").join("p-lobby", { members: true });
  const events = [];
  obs.on("presence", (f) => {
    for (const m of f.join || []) events.push("+" + m.user);
    for (const u of f.users || []) events.push("-" + u);
  });
  await obs.ready;
  await until(() => events.includes("+obs"), "obs's own join");
  const tab1 = open("ana");
  await tab1.join("p-lobby").ready;
  const tab2 = open("ana");
  const r2 = tab2.join("p-lobby", { members: true });
  const joined = await r2.ready;
  assert.deepEqual(joined.members.map((m) => m.user).sort(), ["ana", "obs"]);
  const ben = open("ben");
  await ben.join("p-lobby").ready;
  await until(() => events.includes("+ben"), "ben's join");
  assert.deepEqual(users(obs), ["ana", "ben", "obs"]);
  assert.equal(obs.count, 3);
  assert.equal(obs.members.get("ana").info, "ana");

  tab1.close(); // ana keeps a connection
  ben.close();
  await until(() => events.includes("-ben"), "ben's leave");
  assert.deepEqual(users(obs), ["ana", "obs"]);
  tab2.close();
  await until(() => events.includes("-ana"), "ana's leave");
  assert.deepEqual(users(obs), ["obs"]);
  // One join and one leave of ana, though she had two connections.
  assert.deepEqual(events, ["+obs", "+ana", "+ben", "-ben", "-ana"]);
});

test("above the presence bound, a count", async () => {
  const rooms = ["a", "b", "c", "d"].map((u) => open("big-" + u).join("p-big", { members: true }));
  await Promise.all(rooms.map((r) => r.ready));
  // Each member hears the count, whatever its joined frame listed.
  for (const r of rooms) await until(() => r.members === null && r.count === 4, "a count of 4");
});
