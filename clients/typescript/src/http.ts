/**
 * The HTTP API (`/v1/…`): conversations, membership, history and search,
 * typed from `schemas/openapi.json`, with the bearer token from the same
 * refresh callback as the WebSocket, and async iterators for paging.
 */
import type {
  ApiErrorCode,
  Conversation,
  ConversationList,
  CreateConversationResponse,
  HistoryPage,
  Message,
  ReadState,
  SearchHit,
  SearchPage,
} from './types.js';

/** Returns a bearer token; `refresh` is true after the last one was refused (401). */
export type TokenProvider = (context: { refresh: boolean }) => string | Promise<string>;

/** A non-2xx answer of the API, with its `{"error":{"code","message"}}`. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: ApiErrorCode | 'network',
    message: string,
    /** Seconds from `Retry-After`, when the API sent it (429, 503). */
    readonly retryAfterSecs?: number,
  ) {
    super(`${status} ${code}: ${message}`);
    this.name = 'ApiError';
  }

  /** Worth retrying later unchanged: every call of the API is idempotent. */
  get retriable(): boolean {
    return this.status === 429 || this.status === 503 || this.code === 'network';
  }
}

export interface ApiClientOptions {
  /** Base URL of the API, e.g. `http://127.0.0.1:8090` (no trailing `/v1`). */
  baseUrl: string;
  token: TokenProvider;
  fetch?: typeof fetch;
}

export interface HistoryOptions {
  /** Start below this id (exclusive); absent: from the newest message. */
  before?: string;
  pageSize?: number;
}

export interface SearchOptions {
  conversationId?: string;
  senderId?: string;
  since?: number;
  until?: number;
  sort?: 'relevance' | 'newest' | 'oldest';
  pageSize?: number;
}

export class ApiClient {
  readonly baseUrl: string;
  private readonly tokenProvider: TokenProvider;
  private readonly fetchImpl: typeof fetch;
  private token: string | undefined;

  constructor(options: ApiClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.tokenProvider = options.token;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** One call; a 401 refreshes the token once and retries. */
  async request<T>(method: string, path: string, body?: unknown): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const refresh = attempt > 0;
      if (this.token === undefined || refresh) this.token = await this.tokenProvider({ refresh });
      let response: Response;
      try {
        response = await this.fetchImpl(this.baseUrl + path, {
          method,
          headers: {
            authorization: `Bearer ${this.token}`,
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
          },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
      } catch (error) {
        throw new ApiError(0, 'network', String(error));
      }
      if (response.status === 401 && attempt === 0) continue;
      if (!response.ok) throw await apiError(response);
      return (await response.json()) as T;
    }
  }

  createConversation(members: string[], title?: string): Promise<CreateConversationResponse> {
    return this.request('POST', '/v1/conversations', title === undefined ? { members } : { members, title });
  }

  /** Every conversation of the caller (all inbox pages), by last activity, newest first. */
  async listConversations(): Promise<Conversation[]> {
    const all: Conversation[] = [];
    for await (const page of this.inbox()) all.push(...page);
    return all;
  }

  /** One inbox page: conversations by last activity, with last message, read marker, unread and mention counts. */
  inboxPage(query: { limit?: number; cursor?: string } = {}): Promise<ConversationList> {
    return this.request('GET', `/v1/conversations${qs(query)}`);
  }

  /** The inbox, page by page (`next_cursor` followed until the last page). */
  async *inbox(options: { pageSize?: number } = {}): AsyncGenerator<Conversation[], void, undefined> {
    let cursor: string | undefined;
    for (;;) {
      const page = await this.inboxPage({ limit: options.pageSize ?? 200, cursor });
      yield page.conversations;
      if (!page.next_cursor) return;
      cursor = page.next_cursor;
    }
  }

  /** The caller's read marker, unread and mention counts in one conversation. */
  readState(conversationId: string): Promise<ReadState> {
    return this.request('GET', `/v1/conversations/${enc(conversationId)}/read-state`);
  }

  addMember(conversationId: string, userId: string): Promise<unknown> {
    return this.request('POST', `/v1/conversations/${enc(conversationId)}/members`, { user_id: userId });
  }

  removeMember(conversationId: string, userId: string): Promise<unknown> {
    return this.request('DELETE', `/v1/conversations/${enc(conversationId)}/members/${enc(userId)}`);
  }

  /** One history page, newest first (as the API returns it). */
  listMessages(conversationId: string, query: { before?: string; after?: string; limit?: number } = {}): Promise<HistoryPage> {
    return this.request('GET', `/v1/conversations/${enc(conversationId)}/messages${qs(query)}`);
  }

  /** One search page. */
  searchPage(q: string, options: SearchOptions & { cursor?: string } = {}): Promise<SearchPage> {
    return this.request(
      'GET',
      `/v1/search${qs({
        q,
        conversation_id: options.conversationId,
        sender_id: options.senderId,
        since: options.since,
        until: options.until,
        sort: options.sort,
        limit: options.pageSize,
        cursor: options.cursor,
      })}`,
    );
  }

  /** Scrolls back through history: pages of messages, each oldest first, newest page first. */
  async *history(conversationId: string, options: HistoryOptions = {}): AsyncGenerator<Message[], void, undefined> {
    let before = options.before;
    for (;;) {
      const page = await this.listMessages(conversationId, { before, limit: options.pageSize ?? 50 });
      if (page.messages.length > 0) yield [...page.messages].reverse();
      if (!page.has_more || page.messages.length === 0) return;
      before = page.next_before ?? page.messages[page.messages.length - 1]!.message_id;
    }
  }

  /**
   * Every message after `after` (exclusive), oldest first, paging forward
   * until the end: the catch-up read.
   */
  async messagesAfter(conversationId: string, after: string, pageSize = 200): Promise<Message[]> {
    const all: Message[] = [];
    let cursor = after;
    for (;;) {
      const page = await this.listMessages(conversationId, { after: cursor, limit: pageSize });
      if (page.messages.length === 0) return all;
      // Pages are newest first: the oldest of this page is last.
      const ascending = [...page.messages].reverse();
      all.push(...ascending);
      if (!page.has_more) return all;
      cursor = page.next_after ?? ascending[ascending.length - 1]!.message_id;
    }
  }

  /** Search results, page by page (`next_cursor`). */
  async *search(q: string, options: SearchOptions = {}): AsyncGenerator<SearchHit[], void, undefined> {
    let cursor: string | undefined;
    for (;;) {
      const page = await this.searchPage(q, { ...options, cursor });
      if (page.hits.length > 0) yield page.hits;
      if (!page.next_cursor || page.hits.length === 0) return;
      cursor = page.next_cursor;
    }
  }
}

/**
 * Development sign-in: asks a server started with `--dev` (on a loopback
 * bind only) for a token for `userId`. Production servers answer 404.
 */
export async function devSignIn(
  baseUrl: string,
  userId: string,
  fetchImpl: typeof fetch = globalThis.fetch.bind(globalThis),
): Promise<{ token: string; user_id: string; expires_at: number }> {
  const response = await fetchImpl(`${baseUrl.replace(/\/+$/, '')}/v1/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ user_id: userId }),
  });
  if (!response.ok) throw await apiError(response);
  return (await response.json()) as { token: string; user_id: string; expires_at: number };
}

async function apiError(response: Response): Promise<ApiError> {
  let code: ApiErrorCode = 'internal';
  let message = response.statusText;
  try {
    const body = (await response.json()) as { error?: { code?: ApiErrorCode; message?: string } };
    code = body.error?.code ?? code;
    message = body.error?.message ?? message;
  } catch {
    // Not JSON (a proxy's page): keep the status text.
  }
  const retryAfter = response.headers.get('retry-after');
  return new ApiError(response.status, code, message, retryAfter === null ? undefined : Number(retryAfter));
}

function enc(segment: string): string {
  return encodeURIComponent(segment);
}

function qs(query: Record<string, string | number | undefined>): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) if (value !== undefined) params.set(key, String(value));
  const text = params.toString();
  return text ? `?${text}` : '';
}
