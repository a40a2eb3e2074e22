// The SDK against the real system: `chatpipe all` plus a second edge
// process on loopback ports, real Kafka, Cassandra and OpenSearch.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { WebSocket } from 'ws';

import { ChatClient, compareMessageIds, type ChatClientOptions, type Message } from '../../src/index.js';
import { until } from '../support/scripted-edge.js';
import { startStack, type Stack } from '../support/stack.js';

let stack: Stack;
const clients: ChatClient[] = [];

before(async () => {
  stack = await startStack({ secondEdge: true, name: 'sdk' });
});

after(async () => {
  for (const client of clients) client.close();
  await stack?.stop();
});

function client(user: string, wsUrl: ChatClientOptions['wsUrl'], token: ChatClientOptions['token']): ChatClient {
  const chat = new ChatClient({
    userId: user,
    wsUrl,
    apiUrl: stack.apiUrl,
    token,
    WebSocket: WebSocket as unknown as ChatClientOptions['WebSocket'],
    reconnect: { minDelayMs: 100, maxDelayMs: 2_000 },
  });
  clients.push(chat);
  return chat;
}

async function signedIn(name: string, wsUrl: ChatClientOptions['wsUrl']): Promise<ChatClient> {
  const user = stack.user(name);
  const token = await stack.token(user);
  const chat = client(user, wsUrl, () => token);
  chat.connect();
  await until(() => chat.state === 'open', 20_000, `${name} connected`);
  return chat;
}

/** Records the order in which a client emits messages of one conversation. */
function recorder(chat: ChatClient, conversationId: string): string[] {
  const seen: string[] = [];
  chat.on('message', ({ message }) => {
    if (message.conversation_id === conversationId) seen.push(message.message_id);
  });
  return seen;
}

function ids(messages: readonly Message[]): string[] {
  return messages.map((message) => message.message_id);
}

function assertAscendingOnce(seen: string[], what: string): void {
  assert.equal(new Set(seen).size, seen.length, `${what}: a message came twice`);
  for (let i = 1; i < seen.length; i++) assert.ok(compareMessageIds(seen[i - 1]!, seen[i]!) < 0, `${what}: ${seen[i - 1]} before ${seen[i]}`);
}

describe('against the running system', () => {
  it('refreshes a refused token, converses, relays typing and read, pages history and finds by search', async () => {
    const aliceId = stack.user('alice');
    const good = await stack.token(aliceId);
    const asked: boolean[] = [];
    // The first token is refused by the edge (4001): the callback is asked again.
    const alice = client(aliceId, stack.wsUrls[0]!, ({ refresh }) => {
      asked.push(refresh);
      return refresh ? good : 'not-a-token';
    });
    alice.connect();
    await until(() => alice.state === 'open', 20_000, 'alice connected after a refresh');
    assert.deepEqual(asked.slice(0, 2), [false, true]);

    const bob = await signedIn('bob', stack.wsUrls[0]!);
    const { conversation_id: conversation } = await alice.api.createConversation([bob.userId], 'lunch');
    alice.track(conversation);
    bob.track(conversation);
    const typing: string[] = [];
    bob.on('typing', (frame) => typing.push(frame.user_id));
    const reads: string[] = [];
    alice.on('read', (frame) => reads.push(frame.message_id));

    alice.typing(conversation);
    await until(() => typing.includes(aliceId), 10_000, 'bob sees alice typing');
    const bodies = ['noon?', 'at the usual place', 'quinoa salad 🥗'];
    const acks: Array<{ message_id: string; ts: number }> = [];
    for (const body of bodies) acks.push(await alice.send(conversation, body).done);
    await until(() => bob.messages(conversation).length === 3, 15_000, 'bob got 3 messages');
    assert.deepEqual(bob.messages(conversation).map((m) => m.body), bodies);
    assert.deepEqual(ids(bob.messages(conversation)), acks.map((ack) => ack.message_id));
    assert.equal(alice.pending(conversation).length, 0, 'every echo settled');
    assert.equal(typeof acks[0]!.message_id, 'string');

    bob.markRead(conversation, acks[2]!.message_id);
    await until(() => reads.includes(acks[2]!.message_id), 10_000, 'alice sees the read receipt');

    // History, page by page, back to the start.
    const pages: string[][] = [];
    for await (const page of alice.api.history(conversation, { pageSize: 2 })) pages.push(ids(page));
    assert.deepEqual(pages.flat().sort(compareMessageIds), acks.map((ack) => ack.message_id));

    // Search (indexed shortly after the ack).
    let found: string[] = [];
    async function search(): Promise<void> {
      for await (const page of bob.api.search('quinoa', { conversationId: conversation })) found.push(...page.map((hit) => hit.message.message_id));
    }
    const deadline = Date.now() + 30_000;
    while (found.length === 0 && Date.now() < deadline) {
      found = [];
      await search();
      if (found.length === 0) await new Promise((resolve) => setTimeout(resolve, 300));
    }
    assert.deepEqual(found, [acks[2]!.message_id]);
  });

  it('an edge killed mid-conversation: every stream comes out complete, once each, in order', async () => {
    // Alice (sending) and bob are on edge-2, carol on edge-1; edge-2 is
    // killed with SIGKILL in the middle. Alice's and bob's clients fall back
    // to edge-1, cannot resume there (resumed:false), catch up from history
    // and resend alice's unacked sends marked `resend`.
    const [edge1, edge2] = stack.wsUrls as [string, string];
    const alice = await signedIn('alice2', [edge2, edge1]);
    const bob = await signedIn('bob2', [edge2, edge1]);
    const carol = await signedIn('carol2', edge1);
    const { conversation_id: conversation } = await alice.api.createConversation([bob.userId, carol.userId], 'failover');
    for (const chat of [alice, bob, carol]) chat.track(conversation);
    const seen = { alice: recorder(alice, conversation), bob: recorder(bob, conversation), carol: recorder(carol, conversation) };
    const states: string[] = [];
    bob.on('state', ({ state }) => states.push(state));

    const total = 40;
    const sends: Array<Promise<{ message_id: string }>> = [];
    for (let i = 0; i < total; i++) {
      sends.push(alice.send(conversation, `message ${i}`).done);
      if (i === 15) await stack.killSecondEdge();
      await new Promise((resolve) => setTimeout(resolve, 40));
    }
    const acked = (await Promise.all(sends)).map((ack) => ack.message_id);
    assert.equal(new Set(acked).size, total, 'every send has its own id');
    const expected = [...acked].sort(compareMessageIds);
    for (const [name, chat] of Object.entries({ alice, bob, carol })) {
      await until(() => chat.messages(conversation).length >= total, 60_000, `${name} has every message`);
      assert.deepEqual(ids(chat.messages(conversation)), expected, `${name}'s conversation`);
      assertAscendingOnce(seen[name as keyof typeof seen], `${name}'s stream`);
    }
    assert.ok(states.includes('reconnecting') && states.includes('resyncing'), `bob resynced: ${states.join(' → ')}`);
    // The bodies are in send order too: one conversation, one partition.
    assert.deepEqual(bob.messages(conversation).map((m) => m.body), Array.from({ length: total }, (_, i) => `message ${i}`));
    // Exactly once in history as well (once persist, which trails the live
    // frames by its fetch wait and batch, has written the last ones).
    let history: Message[] = [];
    const deadline = Date.now() + 30_000;
    for (;;) {
      history = [];
      for await (const page of carol.api.history(conversation, { pageSize: 200 })) history.push(...page);
      if (history.length >= total || Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    assert.deepEqual(ids(history).sort(compareMessageIds), expected);
  });

  it('an edit, a delete and reactions by one user are seen by the other, live and in history; replies and mentions too', async () => {
    const alice = await signedIn('alice3', stack.wsUrls[0]!);
    // edge-2 was killed by the test before: both on edge-1.
    const bob = await signedIn('bob3', stack.wsUrls[0]!);
    const { conversation_id: conversation } = await alice.api.createConversation([bob.userId], 'lifecycle');
    for (const chat of [alice, bob]) chat.track(conversation);
    const first = await alice.send(conversation, 'frist').done;
    const second = await alice.send(conversation, 'to be deleted').done;
    const reply = await bob.send(conversation, `@${alice.userId} which one?`, { replyTo: first.message_id, mentions: [alice.userId] }).done;
    await until(() => bob.messages(conversation).length === 3 && alice.messages(conversation).length === 3, 15_000, 'both have 3 messages');
    const replied = alice.messages(conversation)[2]!;
    assert.equal(replied.reply_to, first.message_id, 'the reply arrives with reply_to');
    assert.deepEqual(replied.mentions, [alice.userId]);

    const edited = await alice.editMessage(conversation, first.message_id, 'first');
    assert.equal(edited.message_id, first.message_id);
    await alice.deleteMessage(conversation, second.message_id);
    await alice.react(conversation, reply.message_id, '👍');
    await bob.react(conversation, reply.message_id, '👍');
    await bob.react(conversation, first.message_id, 'eyes');
    await bob.unreact(conversation, first.message_id, 'eyes');
    // Bob cannot edit alice's message: the promise rejects with the server's code.
    await assert.rejects(bob.editMessage(conversation, first.message_id, 'mine now'), (error: unknown) => (error as { code?: string }).code === 'forbidden');

    const expected = (chat: ChatClient) => {
      const [one, two, three] = chat.messages(conversation);
      return (
        one?.body === 'first' &&
        one.edited_at === edited.ts &&
        one.reactions === undefined &&
        two?.deleted === true &&
        two.body === undefined &&
        three?.reactions?.length === 1 &&
        three.reactions[0]!.count === 2
      );
    };
    for (const [name, chat] of Object.entries({ alice, bob })) {
      await until(() => expected(chat), 15_000, `${name} sees the edit, the delete and the reactions`);
      assert.deepEqual(chat.messages(conversation)[2]!.reactions, [{ reaction: '👍', count: 2, me: true }]);
    }

    // History (persist trails the ack): the same, with the reader's own reactions marked.
    const deadline = Date.now() + 30_000;
    for (;;) {
      const history: Message[] = [];
      for await (const page of bob.api.history(conversation, { pageSize: 50 })) history.unshift(...page);
      const [one, two, three] = history;
      const done =
        one?.body === 'first' && one.edited_at !== undefined && two?.deleted === true && three?.reactions?.[0]?.count === 2 && !one.reactions;
      if (done) {
        assert.equal(two!.body, undefined, 'a tombstone has no body');
        assert.deepEqual(three!.reactions, [{ reaction: '👍', count: 2, me: true }]);
        assert.equal(three!.reply_to, first.message_id);
        break;
      }
      assert.ok(Date.now() < deadline, `history: ${JSON.stringify(history)}`);
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    // Bob's second device, loading from history, shows what the live frames made,
    // mentions included.
    const device = client(bob.userId, stack.wsUrls[0]!, async () => stack.token(bob.userId));
    assert.equal(await device.loadOlder(conversation, 50), 3);
    assert.deepEqual(device.messages(conversation), bob.messages(conversation));
  });
});
