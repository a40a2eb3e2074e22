// Engine-free tests of the pure parts: ids, close policy, outbox, store, highlights.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  CLOSE,
  ConversationStore,
  Outbox,
  SendFailed,
  closeAction,
  compareMessageIds,
  highlightToHtml,
  isMessageId,
  maxMessageId,
  messageIdBefore,
  membershipEffect,
  retryAfterMs,
} from '../../src/index.js';
import { message } from '../support/scripted-edge.js';

const backoff = { minDelayMs: 100, maxDelayMs: 1_000, random: () => 0.5 };

describe('membership frames', () => {
  it('tell a client whether it joined, left, or others changed', () => {
    const base = { seq: 1, conversation_id: 'c1', actor_id: 'owner', ts: 1 };
    assert.equal(
      membershipEffect({ ...base, op: 'conversation_created', history_visibility: 'shared', member_count: 2 }, 'alice'),
      'joined',
    );
    assert.equal(membershipEffect({ ...base, op: 'member_added', user_id: 'alice' }, 'alice'), 'joined');
    assert.equal(membershipEffect({ ...base, op: 'member_added', user_id: 'bob' }, 'alice'), 'changed');
    assert.equal(membershipEffect({ ...base, op: 'member_removed', user_id: 'alice' }, 'alice'), 'left');
    assert.equal(membershipEffect({ ...base, op: 'member_removed', user_id: 'bob' }, 'alice'), 'changed');
    assert.equal(membershipEffect({ ...base, op: 'member_role_changed', user_id: 'alice', role: 'admin' }, 'alice'), 'changed');
    assert.equal(membershipEffect({ ...base, op: 'conversation_updated', history_visibility: 'joined' }, 'alice'), 'changed');
  });

  it('a store forgets a conversation the user left', () => {
    const store = new ConversationStore();
    store.insert(message('c1', '1'));
    assert.ok(store.holds('c1'));
    store.forget('c1');
    assert.ok(!store.holds('c1'));
    assert.deepEqual(store.messages('c1'), []);
  });
});

describe('message ids', () => {
  it('compare as 64-bit numbers, beyond what a JS number holds', () => {
    const a = '9007199254740993'; // 2^53 + 1: Number() would round it to 2^53
    const b = '9007199254740992';
    assert.equal(Number(a), Number(b), 'the premise: numbers lose the difference');
    assert.ok(compareMessageIds(a, b) > 0);
    assert.ok(compareMessageIds('99', '100') < 0);
    assert.equal(maxMessageId('9223372036854775807', '9223372036854775806'), '9223372036854775807');
  });

  it('move back in time by whole milliseconds, never below 1', () => {
    const id = ((1_700_000_000_000n << 22n) | 5n).toString();
    assert.equal(messageIdBefore(id, 5_000), (((1_700_000_000_000n - 5_000n) << 22n) | 5n).toString());
    assert.equal(messageIdBefore(id, 0), id);
    assert.equal(messageIdBefore('12345', 5_000), '1');
  });

  it('are validated like the schema', () => {
    assert.ok(isMessageId('1'));
    assert.ok(isMessageId('9223372036854775807'));
    assert.ok(!isMessageId('9223372036854775808'));
    assert.ok(!isMessageId('01'));
    assert.ok(!isMessageId(12 as unknown));
  });
});

describe('close policy', () => {
  it('1013 waits retry_after_ms', () => {
    assert.equal(retryAfterMs('rate_limited; retry_after_ms=1234'), 1234);
    assert.deepEqual(closeAction(CLOSE.TRY_AGAIN_LATER, 'capacity; retry_after_ms=5000', 0, 0, backoff), {
      kind: 'resume',
      delayMs: 5000,
      refreshToken: false,
    });
  });

  it('4009 stops, 4010 resyncs, 4001 refreshes the token and stops when refused again and again', () => {
    assert.deepEqual(closeAction(CLOSE.TAKEN_OVER, '', 0, 0, backoff), { kind: 'stop', reason: 'taken_over' });
    assert.equal(closeAction(CLOSE.RESYNC, '', 0, 0, backoff).kind, 'resync');
    const unauthorized = closeAction(CLOSE.UNAUTHORIZED, '', 0, 1, backoff);
    assert.equal(unauthorized.kind === 'resume' && unauthorized.refreshToken, true);
    assert.deepEqual(closeAction(CLOSE.UNAUTHORIZED, '', 2, 3, backoff), { kind: 'stop', reason: 'unauthorized' });
    assert.deepEqual(closeAction(CLOSE.TOKEN_EXPIRED, 'token expired', 0, 0, backoff), {
      kind: 'resume',
      delayMs: 0,
      refreshToken: true,
    });
  });

  it('backs off exponentially up to the ceiling on network failures', () => {
    const delays = [0, 1, 2, 3, 4, 10].map((attempt) => {
      const action = closeAction(CLOSE.ABNORMAL, '', attempt, 0, backoff);
      assert.equal(action.kind, 'resume');
      return action.kind === 'resume' ? action.delayMs : -1;
    });
    assert.deepEqual(delays, [75, 150, 300, 600, 750, 750]);
  });
});

describe('outbox', () => {
  const options = { maxInFlight: 2, retryDelayMs: 100, maxRetryDelayMs: 1_000 };

  it('keeps at most maxInFlight sends written and unacked, in order', () => {
    const outbox = new Outbox(options);
    for (const id of ['a', 'b', 'c']) outbox.enqueue('c1', id, `body ${id}`);
    assert.deepEqual(outbox.takeSendable(0).map((frame) => frame.client_msg_id), ['a', 'b']);
    assert.deepEqual(outbox.takeSendable(0), []);
    outbox.ack('a', { message_id: '10', ts: 1 });
    assert.deepEqual(outbox.takeSendable(0).map((frame) => frame.client_msg_id), ['c']);
  });

  it('retries with the same client_msg_id marked resend, after a reconnect, a timeout or unavailable', async () => {
    const outbox = new Outbox(options);
    const entry = outbox.enqueue('c1', 'a', 'hi');
    const [first] = outbox.takeSendable(0);
    assert.equal(first!.resend, undefined);
    outbox.disconnected();
    const [second] = outbox.takeSendable(1);
    assert.deepEqual(second, { op: 'send', conversation_id: 'c1', client_msg_id: 'a', body: 'hi', resend: true });
    assert.equal(outbox.expire(10_000, 5_000), 1);
    assert.equal(outbox.takeSendable(10_000)[0]!.resend, true);
    assert.equal(outbox.error('a', 'unavailable', 'kafka', 10_000), 'retry');
    assert.deepEqual(outbox.takeSendable(10_000), [], 'waits for its retry delay');
    assert.equal(outbox.nextRetryAt(10_000), 10_400);
    assert.equal(outbox.takeSendable(10_400)[0]!.resend, true);
    outbox.ack('a', { message_id: '42', ts: 7 });
    assert.deepEqual(await entry.done, { message_id: '42', ts: 7 });
    assert.equal(outbox.size, 0);
  });

  it('fails a send for good on invalid, forbidden or too_large', async () => {
    const outbox = new Outbox(options);
    const entry = outbox.enqueue('c1', 'a', 'hi');
    outbox.takeSendable(0);
    assert.equal(outbox.error('a', 'forbidden', 'not a member', 0), 'failed');
    await assert.rejects(entry.done, (error: unknown) => error instanceof SendFailed && error.code === 'forbidden');
  });
});

describe('conversation store', () => {
  it('keeps one ordered copy of each message', () => {
    const store = new ConversationStore();
    for (const id of ['5', '3', '10', '3', '7', '10']) store.insert(message('c1', id));
    assert.deepEqual(store.messages('c1').map((m) => m.message_id), ['3', '5', '7', '10']);
    assert.equal(store.lastMessageId('c1'), '10');
    assert.equal(store.firstMessageId('c1'), '3');
  });

  it('settles a pending send by client_msg_id of its sender only', () => {
    const store = new ConversationStore();
    store.putPending({ client_msg_id: 'k1', conversation_id: 'c1', sender_id: 'alice', body: 'hi', created_at: 0, status: 'sending' });
    // Another user may pick the same client_msg_id: not ours.
    assert.equal(store.insert(message('c1', '1', 'hi', 'bob', 'k1')).settled, undefined);
    assert.equal(store.pending('c1').length, 1);
    assert.equal(store.insert(message('c1', '2', 'hi', 'alice', 'k1')).settled?.client_msg_id, 'k1');
    assert.equal(store.pending('c1').length, 0);
  });
});

describe('search highlights', () => {
  it('keep <em> and escape everything else', () => {
    assert.equal(highlightToHtml('say <em>noon</em>?'), 'say <em>noon</em>?');
    assert.equal(highlightToHtml('<script>alert(1)</script> <em>x</em>'), '&lt;script&gt;alert(1)&lt;/script&gt; <em>x</em>');
    assert.equal(highlightToHtml('&lt;b&gt; &amp; <em>a</em>'), '&lt;b&gt; &amp; <em>a</em>', 'server-escaped entities stay');
    assert.equal(highlightToHtml('&lt;&#x2F;b&gt; &#39;x&#39;'), '&lt;&#x2F;b&gt; &#39;x&#39;');
    assert.equal(highlightToHtml('AT&T &x'), 'AT&amp;T &amp;x', 'a bare & is escaped');
    assert.equal(highlightToHtml('<em onclick="x">a</em>'), '&lt;em onclick=&quot;x&quot;&gt;a');
    assert.equal(highlightToHtml('a <em>b'), 'a <em>b</em>', 'a dangling <em> is closed');
    assert.equal(highlightToHtml('a</em> b'), 'a b');
  });
});

describe('conversation store: changes', () => {
  it('counts a reaction once per user however often its frame comes, and marks this user', () => {
    const store = new ConversationStore();
    store.insert(message('c1', '1'));
    const react = (user: string, action: 'add' | 'remove', reaction = 'x') => store.applyReaction('c1', '1', user, reaction, action, 'me');
    assert.ok(react('bob', 'add'));
    assert.equal(react('bob', 'add'), undefined, 'a replay');
    assert.ok(react('me', 'add'));
    assert.equal(react('me', 'add'), undefined);
    assert.ok(react('carol', 'add', 'y'));
    assert.deepEqual(store.get('c1', '1')!.reactions, [
      { reaction: 'x', count: 2, me: true },
      { reaction: 'y', count: 1, me: false },
    ]);
    assert.ok(react('bob', 'remove'));
    assert.equal(react('bob', 'remove'), undefined);
    assert.equal(react('dave', 'remove', 'y'), undefined, 'dave never reacted so: nothing to take back');
    assert.ok(react('carol', 'remove', 'y'));
    assert.ok(react('me', 'remove'));
    assert.equal(store.get('c1', '1')!.reactions, undefined, 'none left: no field, as in history');
    assert.equal(store.applyReaction('c1', '404', 'bob', 'x', 'add', 'me'), undefined, 'not held');
  });

  it('history copies bring reactions; this user\'s own state comes from their me flag', () => {
    const store = new ConversationStore();
    store.insert(message('c1', '1'));
    const { updated } = store.insert({ ...message('c1', '1'), reactions: [{ reaction: 'x', count: 3, me: true }] }, true);
    assert.deepEqual(updated?.reactions, [{ reaction: 'x', count: 3, me: true }]);
    assert.equal(store.applyReaction('c1', '1', 'me', 'x', 'add', 'me'), undefined, 'already counted in history');
    assert.equal(store.applyReaction('c1', '1', 'me', 'x', 'remove', 'me')?.reactions?.[0]?.count, 2);
    // A live copy (no reactions field) does not wipe them.
    assert.equal(store.insert(message('c1', '1')).updated, undefined);
    assert.equal(store.get('c1', '1')!.reactions?.[0]?.count, 2);
  });

  it('keeps the newest edit, and a tombstone for good', () => {
    const store = new ConversationStore();
    store.insert(message('c1', '1', 'v1'));
    const before = store.get('c1', '1');
    assert.equal(store.applyEdit('c1', '1', 'v3', 30)?.body, 'v3');
    assert.notEqual(store.get('c1', '1'), before, 'a new object, never mutated');
    assert.equal(before!.body, 'v1');
    assert.equal(store.applyEdit('c1', '1', 'v2', 20), undefined, 'an older edit');
    assert.equal(store.applyEdit('c1', '1', 'v3', 30), undefined, 'a replay');
    // A history copy with a newer edit updates; then a tombstone.
    assert.equal(store.insert({ ...message('c1', '1', 'v4'), edited_at: 40 }, true).updated?.body, 'v4');
    const { body: _body, ...tombstone } = { ...message('c1', '1'), deleted: true };
    assert.equal(store.insert(tombstone, true).updated?.deleted, true);
    assert.equal(store.get('c1', '1')!.body, undefined);
    assert.equal(store.applyEdit('c1', '1', 'v5', 50), undefined, 'a deleted message stays deleted');
    assert.equal(store.applyDelete('c1', '1'), undefined, 'a replayed delete');
    assert.deepEqual(store.messages('c1').map((m) => m.message_id), ['1']);
  });
});
