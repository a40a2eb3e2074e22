/**
 * The chatpipe web app: development sign-in, conversations with unread
 * counts, a message view with scroll-back, optimistic sends, typing,
 * presence, read markers, search with highlights, and the connection's
 * state (connecting / open / reconnecting / resyncing / offline) always
 * visible. Everything protocol-related is the SDK's (`ChatClient`); this
 * file only renders.
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
const conversations = new Map<string, Conversation>();
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
  await refreshConversations();
}

function wire(chat: ChatClient): void {
  chat.on('state', ({ state }) => renderStatus(state));
  chat.on('message', ({ message }) => {
    if (!conversations.has(message.conversation_id)) void refreshConversations();
    typingUntil.get(message.conversation_id)?.delete(message.sender_id);
    if (message.conversation_id === current) {
      renderMessages({ stickToBottom: true });
      markCurrentRead();
      renderTyping();
    }
    renderConversations();
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
  setInterval(renderTyping, 1_000);

  $('new-conversation').addEventListener('submit', async (event) => {
    event.preventDefault();
    const members = $<HTMLInputElement>('new-members').value.split(',').map((m) => m.trim()).filter(Boolean);
    const title = $<HTMLInputElement>('new-title').value.trim();
    const created = await chat.api.createConversation(members, title || undefined);
    $<HTMLInputElement>('new-members').value = '';
    $<HTMLInputElement>('new-title').value = '';
    await refreshConversations();
    await open(created.conversation_id);
  });
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $<HTMLInputElement>('composer-input');
    const body = input.value;
    if (!current || !body.trim()) return;
    chat.send(current, body);
    input.value = '';
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

async function refreshConversations(): Promise<void> {
  if (!client) return;
  for (const conversation of await client.api.listConversations()) {
    if (!conversations.has(conversation.conversation_id)) {
      conversations.set(conversation.conversation_id, conversation);
      client.track(conversation.conversation_id);
    }
  }
  renderConversations();
}

function titleOf(conversation: Conversation | undefined, id: string): string {
  return conversation?.title || (id.length > 24 ? `${id.slice(0, 24)}…` : id);
}

function unreadCount(conversationId: string): number {
  if (!client) return 0;
  const read = client.readPosition(conversationId);
  return client
    .messages(conversationId)
    .filter((m) => m.sender_id !== me && (read === undefined || compareMessageIds(m.message_id, read) > 0)).length;
}

function renderConversations(): void {
  const list = $('conversations');
  list.replaceChildren();
  const sorted = [...conversations.values()].sort((a, b) => b.created_at - a.created_at);
  for (const conversation of sorted) {
    const item = document.createElement('li');
    item.dataset.conversationId = conversation.conversation_id;
    item.classList.toggle('active', conversation.conversation_id === current);
    const name = document.createElement('span');
    name.className = 'title';
    name.textContent = titleOf(conversation, conversation.conversation_id);
    const unread = document.createElement('span');
    unread.className = 'unread';
    const count = conversation.conversation_id === current ? 0 : unreadCount(conversation.conversation_id);
    unread.textContent = count > 0 ? String(count) : '';
    item.append(name, unread);
    item.addEventListener('click', () => void open(conversation.conversation_id));
    list.append(item);
  }
}

async function open(conversationId: string): Promise<void> {
  if (!client) return;
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
  const sender = document.createElement('span');
  sender.className = 'sender';
  sender.textContent = `${message.sender_id} · ${new Date(message.ts).toLocaleTimeString()}`;
  const body = document.createElement('span');
  body.className = 'body';
  // Message bodies are text: never HTML.
  // A deleted message keeps its place without its body.
  body.textContent = message.deleted ? '(deleted)' : (message.body ?? '');
  item.append(sender, body);
  if (readers && readers.length > 0) {
    const marker = document.createElement('span');
    marker.className = 'read-marker';
    marker.textContent = `✓ read by ${readers.join(', ')}`;
    item.append(marker);
  }
  return item;
}

function pendingItem(pending: PendingMessage): HTMLLIElement {
  const item = document.createElement('li');
  item.className = `mine pending ${pending.status}`;
  item.dataset.clientMsgId = pending.client_msg_id;
  const sender = document.createElement('span');
  sender.className = 'sender';
  sender.textContent = pending.status === 'failed' ? `not sent: ${pending.error ?? ''}` : 'sending…';
  const body = document.createElement('span');
  body.className = 'body';
  body.textContent = pending.body;
  item.append(sender, body);
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
