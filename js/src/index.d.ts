// Type declarations of @wsroom/client (src/index.js).

/** A place in a room's history: the epoch and the sequence number of a
 * message within it. */
export interface Position {
  epoch: string;
  seq: number;
}

/** The error a request is rejected with. `code` is an error code of the
 * wsroom.v3 protocol (PROTOCOL.md section 6), or one of the client's:
 * "offline" (not connected, for what cannot wait), "disconnected" (the
 * connection ended before the reply), "left" (the room was left),
 * "closed" (the client was closed) and "queue_full" (too many publishes
 * waiting for an ack: ClientOptions.maxPending, or the server's
 * acksPerRoom in one room). */
export class WsroomError extends Error {
  constructor(code: string, message?: string, frame?: ErrorFrame);
  readonly name: "WsroomError";
  code: ErrorCode;
  /** The server's error frame, when it came from one. */
  frame?: ErrorFrame | LeftFrame;
}

export type ErrorCode =
  | "bad_request"
  | "unknown_op"
  | "bad_room"
  | "not_joined"
  | "forbidden"
  | "too_many_rooms"
  | "unavailable"
  | "internal"
  | "resync"
  | "queue_full"
  | "offline"
  | "disconnected"
  | "left"
  | "closed"
  | (string & {});

/** The state of a connection: "connecting" (a handshake is under way),
 * "open", "reconnecting" (lost or refused; the next try is due in
 * info.delay ms) or "closed" (close() was called, or shouldReconnect
 * returned false). */
export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** What a close event says; passed to shouldReconnect and with the
 * "reconnecting" state. */
export interface CloseInfo {
  /** The WebSocket close code (1006 when the connection just broke). */
  code: number;
  reason: string;
  /** false when the handshake itself failed. */
  wasOpen: boolean;
}

export interface ReconnectingInfo extends CloseInfo {
  /** Milliseconds until the next try. */
  delay: number;
  /** The tries since the last stable connection. */
  attempt: number;
}

export interface StateInfo {
  attempt?: number;
  /** With "open" of connectRoom: whether the connection resumed. */
  resumed?: boolean;
  code?: number;
  reason?: string;
  wasOpen?: boolean;
  delay?: number;
}

/** A WebSocket constructor: the global one of browsers and Node 22, or
 * one such as the `ws` package's. */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export interface ConnectionOptions {
  /** The WebSocket constructor (default: globalThis.WebSocket). */
  WebSocket?: WebSocketConstructor;
  /** Backoff bounds, in ms: the n-th retry in a row waits a random time
   * between 0 and min(maxDelay, minDelay * 2^n). Defaults 500 and 30000. */
  minDelay?: number;
  maxDelay?: number;
  /** A connection open this long (ms, default 5000) resets the backoff. */
  stableAfter?: number;
  /** Called after every close not caused by close(); return false to stop
   * (state "closed"). */
  shouldReconnect?(info: CloseInfo): boolean | void;
  onState?(state: ConnectionState, info: StateInfo): void;
  onConnecting?(info: StateInfo): void;
  onOpen?(info: StateInfo): void;
  onReconnecting?(info: ReconnectingInfo): void;
  onClosed?(info: StateInfo): void;
}

interface ConnectionEvents {
  state(state: ConnectionState, info: StateInfo): void;
  connecting(info: StateInfo): void;
  open(info: StateInfo): void;
  reconnecting(info: ReconnectingInfo): void;
  closed(info: StateInfo): void;
}

// ---- Many rooms on one connection (wsroom.v3) ----

/** The server's limits, from its hello frame (PROTOCOL.md). Members this
 * version does not know may come too. */
export interface Limits {
  /** Bytes per frame the server reads (over it: close 1009). */
  readLimit: number;
  /** Rooms per connection (over it: too_many_rooms). */
  rooms: number;
  /** Replies the server queues unread before it stops reading. */
  inflight: number;
  /** Room messages queued for a slow reader. */
  sendBuffer: number;
  /** The presence bound; 0: no presence events. */
  presence: number;
  publishRetryMs: number;
  /** Frames a second (0: no limit) and the burst. */
  rate: number;
  burst: number;
  /** 0: the server does not ping. */
  pingMs: number;
  pongTimeoutMs: number;
  /** How long, and for how many publishes per room, publish ids are
   * remembered for idempotent retries. */
  ackTTLMs: number;
  acksPerRoom: number;
  [member: string]: unknown;
}

/** The server's first frame on every connection. */
export interface HelloFrame {
  op: "hello";
  /** This connection's id: the `from` of its messages, its member id. */
  conn: string;
  /** Where a publish retried with its id gets its original ack: "cluster"
   * on any node of the server's cluster, "node" on the node that took it
   * first (PROTOCOL.md section 5). */
  ackScope?: "cluster" | "node";
  limits: Limits;
}

/** Which member of a msg frame carried the payload: "data" (a JSON value,
 * as clients publish), "text" (a string that is not JSON, from server
 * code) or "bytes" (not UTF-8, from a binary codec; given as a
 * Uint8Array). */
export type PayloadKind = "data" | "text" | "bytes";

export interface Member {
  id: string;
  info?: string;
}

/** A message of a room, as the server sent it. */
export interface MessageFrame<T = unknown> {
  op: "msg";
  room?: string;
  /** Absent on ephemeral messages, as epoch. */
  seq?: number;
  epoch?: string;
  /** Milliseconds since 1970. */
  time: number;
  /** The publishing connection's id; absent for server code's messages. */
  from?: string;
  /** Exactly one of data, text and bytes (standard base64) is present. */
  data?: T;
  text?: string;
  bytes?: string;
}

export interface JoinedFrame {
  op: "joined";
  room: string;
  id?: string;
  /** The room's last message; "" and 0 for an empty history. */
  epoch: string;
  seq: number;
  members?: Member[];
  count?: number;
}

export interface Ack {
  op: "ack";
  id: string;
  room: string;
  /** Absent for an ephemeral publish. */
  seq?: number;
  epoch?: string;
}

export interface ErrorFrame {
  op: "error";
  code: string;
  message: string;
  id?: string;
  room?: string;
  resume?: string;
}

export interface LeftFrame {
  op: "left";
  room: string;
  reason: string;
  id?: string;
}

export interface PresenceFrame {
  op: "presence";
  room: string;
  join?: Member[];
  leave?: string[];
  count?: number;
}

export interface ResyncInfo {
  /** Why the server could not resume the room. */
  reason: string;
  /** "EPOCH:0" when the room's history moved to a new epoch, which the
   * rejoin resumes from its start; absent when the room is joined afresh. */
  resume?: string;
}

export interface ClientOptions extends ConnectionOptions {
  /** How many publishes may wait for their ack at once, in all rooms,
   * including those queued while offline (default 1000). Past it, or past
   * the server's acksPerRoom in one room, publish rejects at once with
   * "queue_full". */
  maxPending?: number;
  /** How many times a request answered "unavailable" or "internal" is
   * sent again, with the same id and backoff (default 6); then a publish
   * is rejected with that error, and a join ends the room with an "error"
   * event. */
  maxRetries?: number;
  /** Listener of each connection's hello frame. */
  onHello?(frame: HelloFrame): void;
  /** Listener of messages the server sends to this connection alone, with
   * no room. */
  onMessage?(data: unknown, frame: MessageFrame, kind: PayloadKind): void;
  /** Listener of error frames that answer no request of the client. */
  onError?(error: WsroomError): void;
}

export interface JoinOptions<T = unknown> {
  /** Without a position, first get the room's last `last` messages. */
  last?: number;
  /** Ask for the room's members in the joined frame. */
  members?: boolean;
  /** Start from this position ("EPOCH:SEQ"), e.g. one kept from a
   * previous page load. */
  resume?: string;
  /** data is the payload as kind says: a JSON value, a string, or a
   * Uint8Array. */
  onMessage?(data: T, frame: MessageFrame<T>, kind: PayloadKind): void;
  onJoined?(frame: JoinedFrame): void;
  onPresence?(frame: PresenceFrame): void;
  /** What the application has of the room is out of date: drop it; the
   * room is being joined again and its messages follow. */
  onResync?(info: ResyncInfo): void;
  /** The server took the client out of the room (reason "removed",
   * "closed" or the application's); the room is not joined again. */
  onLeft?(frame: LeftFrame): void;
  /** The server refused the join (forbidden, bad_room, too_many_rooms...,
   * or unavailable/internal maxRetries times); the room is not joined
   * again. */
  onError?(error: WsroomError): void;
}

interface ClientEvents extends ConnectionEvents {
  hello(frame: HelloFrame): void;
  message(data: unknown, frame: MessageFrame, kind: PayloadKind): void;
  error(error: WsroomError): void;
}

interface RoomEvents<T> {
  message(data: T, frame: MessageFrame<T>, kind: PayloadKind): void;
  joined(frame: JoinedFrame): void;
  presence(frame: PresenceFrame): void;
  resync(info: ResyncInfo): void;
  left(frame: LeftFrame): void;
  error(error: WsroomError): void;
}

export interface PublishOptions {
  /** Not numbered, stored or replayed; never queued: rejected with
   * "offline" when not connected and "disconnected" if the connection
   * ends before the ack. */
  ephemeral?: boolean;
}

export class Client {
  private constructor();
  /** Calls listener on each event of this type; returns a function that
   * removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: ClientEvents[K]): () => void;
  readonly url: URL;
  readonly state: ConnectionState;
  /** The connection id of the last hello frame, or null before the first. */
  readonly connId: string | null;
  /** The limits of the last hello frame, or null before the first. */
  readonly limits: Limits | null;
  /** The rooms joined or being joined, by name. */
  readonly rooms: Map<string, Room>;
  /** Joins a room and returns it at once; it is joined again after every
   * reconnect, resuming from its position. Throws if the client is already
   * in a room of this name. */
  join<T = unknown>(name: string, options?: JoinOptions<T>): Room<T>;
  /** Sends a request frame with its id (a new one if it has none);
   * resolves with the reply that carries the id, rejects with a
   * WsroomError, at once when not connected. Low-level: e.g. a publish
   * kept across page loads, sent again with its id. */
  request(frame: { op: string; id?: string; [member: string]: unknown }): Promise<Record<string, any>>;
  /** Closes the connection for good; waiting publishes are rejected with
   * "closed". */
  close(): void;
}

export class Room<T = unknown> {
  private constructor();
  /** Calls listener on each event of this type; returns a function that
   * removes it. */
  on<K extends keyof RoomEvents<T>>(type: K, listener: RoomEvents<T>[K]): () => void;
  readonly client: Client;
  readonly name: string;
  readonly options: JoinOptions<T>;
  readonly state: "joining" | "joined" | "left";
  /** The last numbered message seen (or the room's position when joined
   * without history), or null. */
  readonly position: Position | null;
  /** Resolves with the first joined frame; rejects if the join is refused
   * or the room is left or the client closed first. */
  readonly ready: Promise<JoinedFrame>;
  /** Publishes data (any JSON value) and resolves with the server's ack.
   * A numbered publish made while disconnected, or not acked when the
   * connection broke, is sent again with the same id once the room is
   * joined again: the server publishes it once. */
  publish(data: T, options?: PublishOptions): Promise<Ack>;
  /** Leaves the room; publishes still waiting are rejected with "left". */
  leave(): Promise<void>;
}

/** Connects to a wsroom.v3 endpoint (Registry.MuxHandler): one connection
 * in many rooms. The URL may be ws(s), http(s) or a path resolved against
 * the page. */
export function connect(url: string | URL, options?: ClientOptions): Client;

// ---- One room per connection ----

/** The envelope of a message of a room with the JSON codec. */
export interface Envelope<T = unknown> {
  seq?: number;
  epoch?: string;
  time: number;
  from?: string;
  data: T;
}

export interface RoomConnectionOptions<T = unknown> extends ConnectionOptions {
  /** WebSocket subprotocols to offer. */
  protocols?: string | string[];
  /** Start from this position ("EPOCH:SEQ"). */
  resume?: string;
  onMessage?(data: T, envelope: Envelope<T>): void;
  /** The server closed with 4000: drop what you have of the room; the
   * connection is made again, from the new epoch's start if info.resume is
   * set, else afresh (with the room's recent history if it sends any). */
  onResync?(info: ResyncInfo): void;
}

interface RoomConnectionEvents<T> extends ConnectionEvents {
  message(data: T, envelope: Envelope<T>): void;
  resync(info: ResyncInfo): void;
}

export class RoomConnection<T = unknown> {
  private constructor();
  /** Calls listener on each event of this type; returns a function that
   * removes it. */
  on<K extends keyof RoomConnectionEvents<T>>(type: K, listener: RoomConnectionEvents<T>[K]): () => void;
  readonly url: URL;
  readonly state: ConnectionState;
  /** The last numbered message seen, or null. */
  readonly position: Position | null;
  /** Sends data as JSON; false, and nothing sent or queued, when not
   * connected. */
  send(data: T): boolean;
  close(): void;
}

/** Connects to one room (Room.Handler, Registry.Handler) that uses the JSON
 * codec. */
export function connectRoom<T = unknown>(url: string | URL, options?: RoomConnectionOptions<T>): RoomConnection<T>;
