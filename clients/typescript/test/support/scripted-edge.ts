/**
 * A scripted chatpipe in one process for unit tests: a WebSocket edge (the
 * `ws` package) and the few HTTP API routes the client calls, on
 * 127.0.0.1:0. Tests read what the client sent and script the answers.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, WebSocket } from 'ws';

export interface Connection {
  url: URL;
  socket: WebSocket;
  /** Every frame the client sent on this connection, parsed. */
  received: Array<Record<string, unknown>>;
  closed: Promise<{ code: number }>;
  send(frame: Record<string, unknown>): void;
  close(code: number, reason?: string): void;
}

type Route = (request: IncomingMessage, url: URL) => { status: number; body: unknown } | undefined;

export class ScriptedEdge {
  readonly connections: Connection[] = [];
  readonly httpRequests: URL[] = [];
  private readonly waiters: Array<(connection: Connection) => void> = [];
  private readonly server: Server;
  private readonly wss: WebSocketServer;
  route: Route = () => undefined;

  private constructor() {
    this.server = createServer((request, response) => this.onHttp(request, response));
    this.wss = new WebSocketServer({ server: this.server, path: '/ws' });
    this.wss.on('connection', (socket, request) => {
      const url = new URL(request.url ?? '/', 'http://localhost');
      const received: Array<Record<string, unknown>> = [];
      const closed = new Promise<{ code: number }>((resolve) => socket.on('close', (code) => resolve({ code })));
      socket.on('message', (data) => {
        const frame = JSON.parse(String(data)) as Record<string, unknown>;
        received.push(frame);
        // Like the edge: every ping is answered (keeps the client's liveness timer happy).
        if (frame.op === 'ping') socket.send(JSON.stringify({ op: 'pong' }));
      });
      const connection: Connection = {
        url,
        socket,
        received,
        closed,
        send: (frame) => socket.send(JSON.stringify(frame)),
        close: (code, reason = '') => socket.close(code, reason),
      };
      this.connections.push(connection);
      this.waiters.shift()?.(connection);
    });
  }

  static async start(): Promise<ScriptedEdge> {
    const edge = new ScriptedEdge();
    await new Promise<void>((resolve) => edge.server.listen(0, '127.0.0.1', resolve));
    return edge;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  get apiUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The next connection (or the one already made and not yet taken). */
  nextConnection(timeoutMs = 5_000): Promise<Connection> {
    return withTimeout(
      new Promise<Connection>((resolve) => this.waiters.push(resolve)),
      timeoutMs,
      'no connection came',
    );
  }

  async stop(): Promise<void> {
    for (const client of this.wss.clients) client.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onHttp(request: IncomingMessage, response: ServerResponse): void {
    const url = new URL(request.url ?? '/', 'http://localhost');
    this.httpRequests.push(url);
    const answer = this.route(request, url) ?? { status: 404, body: { error: { code: 'not_found', message: 'no route' } } };
    response.writeHead(answer.status, { 'content-type': 'application/json' });
    response.end(JSON.stringify(answer.body));
  }
}

/** Polls `predicate` until true (or fails after `timeoutMs`). */
export async function until(predicate: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    promise.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms);
    }),
  ]);
}

/** A message as the server writes it. */
export function message(conversationId: string, id: string, body = `m${id}`, sender = 'bob', clientMsgId = `x-${id}`) {
  return { message_id: id, conversation_id: conversationId, sender_id: sender, client_msg_id: clientMsgId, body, ts: 1_767_225_600_000 };
}

export function hello(sessionId: string, resumed: boolean, heartbeatMs = 15_000) {
  return { op: 'hello', session_id: sessionId, heartbeat_ms: heartbeatMs, resumed };
}
