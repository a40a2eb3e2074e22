/**
 * What to do when an edge closes the connection: a pure function of the
 * close code and reason (README "Close codes", `services/edge/src/ws.rs`).
 *
 * | code | meaning | action |
 * |---|---|---|
 * | 1000, 1001 | normal / draining (after a `reconnect` frame) | reconnect at once and resume |
 * | 1009 | a frame too big to read | reconnect and resume (the frame is dropped) |
 * | 1013 | try again later, `retry_after_ms=N` in the reason | wait N ms, then resume |
 * | 4001 | bad token | refresh the token, then reconnect (stop after repeated refusals) |
 * | 4008 | slow consumer | reconnect and resume |
 * | 4009 | taken over by a newer connection | stop: another tab/device owns the session |
 * | 4010 | resync: frames were lost upstream | reconnect without resume and catch up from history |
 * | 4011 | the token expired (no `refresh` frame came in time) | get a fresh token, then resume at once |
 * | 4029 | too many sessions on this edge | wait (long backoff) and retry |
 * | other (1006 abnormal, network) | | exponential backoff with jitter, resume |
 */

export type CloseAction =
  | { kind: 'resume'; delayMs: number; refreshToken: boolean }
  | { kind: 'resync'; delayMs: number }
  | { kind: 'stop'; reason: 'taken_over' | 'unauthorized' | 'closed_by_client' };

export interface BackoffOptions {
  minDelayMs: number;
  maxDelayMs: number;
  /** Jitter source in [0, 1): injectable for tests. */
  random?: () => number;
}

export const CLOSE = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  MESSAGE_TOO_BIG: 1009,
  TRY_AGAIN_LATER: 1013,
  UNAUTHORIZED: 4001,
  SLOW_CONSUMER: 4008,
  TAKEN_OVER: 4009,
  RESYNC: 4010,
  TOKEN_EXPIRED: 4011,
  TOO_MANY_SESSIONS: 4029,
} as const;

/** Parses `retry_after_ms=N` out of a 1013 close reason. */
export function retryAfterMs(reason: string): number | undefined {
  const match = /retry_after_ms=(\d+)/.exec(reason);
  return match ? Number(match[1]) : undefined;
}

/** Exponential backoff with full jitter: attempt 0 → up to `minDelayMs`. */
export function backoffDelay(attempt: number, options: BackoffOptions): number {
  const random = options.random ?? Math.random;
  const ceiling = Math.min(options.maxDelayMs, options.minDelayMs * 2 ** Math.min(attempt, 20));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/**
 * The action for a close. `attempt` counts consecutive failed connections
 * (0 after a connection that got its `hello`); `unauthorizedInARow` counts
 * consecutive 4001 closes.
 */
export function closeAction(
  code: number,
  reason: string,
  attempt: number,
  unauthorizedInARow: number,
  backoff: BackoffOptions,
): CloseAction {
  switch (code) {
    case CLOSE.NORMAL:
    case CLOSE.GOING_AWAY:
    case CLOSE.MESSAGE_TOO_BIG:
    case CLOSE.SLOW_CONSUMER:
      // Draining edges and slow-consumer closes keep the session resumable:
      // come back quickly (a little jitter so a drained edge's clients spread).
      return { kind: 'resume', delayMs: attempt === 0 ? Math.round((backoff.random ?? Math.random)() * 100) : backoffDelay(attempt, backoff), refreshToken: false };
    case CLOSE.TRY_AGAIN_LATER:
      return { kind: 'resume', delayMs: retryAfterMs(reason) ?? backoffDelay(attempt + 3, backoff), refreshToken: false };
    case CLOSE.UNAUTHORIZED:
      if (unauthorizedInARow >= 3) return { kind: 'stop', reason: 'unauthorized' };
      return { kind: 'resume', delayMs: backoffDelay(attempt, backoff), refreshToken: true };
    case CLOSE.TAKEN_OVER:
      return { kind: 'stop', reason: 'taken_over' };
    case CLOSE.RESYNC:
      return { kind: 'resync', delayMs: attempt === 0 ? 0 : backoffDelay(attempt, backoff) };
    case CLOSE.TOKEN_EXPIRED:
      // The session stays resumable: only the token is stale.
      return { kind: 'resume', delayMs: 0, refreshToken: true };
    case CLOSE.TOO_MANY_SESSIONS:
      return { kind: 'resume', delayMs: backoffDelay(attempt + 4, backoff), refreshToken: false };
    default:
      return { kind: 'resume', delayMs: backoffDelay(attempt, backoff), refreshToken: false };
  }
}
