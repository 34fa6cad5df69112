// Typed usage of @wsroom/client, checked by tsc in the tests: it must
// compile, and the lines marked @ts-expect-error must not.
import { connect, connectRoom, WsroomError } from "@wsroom/client";
import type { Ack, Client, JoinedFrame, Member, Position, PresenceFrame, Room, RoomConnection } from "@wsroom/client";

interface Chat {
  text: string;
}

const client: Client = connect("wss://example.com/mux", {
  minDelay: 250,
  onState(state, info) {
    const s: "connecting" | "open" | "reconnecting" | "closed" = state;
    void s, info.delay;
  },
  shouldReconnect: (info) => info.code !== 1008,
});
client.on("reconnecting", (info) => info.delay + info.attempt);
client.on("hello", (hello) => {
  const conn: string = hello.conn;
  const burst: number = hello.limits.burst;
  void conn, burst;
});
const limits = client.limits;
const rate: number | undefined = limits?.rate;
const id: string | null = client.connId;
void rate, id;
const off: () => void = client.on("open", () => {});
off();

const lobby: Room<Chat> = client.join<Chat>("lobby", {
  last: 50,
  members: true,
  onMessage(data, frame) {
    const text: string = data.text;
    const seq: number | undefined = frame.seq;
    void text, seq;
  },
  onResync(info) {
    const resume: string | undefined = info.resume;
    void resume;
  },
  onError(err) {
    const code: string = err.code;
    void code;
  },
});
lobby.on("left", (frame) => frame.reason);
lobby.on("message", (data, frame, kind) => {
  if (kind === "bytes") void (data as unknown as Uint8Array).byteLength;
  const text: string | undefined = frame.text;
  void text;
  // @ts-expect-error: no such kind
  void (kind === "binary");
});
lobby.ready.then((joined: JoinedFrame) => joined.members?.map((m) => m.id));
const acked: Promise<Ack> = lobby.publish({ text: "hi" });
acked.then((ack) => ack.seq, (err: unknown) => err instanceof WsroomError && err.code === "not_joined");
lobby.publish({ text: "typing" }, { ephemeral: true });
// @ts-expect-error: the room's messages are Chat
lobby.publish(42);
const pos: Position | null = lobby.position;
void pos;
lobby.leave().then(() => client.close());
client.request({ op: "pub", room: "x", data: 1 });

const one: RoomConnection<Chat> = connectRoom<Chat>("/rooms/lobby", {
  resume: "k2x:41",
  onMessage(data, env) {
    void data.text, env.epoch;
  },
});
const sent: boolean = one.send({ text: "hello" });
// @ts-expect-error: no such event
one.on("joined", () => {});
void sent;
one.close();

// Presence by user: the members map and the count.
const present: ReadonlyMap<string, Member> | null = lobby.members;
const howMany: number = lobby.count;
lobby.on("presence", (f: PresenceFrame) => f.users?.map((u: string) => present?.get(u)?.info ?? howMany));
