// Type declarations of bachata.js (the API is described in docs/clients.md).
// Checked against the module by tests/types.test.mjs: every export declared
// here exists, and every export of the module is declared.

/** Connection states, as reported by `client.state` and the `state` event. */
export declare const State: Readonly<{
  CONNECTING: 'connecting';
  OPEN: 'open';
  CLOSED: 'closed';
}>;
export type ConnectionState = 'connecting' | 'open' | 'closed';

/**
 * A refused or failed operation: the server's 400 `error` code
 * (`no_route`, `forbidden`, `queue_full`, `store_full`, `app_*`, ...) or the
 * client's own `timeout` and `closed`.
 */
export declare class BachataError extends Error {
  constructor(code: string, reason?: string, id?: string | null);
  readonly name: 'BachataError';
  readonly code: string;
  readonly reason: string;
  readonly id: string | null;
  /** Worth trying again later (`queue_full`, `unavailable`, `timeout`, ...). */
  readonly retryable: boolean;
}

export interface Options {
  /** `ws://host:port/messages` (`http(s)://` and a bare origin work too). */
  url?: string;
  /** Anonymous mode: the channel to connect as. */
  channel?: string;
  /** A JWT (instead of `channel`). */
  token?: string;
  device?: string;
  /** The WebSocket constructor (Node 20: the `ws` package). */
  WebSocket?: new (url: string) => WebSocket;
  autoAck?: boolean;
  storedTimeout?: number;
  deliveredTimeout?: number;
  connectTimeout?: number;
  pingInterval?: number;
  pongTimeout?: number;
  reconnect?: boolean;
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  reconnectFactor?: number;
  stableAfter?: number;
  dedupeSize?: number;
}

export declare const DEFAULTS: Readonly<Required<
  Pick<
    Options,
    | 'autoAck'
    | 'storedTimeout'
    | 'deliveredTimeout'
    | 'connectTimeout'
    | 'pingInterval'
    | 'pongTimeout'
    | 'reconnect'
    | 'minReconnectDelay'
    | 'maxReconnectDelay'
    | 'reconnectFactor'
    | 'stableAfter'
    | 'dedupeSize'
  >
>>;

/** A data message as the server delivers it. */
export interface Message {
  id?: string;
  type: string;
  from?: string;
  dest?: string;
  time?: number;
  data?: unknown;
  [field: string]: unknown;
}

/** A data message to send: `type` is required, `id` is made when absent. */
export interface Outgoing {
  type: string;
  id?: string;
  dest?: string;
  data?: unknown;
  [field: string]: unknown;
}

/** The ready message's data. */
export interface Ready {
  channel: string;
  device?: string;
  secret?: string;
}

export interface Sent {
  id: string;
  /** Resolves on the server's 100. */
  stored: Promise<{ id: string }>;
  /** Resolves on the first 300. */
  delivered: Promise<{ id: string; from: string }>;
}

export interface StateEvent {
  state: ConnectionState;
  previous: ConnectionState;
  attempt?: number;
  code?: number;
  reason?: string;
  retryIn?: number;
}

export interface Events {
  state: StateEvent;
  message: Message;
  stored: { id: string };
  delivered: { id: string; from: string };
  rejected: BachataError;
  duplicate: Message;
  error: Error;
}

export declare class Bachata implements AsyncIterable<Message> {
  constructor(options: Options);
  readonly url: string;
  readonly state: ConnectionState;
  readonly ready: Ready | null;
  /** Sent messages not stored yet (resent on reconnect). */
  readonly unconfirmed: number;
  on<E extends keyof Events>(event: E, fn: (value: Events[E]) => unknown): () => boolean;
  off<E extends keyof Events>(event: E, fn: (value: Events[E]) => unknown): void;
  connect(options?: { timeout?: number }): Promise<Ready>;
  opened(options?: { timeout?: number }): Promise<Ready>;
  send(message: Outgoing, options?: { storedTimeout?: number; deliveredTimeout?: number }): Sent;
  /** No id, no receipts, live connections only; whether it was written. */
  sendLive(message: Outgoing): boolean;
  ack(messageOrId: Message | string): boolean;
  messages(): AsyncIterableIterator<Message>;
  [Symbol.asyncIterator](): AsyncIterableIterator<Message>;
  reconnect(): void;
  close(): void;
}

/** A random message id (a UUID where the platform offers one). */
export declare function newId(): string;

/** `new Bachata(options)` and `connect()` in one call. */
export declare function connect(options: Options): Bachata;

export default Bachata;
