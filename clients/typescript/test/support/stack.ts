/**
 * The real chatpipe for integration tests: `chatpipe all` (API, fan-out,
 * persist, index, edge-1) and, when asked, a second edge as its own
 * process (`chatpipe edge`) that a test can kill -9. Everything runs on
 * loopback ports from 18000-18999 against the shared engines, isolated by
 * a unique topic prefix, consumer groups and index prefix, with a random
 * token secret. The binary is `$CHATPIPE_BIN`, else
 * `$CARGO_TARGET_DIR/debug/chatpipe` (built by `cargo build -p chatpipe`).
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

export interface StackOptions {
  /** A second edge in its own process (killable). */
  secondEdge?: boolean;
  /** Development sign-in (`--dev`). */
  dev?: boolean;
  /** Serve this directory under `/app/`. */
  appDir?: string;
  /** A label for logs. */
  name?: string;
}

export interface Stack {
  apiUrl: string;
  /** Edge WebSocket URLs: edge-1 (in `chatpipe all`), then edge-2 when asked for. */
  wsUrls: string[];
  /** A token for `user`, by `chatpipe token --user` with the stack's secret. */
  token(user: string): Promise<string>;
  /** A user name unique to this stack. */
  user(name: string): string;
  /** kill -9 of the second edge's process. */
  killSecondEdge(): Promise<void>;
  stop(): Promise<void>;
  logDir: string;
}

const run = promisify(execFile);

export function chatpipeBinary(): string {
  const explicit = process.env.CHATPIPE_BIN;
  if (explicit) return explicit;
  const target = process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'chatpipe', 'target');
  return join(target, 'debug', 'chatpipe');
}

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** `count` consecutive free ports in 18000-18999 (a random block of 20). */
async function freePorts(count: number): Promise<number[]> {
  for (let tries = 0; tries < 40; tries++) {
    const base = 18000 + 20 * Math.floor(Math.random() * 49);
    const ports = Array.from({ length: count }, (_, i) => base + i);
    const free = await Promise.all(ports.map(portFree));
    if (free.every(Boolean)) return ports;
  }
  throw new Error('no free block of ports in 18000-18999');
}

async function ready(url: string, deadline: number, child: ChildProcess, what: string): Promise<void> {
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${what} exited with ${child.exitCode} before it was ready`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`${what} not ready at ${url}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function stopProcess(child: ChildProcess, signal: NodeJS.Signals, timeoutMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill(signal);
  });
}

export async function startStack(options: StackOptions = {}): Promise<Stack> {
  const binary = chatpipeBinary();
  if (!existsSync(binary)) throw new Error(`no chatpipe binary at ${binary}: cargo build -p chatpipe --bin chatpipe, or set CHATPIPE_BIN`);
  const unique = randomBytes(5).toString('hex');
  const logDir = mkdtempSync(join(tmpdir(), `chatpipe-${options.name ?? 'stack'}-`));
  const [edgeWs, edgeOps, edgePush, api, apiOps, fanoutOps, persistOps, indexOps, edge2Ws, edge2Ops, edge2Push] = await freePorts(11);
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    CHATPIPE_HOME: logDir,
    CHATPIPE_TOKEN_SECRET: randomBytes(32).toString('hex'),
    CHATPIPE_TOPIC_PREFIX: `tc${unique}.`,
    CHATPIPE_INDEX_PREFIX: `tc${unique}-messages`,
    // One keyspace for every client test run: creating tables is the slow
    // part of a fresh deployment, and every run uses its own user and
    // conversation ids.
    CHATPIPE_CASSANDRA_KEYSPACE: 'chatpipe_client_tests',
    CHATPIPE_FANOUT_GROUP: `tc${unique}-fanout`,
    CHATPIPE_PERSIST_GROUP: `tc${unique}-persist`,
    CHATPIPE_INDEX_GROUP: `tc${unique}-index`,
    RUST_LOG: process.env.RUST_LOG ?? 'info',
  };
  const address = (port: number | undefined) => `127.0.0.1:${port}`;
  const children: ChildProcess[] = [];
  const start = (name: string, args: string[]) => {
    const child = spawn(binary, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const log = createWriteStream(join(logDir, `${name}.log`));
    child.stdout!.pipe(log);
    child.stderr!.pipe(log);
    children.push(child);
    return child;
  };
  const allArgs = [
    'all',
    '--listen', address(edgeWs),
    '--ops-listen', address(edgeOps),
    '--push-listen', address(edgePush),
    '--api-listen', address(api),
    '--api-ops-listen', address(apiOps),
    '--fanout-ops-listen', address(fanoutOps),
    '--persist-ops-listen', address(persistOps),
    '--index-ops-listen', address(indexOps),
    // Short batches: history and search follow the ack closely.
    '--batch-linger-ms', '20',
    '--commit-interval-ms', '500',
  ];
  if (options.dev) allArgs.push('--dev');
  if (options.appDir) allArgs.push('--app-dir', options.appDir);
  const all = start('all', allArgs);
  const deadline = Date.now() + 180_000;
  const stack: Stack = {
    apiUrl: `http://${address(api)}`,
    wsUrls: [`ws://${address(edgeWs)}/ws`],
    logDir,
    user: (name) => `${name}-${unique}`,
    token: async (user) => {
      const { stdout } = await run(binary, ['token', '--user', user], { env });
      return stdout.trim();
    },
    killSecondEdge: async () => {
      const edge2 = children[1];
      if (!edge2) throw new Error('no second edge');
      await stopProcess(edge2, 'SIGKILL', 5_000);
    },
    stop: async () => {
      await Promise.all(children.map((child) => stopProcess(child, 'SIGTERM', 20_000)));
    },
  };
  try {
    for (const [port, role] of [[apiOps, 'api'], [fanoutOps, 'fanout'], [persistOps, 'persist'], [indexOps, 'index'], [edgeOps, 'edge-1']] as const) {
      await ready(`http://${address(port)}/readyz`, deadline, all, `chatpipe all (${role}); log ${logDir}/all.log`);
    }
    if (options.secondEdge) {
      const edge2 = start('edge-2', [
        'edge',
        '--edge-id', 'edge-2',
        '--worker-id', '2',
        '--listen', address(edge2Ws),
        '--ops-listen', address(edge2Ops),
        '--push-listen', address(edge2Push),
      ]);
      await ready(`http://${address(edge2Ops)}/readyz`, deadline, edge2, `edge-2; log ${logDir}/edge-2.log`);
      stack.wsUrls.push(`ws://${address(edge2Ws)}/ws`);
    }
  } catch (error) {
    await stack.stop();
    throw error;
  }
  return stack;
}
