// ChatClient against a scripted edge and API in this process (the `ws` package).
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it } from 'node:test';
import { WebSocket } from 'ws';

import { ChatClient, SendFailed, messageIdBefore, type ChatClientOptions, type ConnectionState } from '../../src/index.js';
import { ScriptedEdge, hello, message, until, type Connection } from '../support/scripted-edge.js';

let edge: ScriptedEdge;
let clients: ChatClient[] = [];

beforeEach(async () => {
  edge = await ScriptedEdge.start();
  clients = [];
});

afterEach(async () => {
  for (const client of clients) client.close();
  await edge.stop();
});

function newClient(options: Partial<ChatClientOptions> = {}): ChatClient {
  const client = new ChatClient({
    userId: 'alice',
    wsUrl: edge.wsUrl,
    apiUrl: edge.apiUrl,
    token: () => 'tok',
    WebSocket: WebSocket as unknown as ChatClientOptions['WebSocket'],
    reconnect: { minDelayMs: 20, maxDelayMs: 200 },
    persistLagMs: 30,
    ...options,
  });
  clients.push(client);
  return client;
}

/** Connects and answers hello; returns the connection. */
async function connected(client: ChatClient, sessionId = 's1'): Promise<Connection> {
  const next = edge.nextConnection();
  client.connect();
  const connection = await next;
  connection.send(hello(sessionId, false));
  await until(() => client.state === 'open', 5_000, 'open');
  return connection;
}

function frames(connection: Connection, op: string) {
  return connection.received.filter((frame) => frame.op === op);
}

describe('connection', () => {
  it('connects with ?token=, pings at the app level and acknowledges seq in batches', async () => {
    const client = newClient({ pingIntervalMs: 50, ackEveryFrames: 3, ackDelayMs: 10_000 });
    const connection = await connected(client);
    assert.equal(connection.url.searchParams.get('token'), 'tok');
    assert.equal(connection.url.searchParams.get('resume'), null);
    await until(() => frames(connection, 'ping').length >= 2, 2_000, 'two pings');
    for (let seq = 1; seq <= 7; seq++) connection.send({ op: 'message', seq, message: message('c1', String(seq)) });
    await until(() => client.messages('c1').length === 7);
    // 7 frames, a batch of 3: acks at 3 and 6, the 7th waits for the timer.
    await until(() => frames(connection, 'ack_seq').length === 2);
    assert.deepEqual(frames(connection, 'ack_seq').map((frame) => frame.seq), [3, 6]);
  });

  it('resumes with resume=<session_id>&last_seq=N after a drain, and drops replayed duplicates', async () => {
    const client = newClient();
    const first = await connected(client, 'sess-1');
    first.send({ op: 'message', seq: 1, message: message('c1', '11') });
    first.send({ op: 'message', seq: 2, message: message('c1', '12') });
    await until(() => client.messages('c1').length === 2);
    const next = edge.nextConnection();
    first.send({ op: 'reconnect', reason: 'draining' });
    first.close(1001, 'draining');
    const second = await next;
    assert.equal(second.url.searchParams.get('resume'), 'sess-1');
    assert.equal(second.url.searchParams.get('last_seq'), '2');
    second.send(hello('sess-1', true));
    second.send({ op: 'message', seq: 2, message: message('c1', '12') });
    second.send({ op: 'message', seq: 3, message: message('c1', '13') });
    await until(() => client.messages('c1').length === 3);
    assert.deepEqual(client.messages('c1').map((m) => m.message_id), ['11', '12', '13']);
    assert.equal(edge.httpRequests.length, 0, 'a resumed session needs no history');
  });

  it('after resumed:false buffers live frames, pages history after=, merges, de-duplicates and repeats after the persist lag', async () => {
    const states: ConnectionState[] = [];
    const client = newClient();
    client.on('state', ({ state }) => states.push(state));
    const first = await connected(client, 'old');
    first.send({ op: 'message', seq: 1, message: message('c1', '100') });
    await until(() => client.messages('c1').length === 1);

    // History: 101..104 now, 105 only on the second read (the persist lag).
    let reads = 0;
    edge.route = (_request, url) => {
      if (url.pathname === '/v1/conversations') {
        return { status: 200, body: { conversations: [{ conversation_id: 'c1', member_count: 2, created_at: 0, created_by: 'alice', joined_at: 0 }] } };
      }
      if (url.pathname === '/v1/conversations/c1/messages') {
        reads++;
        const after = BigInt(url.searchParams.get('after') ?? '0');
        const stored = reads <= 1 ? ['101', '102', '103', '104'] : ['101', '102', '103', '104', '105'];
        const page = stored.filter((id) => BigInt(id) > after).slice(0, 2);
        // Newest first, like the API.
        const has_more = stored.filter((id) => BigInt(id) > after).length > 2;
        return { status: 200, body: { conversation_id: 'c1', messages: page.map((id) => message('c1', id)).reverse(), has_more, next_after: page.at(-1) } };
      }
      return undefined;
    };
    const next = edge.nextConnection();
    first.close(4008, 'slow consumer');
    const second = await next;
    assert.equal(second.url.searchParams.get('resume'), 'old');
    second.send(hello('new', false));
    // Live frames during the catch-up: 104 (also in history) and 106.
    second.send({ op: 'message', seq: 1, message: message('c1', '104') });
    second.send({ op: 'message', seq: 2, message: message('c1', '106') });
    await until(() => client.state === 'open' && client.messages('c1').length === 7, 5_000, 'caught up');
    assert.deepEqual(client.messages('c1').map((m) => m.message_id), ['100', '101', '102', '103', '104', '105', '106']);
    assert.ok(states.includes('resyncing'), `states: ${states.join(',')}`);
    const afters = edge.httpRequests.filter((url) => url.searchParams.has('after')).map((url) => url.searchParams.get('after'));
    // From the overlap before the newest held (ids of two edges' clocks
    // can reach the conversation out of order); the overlap is
    // de-duplicated, so 100..104 are held once.
    assert.equal(afters[0], messageIdBefore('100', 5_000), 'pages from the overlap before the last message held');
  });

  it('emits every message once and in order across the merge', async () => {
    const client = newClient();
    const seen: string[] = [];
    client.on('message', ({ message: m }) => seen.push(m.message_id));
    const connection = await connected(client);
    for (const [seq, id] of [[1, '1'], [2, '2'], [3, '2'], [4, '3']] as const) connection.send({ op: 'message', seq, message: message('c1', id) });
    await until(() => seen.length === 3);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(seen, ['1', '2', '3']);
  });
});

describe('close codes', () => {
  it('1013 waits retry_after_ms before reconnecting', async () => {
    const client = newClient();
    const first = await connected(client);
    const next = edge.nextConnection();
    const closedAt = Date.now();
    first.close(1013, 'capacity; retry_after_ms=400');
    await next;
    assert.ok(Date.now() - closedAt >= 380, `reconnected after ${Date.now() - closedAt} ms`);
  });

  it('4009 stops for good', async () => {
    const client = newClient();
    const first = await connected(client);
    first.close(4009, 'taken over');
    await until(() => client.state === 'stopped');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(edge.connections.length, 1);
  });

  it('4010 reconnects without resume and catches up', async () => {
    edge.route = (_request, url) =>
      url.pathname === '/v1/conversations'
        ? { status: 200, body: { conversations: [] } }
        : undefined;
    const client = newClient();
    const first = await connected(client, 'lost');
    first.send({ op: 'message', seq: 1, message: message('c1', '1') });
    await until(() => client.messages('c1').length === 1);
    const next = edge.nextConnection();
    first.close(4010, 'resync');
    const second = await next;
    assert.equal(second.url.searchParams.get('resume'), null);
    second.send(hello('fresh', false));
    await until(() => edge.httpRequests.some((url) => url.pathname === '/v1/conversations'), 5_000, 'catch-up');
  });

  it('4001 asks the token callback for a fresh token', async () => {
    const asked: boolean[] = [];
    const client = newClient({ token: ({ refresh }) => (asked.push(refresh), refresh ? 'fresh' : 'stale') });
    const next = edge.nextConnection();
    client.connect();
    const first = await next;
    assert.equal(first.url.searchParams.get('token'), 'stale');
    const again = edge.nextConnection();
    first.close(4001, 'expired');
    const second = await again;
    assert.equal(second.url.searchParams.get('token'), 'fresh');
    assert.deepEqual(asked, [false, true]);
  });
});

describe('sending', () => {
  it('echoes at once, resends with the same client_msg_id and resend:true after a drop, settles on the ack', async () => {
    const client = newClient();
    const first = await connected(client, 's');
    const { clientMsgId, done } = client.send('c1', 'hello');
    assert.equal(client.pending('c1').length, 1, 'optimistic echo');
    await until(() => frames(first, 'send').length === 1);
    assert.equal(frames(first, 'send')[0]!.resend, undefined);
    const next = edge.nextConnection();
    first.close(4008);
    const second = await next;
    second.send(hello('s', true));
    await until(() => frames(second, 'send').length === 1);
    assert.deepEqual(frames(second, 'send')[0], { op: 'send', conversation_id: 'c1', client_msg_id: clientMsgId, body: 'hello', resend: true });
    second.send({ op: 'ack', client_msg_id: clientMsgId, message_id: '900', ts: 5 });
    assert.deepEqual(await done, { message_id: '900', ts: 5 });
    await until(() => client.pending('c1').length === 0);
    assert.deepEqual(client.messages('c1').map((m) => [m.message_id, m.body]), [['900', 'hello']]);
    // The fan-out copy that follows is a duplicate.
    second.send({ op: 'message', seq: 1, message: { ...message('c1', '900', 'hello', 'alice', clientMsgId) } });
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(client.messages('c1').length, 1);
  });

  it('holds at most maxInFlight sends unacked', async () => {
    const client = newClient({ maxInFlight: 2 });
    const connection = await connected(client);
    const sends = ['a', 'b', 'c', 'd', 'e'].map((body) => client.send('c1', body));
    await until(() => frames(connection, 'send').length === 2);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(frames(connection, 'send').length, 2);
    let acked = 0;
    while (acked < 5) {
      await until(() => frames(connection, 'send').length > acked);
      const frame = frames(connection, 'send')[acked]!;
      connection.send({ op: 'ack', client_msg_id: frame.client_msg_id, message_id: String(100 + acked), ts: 1 });
      acked++;
    }
    await Promise.all(sends.map((send) => send.done));
    assert.deepEqual(frames(connection, 'send').map((frame) => frame.body), ['a', 'b', 'c', 'd', 'e']);
  });

  it('retries unavailable marked as resend, and fails forbidden for good', async () => {
    const client = newClient();
    const connection = await connected(client);
    const retried = client.send('c1', 'one');
    const refused = client.send('c2', 'two');
    await until(() => frames(connection, 'send').length === 2);
    connection.send({ op: 'error', ref: retried.clientMsgId, code: 'unavailable', message: 'kafka' });
    connection.send({ op: 'error', ref: refused.clientMsgId, code: 'forbidden', message: 'not a member' });
    await assert.rejects(refused.done, /forbidden/);
    assert.equal(client.pending('c2')[0]?.status, 'failed');
    await until(() => frames(connection, 'send').length === 3, 5_000, 'the retry');
    assert.equal(frames(connection, 'send')[2]!.resend, true);
    assert.equal(frames(connection, 'send')[2]!.client_msg_id, retried.clientMsgId);
  });
});

describe('typing and read', () => {
  it('throttles typing per conversation and debounces read receipts to the newest id', async () => {
    const client = newClient({ typingThrottleMs: 10_000, readDebounceMs: 40 });
    const connection = await connected(client);
    for (let i = 0; i < 5; i++) client.typing('c1');
    client.typing('c2');
    client.markRead('c1', '5');
    client.markRead('c1', '12');
    client.markRead('c1', '9');
    await until(() => frames(connection, 'read').length === 1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(frames(connection, 'typing').map((frame) => frame.conversation_id), ['c1', 'c2']);
    assert.deepEqual(frames(connection, 'read'), [{ op: 'read', conversation_id: 'c1', message_id: '12' }]);
    client.markRead('c1', '11');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(frames(connection, 'read').length, 1, 'never moves back');
  });

  it('relays typing, read and presence frames', async () => {
    const client = newClient();
    const got: string[] = [];
    client.on('typing', (frame) => got.push(`typing ${frame.user_id}`));
    client.on('read', (frame) => got.push(`read ${frame.message_id}`));
    client.on('presence', (frame) => got.push(`presence ${frame.status}`));
    const connection = await connected(client);
    connection.send({ op: 'typing', seq: 1, conversation_id: 'c1', user_id: 'bob' });
    connection.send({ op: 'read', seq: 2, conversation_id: 'c1', user_id: 'bob', message_id: '3' });
    connection.send({ op: 'presence', seq: 3, user_id: 'bob', status: 'offline' });
    connection.send({ op: 'something_new', seq: 4 });
    await until(() => got.length === 3);
    assert.deepEqual(got, ['typing bob', 'read 3', 'presence offline']);
  });
});

describe('read markers from other devices', () => {
  it('moves readPosition forward, never back, and sends nothing for it', async () => {
    const client = newClient({ readDebounceMs: 20 });
    const markers: string[] = [];
    client.on('readMarker', ({ conversationId, messageId }) => markers.push(`${conversationId} ${messageId}`));
    const connection = await connected(client);
    connection.send({ op: 'read', seq: 1, conversation_id: 'c1', user_id: 'alice', message_id: '20' });
    // Another member's receipt is not this user's marker.
    connection.send({ op: 'read', seq: 2, conversation_id: 'c1', user_id: 'bob', message_id: '30' });
    // An older marker of this user arriving late changes nothing.
    connection.send({ op: 'read', seq: 3, conversation_id: 'c1', user_id: 'alice', message_id: '9' });
    connection.send({ op: 'read', seq: 4, conversation_id: 'c2', user_id: 'alice', message_id: '5' });
    await until(() => markers.length === 2);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(markers, ['c1 20', 'c2 5']);
    assert.equal(client.readPosition('c1'), '20');
    // Marking an older message read sends nothing; a newer one is sent.
    client.markRead('c1', '15');
    await new Promise((resolve) => setTimeout(resolve, 80));
    assert.equal(frames(connection, 'read').length, 0);
    client.markRead('c1', '21');
    await until(() => frames(connection, 'read').length === 1);
    assert.deepEqual(frames(connection, 'read'), [{ op: 'read', conversation_id: 'c1', message_id: '21' }]);
  });
});

describe('inbox', () => {
  it('pages the inbox with next_cursor, and listConversations reads every page', async () => {
    const all = ['c5', 'c4', 'c3', 'c2', 'c1'];
    edge.route = (_request, url) => {
      if (url.pathname === '/v1/conversations') {
        const start = Number(url.searchParams.get('cursor') ?? '0');
        const limit = Number(url.searchParams.get('limit'));
        const page = all.slice(start, start + limit);
        const next = start + limit < all.length ? String(start + limit) : undefined;
        const conversations = page.map((id) => ({ conversation_id: id, unread_count: 1, unread_count_exact: true, mention_count: 0, mention_count_exact: true }));
        return { status: 200, body: next ? { conversations, next_cursor: next } : { conversations } };
      }
      if (url.pathname === '/v1/conversations/c1/read-state') {
        return { status: 200, body: { conversation_id: 'c1', read_marker: '7', unread_count: 3, unread_count_exact: true, mention_count: 1, mention_count_exact: true } };
      }
      return undefined;
    };
    const client = newClient();
    const pages: string[][] = [];
    for await (const page of client.api.inbox({ pageSize: 2 })) pages.push(page.map((item) => item.conversation_id));
    assert.deepEqual(pages, [['c5', 'c4'], ['c3', 'c2'], ['c1']]);
    assert.deepEqual((await client.api.listConversations()).map((item) => item.conversation_id), all);
    const state = await client.api.readState('c1');
    assert.equal(state.unread_count, 3);
    assert.equal(state.read_marker, '7');
  });
});

describe('membership', () => {
  it('announces conversations as they appear and forgets one the user left', async () => {
    const client = newClient();
    const got: string[] = [];
    client.on('conversation', ({ conversationId, via }) => got.push(`conversation ${conversationId} ${via}`));
    client.on('membership', (frame) => got.push(`${frame.op} ${frame.conversation_id}`));
    client.on('message', ({ conversationId }) => got.push(`message ${conversationId}`));
    const connection = await connected(client);
    const change = { conversation_id: 'c9', actor_id: 'bob', ts: 1 };
    connection.send({ op: 'member_added', seq: 1, user_id: 'alice', ...change });
    connection.send({ op: 'message', seq: 2, message: message('c9', '5') });
    connection.send({ op: 'member_role_changed', seq: 3, user_id: 'alice', role: 'admin', ...change });
    // A message that overtook its member_added still announces its conversation.
    connection.send({ op: 'message', seq: 4, message: message('c7', '6') });
    connection.send({ op: 'member_added', seq: 5, user_id: 'alice', ...change, conversation_id: 'c7' });
    await until(() => got.length === 7);
    assert.deepEqual(got, [
      'conversation c9 membership',
      'member_added c9',
      'message c9',
      'member_role_changed c9',
      'conversation c7 message',
      'message c7',
      // c7 is known by now: no second `conversation`.
      'member_added c7',
    ]);
    assert.equal(client.messages('c9').length, 1);
    connection.send({ op: 'member_removed', seq: 6, user_id: 'alice', ...change });
    await until(() => got.length === 8);
    assert.equal(got[7], 'member_removed c9');
    assert.deepEqual(client.messages('c9'), [], 'the conversation was dropped');
  });
});

describe('paging iterators', () => {
  it('scroll back through history and search page by page', async () => {
    const ids = Array.from({ length: 7 }, (_, i) => String(i + 1));
    edge.route = (_request, url) => {
      if (url.pathname === '/v1/conversations/c1/messages') {
        const before = BigInt(url.searchParams.get('before') ?? '99');
        const limit = Number(url.searchParams.get('limit'));
        const older = ids.filter((id) => BigInt(id) < before).reverse();
        const page = older.slice(0, limit);
        return { status: 200, body: { conversation_id: 'c1', messages: page.map((id) => message('c1', id)), has_more: older.length > limit, next_before: page.at(-1) } };
      }
      if (url.pathname === '/v1/search') {
        const cursor = url.searchParams.get('cursor');
        return {
          status: 200,
          body: cursor
            ? { hits: [{ message: message('c1', '1'), highlights: ['<em>a</em>'] }], next_cursor: null }
            : { hits: [{ message: message('c1', '2'), highlights: [] }], next_cursor: 'k1' },
        };
      }
      return undefined;
    };
    const client = newClient();
    const pages: string[][] = [];
    for await (const page of client.api.history('c1', { pageSize: 3 })) pages.push(page.map((m) => m.message_id));
    assert.deepEqual(pages, [['5', '6', '7'], ['2', '3', '4'], ['1']]);
    const hits: string[] = [];
    for await (const page of client.api.search('a')) hits.push(...page.map((hit) => hit.message.message_id));
    assert.deepEqual(hits, ['2', '1']);
    assert.equal(await client.loadOlder('c1', 3), 3);
    assert.equal(await client.loadOlder('c1', 3), 3);
    assert.deepEqual(client.messages('c1').map((m) => m.message_id), ['2', '3', '4', '5', '6', '7']);
  });
});

describe('changes to messages', () => {
  it('edits, deletes and reacts with a request id, settles on the ack and shows the change at once', async () => {
    const client = newClient();
    const connection = await connected(client);
    connection.send({ op: 'message', seq: 1, message: message('c1', '10', 'helo', 'alice', 'k10') });
    connection.send({ op: 'message', seq: 2, message: message('c1', '11', 'other', 'bob') });
    await until(() => client.messages('c1').length === 2);
    const updates: string[] = [];
    client.on('messageUpdated', ({ message: m }) => updates.push(m.message_id));

    const edited = client.editMessage('c1', '10', 'hello');
    await until(() => frames(connection, 'edit').length === 1);
    const edit = frames(connection, 'edit')[0]!;
    assert.deepEqual({ ...edit, client_msg_id: undefined }, { op: 'edit', conversation_id: 'c1', message_id: '10', body: 'hello', client_msg_id: undefined });
    assert.match(String(edit.client_msg_id), /^[A-Za-z0-9_.:@-]{1,128}$/);
    connection.send({ op: 'ack', client_msg_id: edit.client_msg_id, message_id: '10', ts: 2_000 });
    assert.deepEqual(await edited, { message_id: '10', ts: 2_000 });
    assert.deepEqual([client.messages('c1')[0]!.body, client.messages('c1')[0]!.edited_at], ['hello', 2_000]);
    // The frame that follows repeats the edit: nothing changes.
    connection.send({ op: 'message_edited', seq: 3, conversation_id: 'c1', message_id: '10', user_id: 'alice', body: 'hello', edited_at: 2_000 });

    const reacted = client.react('c1', '11', '👍');
    await until(() => frames(connection, 'react').length === 1);
    const react = frames(connection, 'react')[0]!;
    assert.equal(react.reaction, '👍');
    assert.notEqual(react.client_msg_id, edit.client_msg_id, 'each request has its own id');
    connection.send({ op: 'ack', client_msg_id: react.client_msg_id, message_id: '11', ts: 2_001 });
    await reacted;
    connection.send({ op: 'reaction', seq: 4, conversation_id: 'c1', message_id: '11', user_id: 'alice', reaction: '👍', action: 'add', ts: 2_001 });
    connection.send({ op: 'reaction', seq: 5, conversation_id: 'c1', message_id: '11', user_id: 'bob', reaction: '👍', action: 'add', ts: 2_002 });
    await until(() => client.messages('c1')[1]!.reactions?.[0]?.count === 2);
    assert.deepEqual(client.messages('c1')[1]!.reactions, [{ reaction: '👍', count: 2, me: true }]);

    // toggleReaction takes back this user's own reaction.
    const toggled = client.toggleReaction('c1', '11', '👍');
    await until(() => frames(connection, 'unreact').length === 1);
    const unreact = frames(connection, 'unreact')[0]!;
    connection.send({ op: 'ack', client_msg_id: unreact.client_msg_id, message_id: '11', ts: 2_003 });
    await toggled;
    assert.deepEqual(client.messages('c1')[1]!.reactions, [{ reaction: '👍', count: 1, me: false }]);

    const deleted = client.deleteMessage('c1', '10');
    await until(() => frames(connection, 'delete').length === 1);
    const del = frames(connection, 'delete')[0]!;
    assert.deepEqual(Object.keys(del).sort(), ['client_msg_id', 'conversation_id', 'message_id', 'op']);
    connection.send({ op: 'ack', client_msg_id: del.client_msg_id, message_id: '10', ts: 2_004 });
    await deleted;
    const tombstone = client.messages('c1')[0]!;
    assert.equal(tombstone.deleted, true);
    assert.equal(tombstone.body, undefined, 'the body is dropped');
    assert.deepEqual(updates, ['10', '11', '11', '11', '10']);
  });

  it('rejects with the server error code; retries unavailable with the same request id', async () => {
    const client = newClient();
    const connection = await connected(client);
    const refused = client.editMessage('c1', '10', 'not mine');
    const retried = client.react('c1', '10', 'party');
    await until(() => frames(connection, 'edit').length === 1 && frames(connection, 'react').length === 1);
    const edit = frames(connection, 'edit')[0]!;
    const react = frames(connection, 'react')[0]!;
    connection.send({ op: 'error', ref: edit.client_msg_id, code: 'forbidden', message: 'not the sender' });
    await assert.rejects(refused, (error: unknown) => error instanceof SendFailed && error.code === 'forbidden');
    connection.send({ op: 'error', ref: react.client_msg_id, code: 'unavailable', message: 'kafka' });
    await until(() => frames(connection, 'react').length === 2, 5_000, 'the retry');
    assert.deepEqual(frames(connection, 'react')[1], react, 'written again as it was');
    connection.send({ op: 'ack', client_msg_id: react.client_msg_id, message_id: '10', ts: 3 });
    assert.deepEqual(await retried, { message_id: '10', ts: 3 });
    assert.equal(client.pending('c1').length, 0, 'a change is no pending message');
    await assert.rejects(client.deleteMessage('c1', 'not-an-id'), TypeError);
  });

  it("applies others' edits, deletes and reactions idempotently, replays and late frames included", async () => {
    const client = newClient();
    const connection = await connected(client, 's');
    connection.send({ op: 'message', seq: 1, message: message('c1', '20', 'first', 'bob') });
    connection.send({ op: 'message', seq: 2, message: message('c1', '21', 'second', 'bob') });
    const change = { conversation_id: 'c1', user_id: 'bob' };
    connection.send({ op: 'message_edited', seq: 3, ...change, message_id: '20', body: 'first, edited', edited_at: 100 });
    // An older edit arriving late changes nothing.
    connection.send({ op: 'message_edited', seq: 4, ...change, message_id: '20', body: 'stale', edited_at: 90 });
    for (const [seq, user] of [[5, 'bob'], [6, 'carol'], [7, 'carol'], [8, 'dave']] as const) {
      connection.send({ op: 'reaction', seq, ...change, message_id: '21', user_id: user, reaction: '+1', action: 'add', ts: 1 });
    }
    connection.send({ op: 'reaction', seq: 9, ...change, message_id: '21', user_id: 'dave', reaction: '+1', action: 'remove', ts: 2 });
    connection.send({ op: 'reaction', seq: 10, ...change, message_id: '21', user_id: 'dave', reaction: 'eyes', action: 'add', ts: 3 });
    connection.send({ op: 'message_deleted', seq: 11, ...change, message_id: '20', deleted_at: 200 });
    // A change to a message not loaded here: its history copy will carry it.
    connection.send({ op: 'message_deleted', seq: 12, ...change, message_id: '5', deleted_at: 200 });
    await until(() => client.messages('c1')[0]?.deleted === true);
    // After a drain the edge sends some of the same changes again under new seqs.
    const next = edge.nextConnection();
    connection.close(1001, 'draining');
    const second = await next;
    second.send(hello('s', true));
    second.send({ op: 'reaction', seq: 13, ...change, message_id: '21', user_id: 'carol', reaction: '+1', action: 'add', ts: 1 });
    second.send({ op: 'reaction', seq: 14, ...change, message_id: '21', user_id: 'dave', reaction: '+1', action: 'remove', ts: 2 });
    second.send({ op: 'message_edited', seq: 15, ...change, message_id: '20', body: 'after delete', edited_at: 300 });
    second.send({ op: 'message', seq: 16, message: message('c1', '22', 'marker', 'bob') });
    await until(() => client.messages('c1').length === 3);
    const [first, second21] = client.messages('c1');
    // A tombstone, as history returns it: no body; the later edit did not revive it.
    const { body: _body, ...withoutBody } = message('c1', '20', 'first', 'bob');
    assert.deepEqual(first, { ...withoutBody, edited_at: 100, deleted: true });
    assert.deepEqual(second21!.reactions, [
      { reaction: '+1', count: 2, me: false },
      { reaction: 'eyes', count: 1, me: false },
    ]);
    assert.deepEqual(client.messages('c1').map((m) => m.message_id), ['20', '21', '22']);
  });

  it('sends replies and mentions, and the echo carries them', async () => {
    const client = newClient();
    const connection = await connected(client);
    const { clientMsgId, done } = client.send('c1', 'hey @bob', { replyTo: '7', mentions: ['bob', 'bob', 'alice'] });
    assert.equal(client.pending('c1')[0]!.reply_to, '7');
    await until(() => frames(connection, 'send').length === 1);
    assert.deepEqual(frames(connection, 'send')[0], { op: 'send', conversation_id: 'c1', client_msg_id: clientMsgId, body: 'hey @bob', reply_to: '7', mentions: ['bob', 'alice'] });
    connection.send({ op: 'ack', client_msg_id: clientMsgId, message_id: '30', ts: 9 });
    await done;
    const echo = client.messages('c1')[0]!;
    assert.equal(echo.reply_to, '7');
    assert.deepEqual(echo.mentions, ['bob'], 'never the sender, as the server stores it');
    // The old third argument, a client_msg_id, still works.
    assert.equal(client.send('c1', 'plain', 'my-id').clientMsgId, 'my-id');
    assert.throws(() => client.send('c1', 'x', { replyTo: '0x1' }), TypeError);
  });

  it('holds changes that come during a catch-up and applies them after the buffered messages', async () => {
    const client = newClient();
    const first = await connected(client, 'old');
    first.send({ op: 'message', seq: 1, message: message('c1', '100', 'typo') });
    await until(() => client.messages('c1').length === 1);
    edge.route = (_request, url) => {
      if (url.pathname === '/v1/conversations') return { status: 200, body: { conversations: [{ conversation_id: 'c1' }] } };
      if (url.pathname === '/v1/conversations/c1/messages') return { status: 200, body: { conversation_id: 'c1', messages: [message('c1', '101')], has_more: false } };
      return undefined;
    };
    const next = edge.nextConnection();
    first.close(4008, 'slow consumer');
    const second = await next;
    const change = { conversation_id: 'c1', user_id: 'bob' };
    second.send(hello('new', false));
    // History never holds 102 here: the catch-up keeps passing (and buffering) for a while.
    await until(() => client.state === 'resyncing', 5_000, 'resyncing');
    second.send({ op: 'message', seq: 1, message: message('c1', '102') });
    second.send({ op: 'reaction', seq: 2, ...change, message_id: '102', reaction: 'ok', action: 'add', ts: 5 });
    second.send({ op: 'message_edited', seq: 3, ...change, message_id: '100', body: 'fixed', edited_at: 6 });
    await until(() => client.state === 'open' && client.messages('c1').length === 3, 5_000, 'caught up');
    await until(() => client.messages('c1')[2]!.reactions !== undefined, 5_000, 'the reaction applied');
    assert.deepEqual(client.messages('c1').map((m) => [m.message_id, m.body, m.reactions?.[0]?.count]), [
      ['100', 'fixed', undefined],
      ['101', 'm101', undefined],
      ['102', 'm102', 1],
    ]);
  });
});
