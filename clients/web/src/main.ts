/**
 * The chatpipe web app: development sign-in, the inbox (conversations by
 * last activity with their last message, unread and mention counts from
 * the server, kept current by live frames), a message view with
 * scroll-back, optimistic sends, replies, mentions, edits, deletes,
 * reactions, typing, presence, read markers, search with highlights, and
 * the connection's state (connecting / open / reconnecting / resyncing /
 * offline) always visible. Everything protocol-related is the SDK's
 * (`ChatClient`); this file only renders, and only with `textContent`
 * (search highlights' `<em>` are the one markup, via `highlightToHtml`).
 *
 * Served by the API under `/app/`; `config.json` beside it says where the
 * edge is. `?ws=` and `?api=` override both (an app served elsewhere needs
 * the API's CORS, `--cors-origins`).
 */
import {
  ChatClient,
  compareMessageIds,
  devSignIn,
  highlightToHtml,
  type Conversation,
  type ConnectionState,
  type Message,
  type PendingMessage,
} from '../../typescript/src/index.js';

interface AppConfig {
  ws_url?: string;
  dev_sign_in?: boolean;
}

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;
const params = new URLSearchParams(location.search);
const apiUrl = params.get('api') ?? location.origin;

let client: ChatClient | undefined;
let me = '';
let current: string | undefined;
/** The inbox: the server's items, patched by live frames until the next read of the inbox. */
const conversations = new Map<string, Conversation>();
/** The message a reply or an edit in the composer is about. */
let composing: { mode: 'reply' | 'edit'; messageId: string } | undefined;
const QUICK_REACTIONS = ['👍', '❤️', '😂', '🎉'];
/**
 * A user id after `@` in a body: a mention (the characters of user ids,
 * but not ending in `.`, `:`, `@` or `-`, so "hi @bob." mentions `bob`).
 */
const MENTION = /@([A-Za-z0-9_.:@-]{0,63}[A-Za-z0-9_])/g;
/** Other users' read positions: conversation → user → message id. */
const readBy = new Map<string, Map<string, string>>();
/** Who is typing: conversation → user → until (ms). */
const typingUntil = new Map<string, Map<string, number>>();
const presence = new Map<string, 'online' | 'offline'>();
const historyExhausted = new Set<string>();
let loadingOlder = false;

async function loadConfig(): Promise<AppConfig> {
  try {
    const response = await fetch('config.json');
    if (response.ok) return (await response.json()) as AppConfig;
  } catch {
    // Served without the API (a dev server): defaults below.
  }
  return {};
}

function defaultWsUrl(): string {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.hostname}:8080/ws`;
}

async function main(): Promise<void> {
  const config = await loadConfig();
  const wsUrl = params.get('ws') ?? config.ws_url ?? defaultWsUrl();
  const saved = sessionStorage.getItem('chatpipe.user');
  if (saved) {
    await start(saved, wsUrl);
    return;
  }
  $('signin').hidden = false;
  if (config.dev_sign_in === false) {
    $('signin-error').textContent = 'This server is not in development mode (start it with --dev): no sign-in here.';
  }
  $('signin-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const name = $<HTMLInputElement>('signin-name').value.trim();
    try {
      await start(name, wsUrl);
      sessionStorage.setItem('chatpipe.user', name);
    } catch (error) {
      $('signin-error').textContent = `Sign-in failed: ${String(error)}`;
    }
  });
}

async function start(user: string, wsUrl: string): Promise<void> {
  let token = (await devSignIn(apiUrl, user)).token;
  me = user;
  client = new ChatClient({
    userId: user,
    apiUrl,
    wsUrl,
    token: async ({ refresh }) => {
      if (refresh) token = (await devSignIn(apiUrl, user)).token;
      return token;
    },
  });
  $('signin').hidden = true;
  $('app').hidden = false;
  $('me').textContent = user;
  wire(client);
  client.connect();
  await refreshInbox();
}

function wire(chat: ChatClient): void {
  chat.on('state', ({ state }) => renderStatus(state));
  chat.on('message', ({ message, source }) => {
    typingUntil.get(message.conversation_id)?.delete(message.sender_id);
    if (message.conversation_id === current) {
      renderMessages({ stickToBottom: true });
      markCurrentRead();
      renderTyping();
    }
    // Scroll-back is old news; anything else is activity for the inbox.
    if (source !== 'history') noteActivity(message);
    renderConversations();
  });
  chat.on('messageUpdated', ({ conversationId, message }) => {
    const item = conversations.get(conversationId);
    if (item?.last_message?.message_id === message.message_id) item.last_message = message;
    if (conversationId === current) renderMessages({});
    renderConversations();
  });
  // A conversation this user was added to (or created with): read it from the inbox.
  chat.on('conversation', () => void refreshInbox());
  chat.on('membership', (frame) => {
    if (frame.op === 'member_removed' && frame.user_id === me) {
      conversations.delete(frame.conversation_id);
      if (current === frame.conversation_id) closeConversation();
      renderConversations();
    }
  });
  // Counts after a reconnect, or a read marker moved on another device: ask the server.
  chat.on('caughtUp', () => void refreshInbox());
  chat.on('readMarker', ({ conversationId, messageId }) => {
    const item = conversations.get(conversationId);
    if (item && (item.read_marker === undefined || compareMessageIds(messageId, item.read_marker) > 0)) {
      item.read_marker = messageId;
      item.unread_count = 0;
      item.mention_count = 0;
      item.unread_count_exact = item.mention_count_exact = true;
      // Messages after the marker that this client holds are still unread.
      for (const message of chat.messages(conversationId)) countUnread(item, message);
    }
    renderConversations();
    scheduleInboxRefresh();
  });
  chat.on('pending', ({ conversationId }) => {
    if (conversationId === current) renderMessages({ stickToBottom: true });
  });
  chat.on('typing', (frame) => {
    let users = typingUntil.get(frame.conversation_id);
    if (!users) typingUntil.set(frame.conversation_id, (users = new Map()));
    users.set(frame.user_id, Date.now() + 4_000);
    if (frame.conversation_id === current) renderTyping();
  });
  chat.on('read', (frame) => {
    // Our own marker from another device is not a receipt to show.
    if (frame.user_id === me) return;
    let users = readBy.get(frame.conversation_id);
    if (!users) readBy.set(frame.conversation_id, (users = new Map()));
    const previous = users.get(frame.user_id);
    if (previous === undefined || compareMessageIds(frame.message_id, previous) > 0) users.set(frame.user_id, frame.message_id);
    if (frame.conversation_id === current) renderMessages({});
  });
  chat.on('presence', (frame) => {
    presence.set(frame.user_id, frame.status);
    renderPresence();
  });
  // The browser knows when the network goes: stop retrying until it is back.
  window.addEventListener('offline', () => chat.goOffline());
  window.addEventListener('online', () => chat.goOnline());
  // Messages that came while the tab was hidden count as unread until it is seen.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState !== 'visible') return;
    markCurrentRead();
    renderConversations();
  });
  setInterval(renderTyping, 1_000);

  $('new-conversation').addEventListener('submit', async (event) => {
    event.preventDefault();
    const members = $<HTMLInputElement>('new-members').value.split(',').map((m) => m.trim()).filter(Boolean);
    const title = $<HTMLInputElement>('new-title').value.trim();
    const created = await chat.api.createConversation(members, title || undefined);
    $<HTMLInputElement>('new-members').value = '';
    $<HTMLInputElement>('new-title').value = '';
    await refreshInbox();
    await open(created.conversation_id);
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>('composer-input');
    const body = input.value;
    if (!current || !body.trim()) return;
    const about = composing;
    if (about?.mode === 'edit') {
      settle(chat.editMessage(current, about.messageId, body), 'edit');
    } else {
      const mentions = [...new Set([...body.matchAll(MENTION)].map((match) => match[1]!))].filter((user) => user !== me).slice(0, 20);
      chat.send(current, body, { replyTo: about?.messageId, mentions });
    }
    setComposing(undefined);
    input.value = '';
  });
  $('composing-cancel').addEventListener('click', () => {
    if (composing?.mode === 'edit') $<HTMLInputElement>('composer-input').value = '';
    setComposing(undefined);
  });
  $('composer-input').addEventListener('input', () => {
    if (current) chat.typing(current);
  });
  $('messages').addEventListener('scroll', () => {
    if ($('messages').scrollTop < 40) void loadOlder();
  });
  $('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    void search($<HTMLInputElement>('search-input').value.trim());
  });
}

/**
 * Reads the inbox (every page). The server counts from history, which
 * trails the live frames by the persist lag: messages this client holds
 * that are newer than the server's `last_message` are added to its
 * counts, so a read of the inbox never loses what the frames showed.
 */
async function refreshInbox(): Promise<void> {
  if (!client) return;
  const chat = client;
  const items = await chat.api.listConversations();
  conversations.clear();
  for (const item of items) {
    // This client's own marker may be ahead of the stored one (persist trails it).
    const readHere = chat.readPosition(item.conversation_id);
    if (readHere !== undefined && (item.read_marker === undefined || compareMessageIds(readHere, item.read_marker) > 0)) {
      item.read_marker = readHere;
      if (item.last_message === undefined || compareMessageIds(readHere, item.last_message.message_id) >= 0) {
        item.unread_count = item.mention_count = 0;
        item.unread_count_exact = item.mention_count_exact = true;
      }
    }
    const newest = item.last_message?.message_id;
    for (const message of chat.messages(item.conversation_id)) {
      if (newest === undefined || compareMessageIds(message.message_id, newest) > 0) {
        countUnread(item, message);
        item.last_message = message;
        item.last_activity_at = Math.max(item.last_activity_at, message.ts);
      }
    }
    conversations.set(item.conversation_id, item);
    chat.track(item.conversation_id);
  }
  renderConversations();
}

let inboxTimer: ReturnType<typeof setTimeout> | undefined;
/** One inbox read a moment after a burst of changes the frames cannot count exactly. */
function scheduleInboxRefresh(): void {
  if (inboxTimer !== undefined) clearTimeout(inboxTimer);
  inboxTimer = setTimeout(() => {
    inboxTimer = undefined;
    void refreshInbox();
  }, 1_500);
}

/** A new message (live, acked or caught up): it moves its conversation up, and may count as unread. */
function noteActivity(message: Message): void {
  const item = conversations.get(message.conversation_id);
  if (!item) return;
  if (item.last_message === undefined || compareMessageIds(message.message_id, item.last_message.message_id) > 0) {
    item.last_message = message;
    item.last_activity_at = Math.max(item.last_activity_at, message.ts);
    countUnread(item, message);
  }
}

/** Counts a message as the server would: others', not deleted, after the read marker, not in the open conversation. */
function countUnread(item: Conversation, message: Message): void {
  if (message.sender_id === me || message.deleted) return;
  if (item.read_marker !== undefined && compareMessageIds(message.message_id, item.read_marker) <= 0) return;
  if (item.conversation_id === current && document.visibilityState !== 'hidden') return;
  if (item.unread_count < 100) item.unread_count++;
  else item.unread_count_exact = false;
  if (message.mentions?.includes(me)) {
    if (item.mention_count < 100) item.mention_count++;
    else item.mention_count_exact = false;
  }
}

function closeConversation(): void {
  current = undefined;
  setComposing(undefined);
  $('conversation-title').textContent = 'No conversation selected';
  $('messages').replaceChildren();
  $<HTMLInputElement>('composer-input').disabled = true;
  $<HTMLButtonElement>('composer-send').disabled = true;
}

function titleOf(conversation: Conversation | undefined, id: string): string {
  return conversation?.title || (id.length > 24 ? `${id.slice(0, 24)}…` : id);
}

/** A count as the inbox shows it: nothing for 0, "100+" when the server stopped counting. */
function countText(count: number, exact: boolean): string {
  return count === 0 ? '' : exact ? String(count) : `${count}+`;
}

function previewOf(message: Message | undefined): string {
  if (!message) return 'no messages yet';
  const who = message.sender_id === me ? 'you' : message.sender_id;
  return `${who}: ${message.deleted ? '(deleted)' : (message.body ?? '')}`;
}

/** The inbox, in the server's order: last activity, newest first, then id. */
function renderConversations(): void {
  const list = $('conversations');
  list.replaceChildren();
  const sorted = [...conversations.values()].sort(
    (a, b) => b.last_activity_at - a.last_activity_at || (a.conversation_id < b.conversation_id ? -1 : a.conversation_id > b.conversation_id ? 1 : 0),
  );
  for (const conversation of sorted) {
    const isCurrent = conversation.conversation_id === current;
    const item = document.createElement('li');
    item.dataset.conversationId = conversation.conversation_id;
    item.classList.toggle('active', isCurrent);
    const text = document.createElement('div');
    text.className = 'summary';
    const name = document.createElement('span');
    name.className = 'title';
    name.textContent = titleOf(conversation, conversation.conversation_id);
    const preview = document.createElement('span');
    preview.className = 'preview';
    preview.textContent = previewOf(conversation.last_message);
    text.append(name, preview);
    const mentions = document.createElement('span');
    mentions.className = 'mentions';
    mentions.title = 'mentions of you';
    const mentionCount = countText(conversation.mention_count, conversation.mention_count_exact);
    mentions.textContent = isCurrent || !mentionCount ? '' : `@${mentionCount}`;
    const unread = document.createElement('span');
    unread.className = 'unread';
    unread.textContent = isCurrent ? '' : countText(conversation.unread_count, conversation.unread_count_exact);
    item.append(text, mentions, unread);
    item.addEventListener('click', () => void open(conversation.conversation_id));
    list.append(item);
  }
}

async function open(conversationId: string): Promise<void> {
  if (!client) return;
  if (current !== conversationId) setComposing(undefined);
  current = conversationId;
  $('conversation-title').textContent = titleOf(conversations.get(conversationId), conversationId);
  $<HTMLInputElement>('composer-input').disabled = false;
  $<HTMLButtonElement>('composer-send').disabled = false;
  renderConversations();
  renderMessages({ stickToBottom: true });
  renderTyping();
  renderPresence();
  if (client.messages(conversationId).length < 30 && !historyExhausted.has(conversationId)) await loadOlder();
  markCurrentRead();
  renderConversations();
}

async function loadOlder(): Promise<void> {
  if (!client || !current || loadingOlder || historyExhausted.has(current)) return;
  loadingOlder = true;
  const conversationId = current;
  const list = $('messages');
  const fromBottom = list.scrollHeight - list.scrollTop;
  try {
    const added = await client.loadOlder(conversationId, 30);
    if (added === 0) historyExhausted.add(conversationId);
  } finally {
    loadingOlder = false;
  }
  if (conversationId !== current) return;
  renderMessages({});
  // Keep what the reader was looking at in place.
  list.scrollTop = list.scrollHeight - fromBottom;
}

function markCurrentRead(): void {
  if (!client || !current || document.visibilityState === 'hidden') return;
  const messages = client.messages(current);
  const last = messages[messages.length - 1];
  if (last) client.markRead(current, last.message_id);
  const item = conversations.get(current);
  if (item) {
    item.unread_count = item.mention_count = 0;
    item.unread_count_exact = item.mention_count_exact = true;
    if (last && (item.read_marker === undefined || compareMessageIds(last.message_id, item.read_marker) > 0)) item.read_marker = last.message_id;
  }
}

function renderMessages({ stickToBottom = false }: { stickToBottom?: boolean }): void {
  if (!client || !current) return;
  const list = $('messages');
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  list.replaceChildren();
  const older = document.createElement('li');
  older.className = 'older';
  older.textContent = historyExhausted.has(current) ? 'beginning of the conversation' : 'scroll up for older messages';
  list.append(older);
  const readers = new Map<string, string[]>();
  for (const [user, messageId] of readBy.get(current) ?? []) readers.set(messageId, [...(readers.get(messageId) ?? []), user]);
  for (const message of client.messages(current)) list.append(messageItem(message, readers.get(message.message_id)));
  for (const pending of client.pending(current)) list.append(pendingItem(pending));
  if (stickToBottom && nearBottom) list.scrollTop = list.scrollHeight;
}

function messageItem(message: Message, readers: string[] | undefined): HTMLLIElement {
  const item = document.createElement('li');
  item.dataset.messageId = message.message_id;
  item.classList.toggle('mine', message.sender_id === me);
  item.classList.toggle('deleted', message.deleted === true);
  const sender = document.createElement('span');
  sender.className = 'sender';
  sender.textContent = `${message.sender_id} · ${new Date(message.ts).toLocaleTimeString()}`;
  if (message.edited_at !== undefined && !message.deleted) {
    const edited = document.createElement('span');
    edited.className = 'edited';
    edited.title = new Date(message.edited_at).toLocaleString();
    edited.textContent = ' · edited';
    sender.append(edited);
  }
  item.append(sender);
  if (message.reply_to !== undefined) item.append(quoteOf(message.reply_to));
  const body = document.createElement('span');
  body.className = 'body';
  // A deleted message keeps its place without its body.
  if (message.deleted) body.textContent = '(deleted)';
  else body.append(...withMentions(message.body ?? ''));
  item.append(body);
  if (!message.deleted) item.append(reactionsOf(message), actionsOf(message));
  if (readers && readers.length > 0) {
    const marker = document.createElement('span');
    marker.className = 'read-marker';
    marker.textContent = `✓ read by ${readers.join(', ')}`;
    item.append(marker);
  }
  return item;
}

/** The replied-to message, quoted (a message not loaded here says so). */
function quoteOf(messageId: string): HTMLElement {
  const quote = document.createElement('blockquote');
  quote.className = 'quote';
  const parent = current ? client?.store.get(current, messageId) : undefined;
  quote.textContent = !parent
    ? '↪ an earlier message'
    : `↪ ${parent.sender_id}: ${parent.deleted ? '(deleted)' : (parent.body ?? '')}`;
  return quote;
}

/** A body as text nodes, with each `@user` in a span (`me` when it is this user). Never HTML. */
function withMentions(text: string): Node[] {
  const nodes: Node[] = [];
  let at = 0;
  for (const match of text.matchAll(MENTION)) {
    if (match.index > at) nodes.push(document.createTextNode(text.slice(at, match.index)));
    const mention = document.createElement('span');
    mention.className = match[1] === me ? 'mention me' : 'mention';
    mention.textContent = match[0];
    nodes.push(mention);
    at = match.index + match[0].length;
  }
  if (at < text.length) nodes.push(document.createTextNode(text.slice(at)));
  return nodes;
}

/** The counts, each a button that toggles this user's reaction. */
function reactionsOf(message: Message): HTMLElement {
  const row = document.createElement('span');
  row.className = 'reactions';
  for (const { reaction, count, me: mine } of message.reactions ?? []) {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = mine ? 'reaction mine' : 'reaction';
    button.dataset.reaction = reaction;
    button.setAttribute('aria-pressed', String(mine));
    button.textContent = `${reaction} ${count}`;
    button.addEventListener('click', () => toggleReaction(message, reaction));
    row.append(button);
  }
  return row;
}

/** Reply and quick reactions on any message; edit and delete on this user's own. */
function actionsOf(message: Message): HTMLElement {
  const bar = document.createElement('span');
  bar.className = 'actions';
  const action = (name: string, label: string, run: () => void) => {
    const button = document.createElement('button');
    button.type = 'button';
    button.className = `action ${name}`;
    button.dataset.action = name;
    button.textContent = label;
    button.addEventListener('click', run);
    bar.append(button);
    return button;
  };
  action('reply', 'Reply', () => setComposing({ mode: 'reply', messageId: message.message_id }));
  for (const reaction of QUICK_REACTIONS) {
    action('react', reaction, () => toggleReaction(message, reaction)).dataset.reaction = reaction;
  }
  if (message.sender_id === me) {
    action('edit', 'Edit', () => {
      setComposing({ mode: 'edit', messageId: message.message_id });
      const input = $<HTMLInputElement>('composer-input');
      input.value = message.body ?? '';
      input.focus();
    });
    action('delete', 'Delete', () => {
      if (current) settle(client!.deleteMessage(current, message.message_id), 'delete');
    });
  }
  return bar;
}

function toggleReaction(message: Message, reaction: string): void {
  if (client) settle(client.toggleReaction(message.conversation_id, message.message_id, reaction), 'reaction');
}

/** Shows a change's refusal (the server's error code) until the next one. */
function settle(done: Promise<unknown>, what: string): void {
  $('notice').textContent = '';
  done.catch((error: unknown) => {
    const code = (error as { code?: string }).code ?? String(error);
    $('notice').textContent = `The ${what} was refused: ${code}`;
  });
}

/** The composer's mode: a reply to or an edit of a message, or a plain new message. */
function setComposing(next: typeof composing): void {
  composing = next;
  const banner = $('composing');
  banner.hidden = next === undefined;
  $('composer-send').textContent = next?.mode === 'edit' ? 'Save' : 'Send';
  if (!next || !client || !current) return;
  const target = client.store.get(current, next.messageId);
  $('composing-text').textContent = `${next.mode === 'edit' ? 'Editing' : `Replying to ${target?.sender_id ?? ''}`}: ${target?.body ?? ''}`;
}

function pendingItem(pending: PendingMessage): HTMLLIElement {
  const item = document.createElement('li');
  item.className = `mine pending ${pending.status}`;
  item.dataset.clientMsgId = pending.client_msg_id;
  const sender = document.createElement('span');
  sender.className = 'sender';
  sender.textContent = pending.status === 'failed' ? `not sent: ${pending.error ?? ''}` : 'sending…';
  item.append(sender);
  if (pending.reply_to !== undefined) item.append(quoteOf(pending.reply_to));
  const body = document.createElement('span');
  body.className = 'body';
  body.append(...withMentions(pending.body));
  item.append(body);
  return item;
}

function renderTyping(): void {
  const now = Date.now();
  const users = [...(current ? typingUntil.get(current) ?? [] : [])].filter(([, until]) => until > now).map(([user]) => user);
  $('typing').textContent = users.length === 0 ? '' : `${users.join(', ')} ${users.length === 1 ? 'is' : 'are'} typing…`;
}

function renderPresence(): void {
  const online = [...presence].filter(([user, status]) => status === 'online' && user !== me).map(([user]) => user);
  $('presence').textContent = online.length ? `● online: ${online.join(', ')}` : '';
}

function renderStatus(state: ConnectionState): void {
  const status = $('status');
  status.dataset.state = state;
  status.textContent = state === 'open' ? 'connected' : state;
}

async function search(query: string): Promise<void> {
  const results = $('search-results');
  results.replaceChildren();
  results.hidden = !query;
  if (!client || !query) return;
  for await (const page of client.api.search(query, { pageSize: 20 })) {
    for (const hit of page) {
      const item = document.createElement('li');
      item.dataset.messageId = hit.message.message_id;
      const where = document.createElement('strong');
      where.textContent = `${titleOf(conversations.get(hit.message.conversation_id), hit.message.conversation_id)} · ${hit.message.sender_id}: `;
      const text = document.createElement('span');
      text.className = 'highlight';
      // Only <em> survives as markup; everything else is escaped.
      if (hit.highlights.length > 0) text.innerHTML = hit.highlights.map(highlightToHtml).join(' … ');
      else text.textContent = hit.message.body ?? '';
      item.append(where, text);
      item.addEventListener('click', () => void open(hit.message.conversation_id));
      results.append(item);
    }
    break; // the first page is enough for a sidebar
  }
  if (results.children.length === 0) {
    const none = document.createElement('li');
    none.textContent = 'no match';
    results.append(none);
  }
}

void main();
