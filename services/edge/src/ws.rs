//! The WebSocket endpoint: admission (capacity, rate limits, token), then
//! one task per connection that reads client frames, writes the session's
//! stream, and keeps the heartbeat.
//!
//! Close codes (also in the README and `schemas/ws/`):
//!
//! | code | meaning |
//! |---|---|
//! | 1001 | the edge is draining; a `reconnect` frame came first — resume elsewhere |
//! | 1009 | a frame over 4 × `max_frame_bytes` (64 KiB): too big to read at all |
//! | 1013 | try again later: connection rate limit, capacity, too many connections from the address, or too many failed authentications from it; the reason says `retry_after_ms=N` |
//! | 4001 | unauthorized: the token is missing, malformed, expired or wrongly signed |
//! | 4008 | slow consumer: the client did not read its frames (backlog over the limit, or a write over `write_timeout_ms`); resume to continue |
//! | 4009 | session taken over by a newer connection that resumed it |
//! | 4010 | resync: frames meant for the session were lost upstream |
//! | 4011 | token expired: the connection's token reached its `exp` and no `refresh` came first; reconnect (and resume) with a fresh token |
//! | 4029 | too many sessions: the user holds `max_sessions_per_user` attached sessions here |
//!
//! A connection lives until its token's `exp`. A client keeps it open by
//! sending `{"op":"refresh","token":…}` with a fresh token of the same user
//! before then: the edge answers `{"op":"refreshed","expires_at":…}` and
//! the deadline moves to the new token's `exp`. A token that does not
//! verify is answered with an `error` frame `invalid`, another user's with
//! `forbidden`; the old deadline stays.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use chatpipe_core::auth::{VerifiedToken, bearer_token};
use chatpipe_core::frames::{ClientFrame, ControlFrame, decode_client_frame};
use chatpipe_core::records::{Event, MessageChange};
use chatpipe_core::store::EdgeStore;
use chatpipe_core::{ClientMsgId, ConversationId, SessionId, UserId};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::admission::{IpSlot, client_ip};
use crate::send::{ChangeRequest, SendRequest};
use crate::server::EdgeShared;
use crate::sessions::{KickReason, ResumeOutcome, Session};

pub const CLOSE_GOING_AWAY: u16 = 1001;
/// A frame too large to even read (over 4 × `max_frame_bytes`); smaller
/// oversized frames get an `error` frame `too_large` instead.
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
pub const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
pub const CLOSE_TAKEN_OVER: u16 = 4009;
/// The user already holds `max_sessions_per_user` sessions on this edge,
/// all attached: close one of them (or resume it) first.
pub const CLOSE_TOO_MANY_SESSIONS: u16 = 4029;
/// Frames meant for the session were lost upstream: reconnect (a resume is
/// answered `resumed:false`) and catch up from history.
pub const CLOSE_RESYNC: u16 = 4010;
/// The connection's token reached its `exp` without a `refresh`: reconnect
/// (and resume the session) with a fresh token.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4011;

/// Longest a token deadline is waited for (a far `exp`, with the lifetime
/// check turned off, must not overflow the timer).
const MAX_TOKEN_WAIT: Duration = Duration::from_secs(400 * 86_400);

/// The timer instant of a token's `exp` (Unix seconds).
fn token_deadline(expires_at_unix_s: u64) -> tokio::time::Instant {
    let left_ms = expires_at_unix_s
        .saturating_mul(1000)
        .saturating_sub(chatpipe_core::time::now_unix_ms());
    tokio::time::Instant::now() + Duration::from_millis(left_ms).min(MAX_TOKEN_WAIT)
}

/// Sends and events a connection may have queued before it is told to slow down.
const JOBS_PER_CONNECTION: usize = 64;

#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    token: Option<String>,
    resume: Option<String>,
    last_seq: Option<String>,
}

/// Why a connection attempt is refused after the upgrade.
struct Refusal {
    code: u16,
    reason: String,
}

pub async fn ws_handler<S: EdgeStore>(
    State(edge): State<Arc<EdgeShared<S>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(params): Query<ConnectParams>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = upgrade
        .read_buffer_size(edge.config.ws_read_buffer_bytes)
        .write_buffer_size(edge.config.ws_write_buffer_bytes)
        .max_message_size(edge.config.frame_limits.max_frame_bytes * 4)
        .max_frame_size(edge.config.frame_limits.max_frame_bytes * 4);
    let deadline = Duration::from_millis(edge.config.write_timeout_ms);
    let forwarded_for = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    let ip = client_ip(peer.ip(), forwarded_for, &edge.config.trusted_proxies);
    match admit(&edge, ip, &params, &headers) {
        Err(refusal) => upgrade.on_upgrade(move |mut socket| async move {
            let close = CloseFrame {
                code: refusal.code,
                reason: Utf8Bytes::from(refusal.reason),
            };
            let _ = tokio::time::timeout(deadline, socket.send(Message::Close(Some(close)))).await;
        }),
        Ok((token, slot)) => {
            let resume = parse_resume(&params);
            upgrade.on_upgrade(move |socket| async move {
                // The address's slot is held for the connection's life.
                let _slot = slot;
                connection(edge, socket, token, resume).await;
            })
        }
    }
}

fn parse_resume(params: &ConnectParams) -> Option<(SessionId, u64)> {
    let session = SessionId::parse(params.resume.clone()?).ok()?;
    let last_seq = params.last_seq.as_deref().unwrap_or("0").parse().ok()?;
    Some((session, last_seq))
}

fn retry_hint(wait: Duration) -> String {
    // Jitter spreads a storm's retries instead of synchronising them.
    let jitter = rand::random_range(0..=wait.as_millis() as u64 / 2 + 250);
    format!(
        "rate_limited; retry_after_ms={}",
        wait.as_millis() as u64 + jitter
    )
}

fn admit<S>(
    edge: &EdgeShared<S>,
    ip: IpAddr,
    params: &ConnectParams,
    headers: &HeaderMap,
) -> Result<(VerifiedToken, IpSlot), Refusal> {
    let rejected = |reason: &str| {
        edge.metrics
            .connections_rejected
            .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(reason))
            .inc()
    };
    if edge.draining.is_cancelled() {
        rejected("draining");
        return Err(Refusal {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "draining; retry_after_ms=1000".into(),
        });
    }
    if edge.open_connections.load(Ordering::Relaxed) >= edge.config.max_connections {
        rejected("capacity");
        return Err(Refusal {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "capacity; retry_after_ms=5000".into(),
        });
    }
    // An address that failed too often is refused before any token work.
    if edge.auth_failures.is_refused(ip) {
        rejected("auth_failures_ip");
        return Err(Refusal {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: format!(
                "too many failed authentications from this address; retry_after_ms={}",
                edge.config.auth_failure_penalty_ms
            ),
        });
    }
    // The token first: a bad one is refused before any connect budget is
    // charged, so a tokenless flood costs others nothing. Its failures are
    // charged to the sender's own per-IP budgets only.
    let header_token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    let token = header_token.or(params.token.as_deref()).unwrap_or("");
    let verified = edge.keys.verify_token(token).map_err(|error| {
        edge.metrics
            .auth_failures
            .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(error.label()))
            .inc();
        let _ = edge.connect_per_ip.check_key(&ip);
        edge.auth_failures.record_failure(ip);
        Refusal {
            code: CLOSE_UNAUTHORIZED,
            reason: format!("unauthorized: {error}"),
        }
    })?;
    // Per IP before the edge-wide budget: an IP over its own limit does not
    // spend the budget of everyone else.
    if let Err(not_until) = edge.connect_per_ip.check_key(&ip) {
        rejected("rate_limited_ip");
        return Err(Refusal {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: retry_hint(not_until.wait_time_from(DefaultClock::default().now())),
        });
    }
    if let Err(not_until) = edge.connect_global.check() {
        rejected("rate_limited_global");
        return Err(Refusal {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: retry_hint(not_until.wait_time_from(DefaultClock::default().now())),
        });
    }
    let Some(slot) = edge.ip_connections.try_hold(ip) else {
        rejected("connections_per_ip");
        return Err(Refusal {
            code: CLOSE_TRY_AGAIN_LATER,
            reason: "too many connections from this address; retry_after_ms=5000".into(),
        });
    };
    Ok((verified, slot))
}

/// Work a connection hands to its (lazily started) job worker, in order.
enum Job {
    Send {
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: String,
        resend: bool,
        reply_to: Option<chatpipe_core::MessageId>,
        mentions: Vec<chatpipe_core::UserId>,
    },
    /// An edit, delete or reaction, with the `client_msg_id` its ack echoes.
    Change {
        request: ChangeRequest,
        client_msg_id: Option<ClientMsgId>,
    },
    Event(Event),
}

/// Why a connection loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    ClientGone,
    HeartbeatTimeout,
    Kicked(KickReason),
    Drained,
    /// The client sent a frame over `max_frame_bytes * 4`, which the
    /// WebSocket layer refuses to read.
    TooBig,
    /// The connection's token reached its `exp` without a `refresh`.
    TokenExpired,
}

/// Whether a read failed because the client's frame or message was larger
/// than the WebSocket layer accepts (rather than the socket breaking).
fn is_too_big(error: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        error.into_inner().downcast::<Error>().map(|error| *error),
        Ok(Error::Capacity(_))
    )
}

struct OpenConnectionGuard<'a, S> {
    edge: &'a EdgeShared<S>,
}

impl<S> Drop for OpenConnectionGuard<'_, S> {
    fn drop(&mut self) {
        self.edge.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.edge.metrics.connections.dec();
    }
}

async fn connection<S: EdgeStore>(
    edge: Arc<EdgeShared<S>>,
    mut socket: WebSocket,
    token: VerifiedToken,
    resume: Option<(SessionId, u64)>,
) {
    let VerifiedToken {
        user,
        expires_at_unix_s,
    } = token;
    edge.open_connections.fetch_add(1, Ordering::Relaxed);
    edge.metrics.connections.inc();
    edge.metrics.connections_accepted.inc();
    let _guard = OpenConnectionGuard { edge: &edge };
    let connection_id = edge.next_connection.fetch_add(1, Ordering::Relaxed);

    let mut replay = Vec::new();
    let mut resumed = false;
    let mut attached = None;
    if let Some((session_id, last_seq)) = resume {
        match edge
            .sessions
            .resume(&session_id, &user, last_seq, connection_id)
        {
            ResumeOutcome::Resumed {
                session,
                ticket,
                replay: frames,
            } => {
                edge.metrics.sessions_resumed.inc();
                resumed = true;
                replay = frames;
                attached = Some((session, ticket));
            }
            ResumeOutcome::Refused => {
                edge.metrics.resumes_refused.inc();
                // A session we still hold for this user but cannot replay is useless now.
                if edge
                    .sessions
                    .sessions_of(&user)
                    .iter()
                    .any(|session| session.id == session_id)
                {
                    edge.route_change(edge.sessions.close(&session_id)).await;
                }
            }
        }
    }
    let (session, ticket) = match attached {
        Some(found) => found,
        None => {
            let (session, ticket, change) = match edge.sessions.open(&user, connection_id) {
                Ok(opened) => opened,
                Err(refused) => {
                    edge.metrics
                        .connections_rejected
                        .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(
                            "too_many_sessions",
                        ))
                        .inc();
                    close_with(&mut socket, CLOSE_TOO_MANY_SESSIONS, &refused.to_string()).await;
                    return;
                }
            };
            edge.metrics
                .sessions
                .set(edge.sessions.session_count() as i64);
            edge.route_change(change).await;
            (session, ticket)
        }
    };

    let hello = ControlFrame::Hello {
        session_id: session.id.clone(),
        heartbeat_ms: edge.config.heartbeat_interval_ms,
        resumed,
    };
    let deadline = Duration::from_millis(edge.config.write_timeout_ms);
    let greeted = async {
        write(
            &mut socket,
            Message::Text(hello.encode().into()),
            &ticket.kick,
            deadline,
        )
        .await?;
        let count = replay.len();
        write_frames(&mut socket, replay, &ticket.kick, deadline).await?;
        edge.metrics.frames_out.inc_by(count as u64);
        Ok::<(), WriteFailed>(())
    }
    .await;
    let ending = match greeted {
        Ok(()) => serve(&edge, &mut socket, &session, &ticket, expires_at_unix_s).await,
        Err(failed) => ending_after(failed, &ticket),
    };

    match ending {
        Ending::Kicked(KickReason::SlowConsumer) => {
            edge.metrics.slow_consumer_closes.inc();
            close_with(
                &mut socket,
                CLOSE_SLOW_CONSUMER,
                "slow consumer: resume to continue",
            )
            .await;
        }
        Ending::Kicked(KickReason::TakenOver) => {
            close_with(
                &mut socket,
                CLOSE_TAKEN_OVER,
                "session resumed by another connection",
            )
            .await;
        }
        Ending::Kicked(KickReason::Resync) => {
            close_with(
                &mut socket,
                CLOSE_RESYNC,
                "frames were lost upstream: reconnect and catch up from history",
            )
            .await;
        }
        Ending::TooBig => {
            edge.metrics
                .frames_rejected
                .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new("too_large"))
                .inc();
            let reason = format!(
                "message too big: frames over {} bytes are not read",
                edge.config.frame_limits.max_frame_bytes * 4
            );
            close_with(&mut socket, CLOSE_MESSAGE_TOO_BIG, &reason).await;
        }
        Ending::TokenExpired => {
            edge.metrics.token_expiry_closes.inc();
            close_with(
                &mut socket,
                CLOSE_TOKEN_EXPIRED,
                "token expired: reconnect with a fresh token (send refresh before exp to stay connected)",
            )
            .await;
        }
        Ending::HeartbeatTimeout => {
            edge.metrics.heartbeat_timeouts.inc();
        }
        Ending::Drained | Ending::ClientGone => {}
    }
    edge.sessions.detach(&session, connection_id);
    tracing::debug!(session = %session.id, user = %user, ?ending, "connection ended");
}

async fn close_with(socket: &mut WebSocket, code: u16, reason: &str) {
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }));
    let _ = tokio::time::timeout(Duration::from_millis(500), socket.send(frame)).await;
}

/// Why a write to the client did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriteFailed {
    /// The connection was kicked meanwhile.
    Kicked,
    /// The client did not take the bytes within `write_timeout_ms`: it
    /// stopped reading, and must not pin the connection.
    TimedOut,
    /// The socket is gone.
    Closed,
}

/// How a connection ends after a failed write.
fn ending_after(failed: WriteFailed, ticket: &crate::sessions::AttachTicket) -> Ending {
    match failed {
        WriteFailed::Kicked => {
            Ending::Kicked(ticket.kick_reason().unwrap_or(KickReason::SlowConsumer))
        }
        WriteFailed::TimedOut => Ending::Kicked(KickReason::SlowConsumer),
        WriteFailed::Closed => Ending::ClientGone,
    }
}

/// Writes one message unless the connection is kicked meanwhile or the
/// write takes longer than `deadline`.
async fn write(
    socket: &mut WebSocket,
    message: Message,
    kick: &tokio_util::sync::CancellationToken,
    deadline: Duration,
) -> Result<(), WriteFailed> {
    tokio::select! {
        biased;
        _ = kick.cancelled() => Err(WriteFailed::Kicked),
        written = tokio::time::timeout(deadline, socket.send(message)) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Closed),
            Err(_) => Err(WriteFailed::TimedOut),
        },
    }
}

/// Writes `frames` with one flush at the end unless the connection is
/// kicked. With a write buffer (`ws_write_buffer_bytes`) larger than the
/// burst, the frames are only encoded into the buffer as they are fed and
/// the flush hands them to the socket in one `write`: one system call per
/// burst instead of one per frame (see the test below).
async fn write_frames<S>(
    socket: &mut S,
    frames: Vec<crate::stream::Frame>,
    kick: &tokio_util::sync::CancellationToken,
    deadline: Duration,
) -> Result<usize, WriteFailed>
where
    S: futures::Sink<Message> + Unpin,
{
    use futures::SinkExt;
    let count = frames.len();
    let written = async {
        for frame in frames {
            socket.feed(Message::Text(frame.text())).await?;
        }
        socket.flush().await
    };
    tokio::select! {
        biased;
        _ = kick.cancelled() => Err(WriteFailed::Kicked),
        written = tokio::time::timeout(deadline, written) => match written {
            Ok(Ok(())) => Ok(count),
            Ok(Err(_)) => Err(WriteFailed::Closed),
            Err(_) => Err(WriteFailed::TimedOut),
        },
    }
}

async fn serve<S: EdgeStore>(
    edge: &Arc<EdgeShared<S>>,
    socket: &mut WebSocket,
    session: &Arc<Session>,
    ticket: &crate::sessions::AttachTicket,
    expires_at_unix_s: u64,
) -> Ending {
    // The token's expiry closes the connection, unless a `refresh` moves it.
    let token_expiry = tokio::time::sleep_until(token_deadline(expires_at_unix_s));
    tokio::pin!(token_expiry);
    let heartbeat_interval = Duration::from_millis(edge.config.heartbeat_interval_ms);
    let heartbeat_timeout = Duration::from_millis(edge.config.heartbeat_timeout_ms);
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + heartbeat_interval,
        heartbeat_interval,
    );
    let mut last_heard = Instant::now();
    let deadline = Duration::from_millis(edge.config.write_timeout_ms);
    let limiter = RateLimiter::direct(
        Quota::per_second(nonzero(edge.config.frames_per_second_per_connection))
            .allow_burst(nonzero(edge.config.frames_burst_per_connection)),
    );
    // Started at the first send: an idle connection holds no queues.
    let mut worker: Option<JobWorker> = None;
    // Frames queued before this connection attached are written first.
    session.wake.notify_one();

    loop {
        tokio::select! {
            biased;
            _ = ticket.kick.cancelled() => {
                return Ending::Kicked(ticket.kick_reason().unwrap_or(KickReason::SlowConsumer));
            }
            _ = edge.draining.cancelled() => {
                return drain_connection(edge, socket, session, ticket, worker.take()).await;
            }
            () = &mut token_expiry => return Ending::TokenExpired,
            Some(frame) = next_reply(&mut worker) => {
                if let Err(failed) = write(socket, Message::Text(frame.encode().into()), &ticket.kick, deadline).await {
                    return ending_after(failed, ticket);
                }
                edge.metrics.frames_out.inc();
            }
            _ = session.wake.notified() => {
                match write_frames(socket, session.take_unwritten(), &ticket.kick, deadline).await {
                    Ok(count) => {
                        edge.metrics.frames_out.inc_by(count as u64);
                    }
                    Err(failed) => return ending_after(failed, ticket),
                }
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > heartbeat_timeout {
                    return Ending::HeartbeatTimeout;
                }
                if let Err(failed) = write(socket, Message::Ping(Default::default()), &ticket.kick, deadline).await {
                    return ending_after(failed, ticket);
                }
            }
            incoming = socket.recv() => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        return if is_too_big(error) { Ending::TooBig } else { Ending::ClientGone };
                    }
                    None => return Ending::ClientGone,
                };
                last_heard = Instant::now();
                let text = match message {
                    Message::Text(text) => text,
                    Message::Binary(_) => {
                        if let Err(failed) = reject(edge, socket, None, chatpipe_core::ErrorCode::Invalid, "binary frames are not supported; send JSON text frames", &ticket.kick, deadline).await { return ending_after(failed, ticket); }
                        continue;
                    }
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Close(_) => return Ending::ClientGone,
                };
                edge.metrics.frames_in.inc();
                let frame = match decode_client_frame(text.as_str(), &edge.config.frame_limits) {
                    Ok(frame) => frame,
                    Err(error) => {
                        // A malformed frame costs the same as any other.
                        if limiter.check().is_err() {
                            if let Err(failed) = reject(edge, socket, error.reference.clone(), chatpipe_core::ErrorCode::RateLimited, "too many frames; slow down", &ticket.kick, deadline).await { return ending_after(failed, ticket); }
                        } else {
                            if let Err(failed) = reject(edge, socket, error.reference.clone(), error.code, &error.message, &ticket.kick, deadline).await { return ending_after(failed, ticket); }
                        }
                        continue;
                    }
                };
                // Every frame kind counts against the connection's rate, so
                // that pings or acks cannot make the edge answer without end.
                if limiter.check().is_err() {
                    if let Err(failed) = reject(edge, socket, frame.reference(), chatpipe_core::ErrorCode::RateLimited, "too many frames; slow down", &ticket.kick, deadline).await { return ending_after(failed, ticket); }
                    continue;
                }
                let reference = frame.reference();
                let job = match frame {
                    ClientFrame::Ping => {
                        if let Err(failed) = write(socket, Message::Text(ControlFrame::Pong.encode().into()), &ticket.kick, deadline).await {
                            return ending_after(failed, ticket);
                        }
                        continue;
                    }
                    ClientFrame::AckSeq { seq } => {
                        session.ack(seq);
                        continue;
                    }
                    ClientFrame::Refresh { token } => {
                        let written = match refresh(edge, &session.user, &token) {
                            Ok(expires_at) => {
                                token_expiry.as_mut().reset(token_deadline(expires_at));
                                write(socket, Message::Text(ControlFrame::Refreshed { expires_at }.encode().into()), &ticket.kick, deadline).await
                            }
                            Err((code, message)) => reject(edge, socket, None, code, &message, &ticket.kick, deadline).await,
                        };
                        if let Err(failed) = written {
                            return ending_after(failed, ticket);
                        }
                        continue;
                    }
                    ClientFrame::Send { conversation_id, client_msg_id, body, resend, reply_to, mentions } => Job::Send { conversation_id, client_msg_id, body, resend, reply_to, mentions },
                    ClientFrame::Typing { conversation_id } => Job::Event(Event::Typing { conversation_id, user_id: session.user.clone() }),
                    ClientFrame::Read { conversation_id, message_id } => {
                        // This session knows its own marker: the copy fan-out
                        // sends to the reader's devices skips it.
                        session.note_read_marker(&conversation_id, message_id);
                        Job::Event(Event::Read { conversation_id, user_id: session.user.clone(), message_id })
                    }
                    ClientFrame::Edit { conversation_id, message_id, body, client_msg_id } => Job::Change { request: ChangeRequest { conversation_id, message_id, change: MessageChange::Edit { body } }, client_msg_id },
                    ClientFrame::Delete { conversation_id, message_id, client_msg_id } => Job::Change { request: ChangeRequest { conversation_id, message_id, change: MessageChange::Delete }, client_msg_id },
                    ClientFrame::React { conversation_id, message_id, reaction, add, client_msg_id } => {
                        let change = if add { MessageChange::ReactionAdd { reaction } } else { MessageChange::ReactionRemove { reaction } };
                        Job::Change { request: ChangeRequest { conversation_id, message_id, change }, client_msg_id }
                    }
                };
                let queue = &worker.get_or_insert_with(|| spawn_job_worker(edge.clone(), session.user.clone())).jobs;
                if queue.try_send(job).is_err()
                    && let Err(failed) = reject(edge, socket, reference, chatpipe_core::ErrorCode::RateLimited, "too many sends in flight; wait for acks", &ticket.kick, deadline).await
                {
                    return ending_after(failed, ticket);
                }
            }
        }
    }
}

/// Judges a `refresh`: the new token's `exp` when it verifies and is the
/// connection's user's, else the error to answer (the deadline stays).
fn refresh<S>(
    edge: &EdgeShared<S>,
    user: &UserId,
    token: &str,
) -> Result<u64, (chatpipe_core::ErrorCode, String)> {
    let outcome = match edge.keys.verify_token(token) {
        Ok(verified) if verified.user == *user => Ok(verified.expires_at_unix_s),
        Ok(_) => Err((
            chatpipe_core::ErrorCode::Forbidden,
            "refresh: the token is another user's; the connection keeps its deadline".to_owned(),
        )),
        Err(error) => {
            edge.metrics
                .auth_failures
                .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(error.label()))
                .inc();
            Err((
                chatpipe_core::ErrorCode::Invalid,
                format!("refresh: {error}; the connection keeps its deadline"),
            ))
        }
    };
    let label = match &outcome {
        Ok(_) => "accepted",
        Err((code, _)) => code.as_str(),
    };
    edge.metrics
        .token_refreshes
        .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(label))
        .inc();
    outcome
}

fn nonzero(value: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(value.max(1)).expect("at least one")
}

async fn reject<S>(
    edge: &EdgeShared<S>,
    socket: &mut WebSocket,
    reference: Option<String>,
    code: chatpipe_core::ErrorCode,
    message: &str,
    kick: &tokio_util::sync::CancellationToken,
    deadline: Duration,
) -> Result<(), WriteFailed> {
    edge.metrics
        .frames_rejected
        .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(code.as_str()))
        .inc();
    let frame = ControlFrame::Error {
        reference,
        code,
        message: message.to_owned(),
    };
    write(socket, Message::Text(frame.encode().into()), kick, deadline).await
}

/// A connection's job queue and the replies (acks, errors) coming back.
struct JobWorker {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<ControlFrame>,
}

/// The next reply of the connection's worker; never, while it has none.
async fn next_reply(worker: &mut Option<JobWorker>) -> Option<ControlFrame> {
    match worker {
        Some(worker) => worker.replies.recv().await,
        None => std::future::pending().await,
    }
}

/// Runs a connection's sends and events one at a time, in arrival order, so
/// that a client's messages keep their order into Kafka.
fn spawn_job_worker<S: EdgeStore>(edge: Arc<EdgeShared<S>>, user: UserId) -> JobWorker {
    let (jobs_tx, mut jobs_rx) = mpsc::channel::<Job>(JOBS_PER_CONNECTION);
    let (control, replies) = mpsc::channel::<ControlFrame>(JOBS_PER_CONNECTION);
    tokio::spawn(async move {
        while let Some(job) = jobs_rx.recv().await {
            let reply = match job {
                Job::Send {
                    conversation_id,
                    client_msg_id,
                    body,
                    resend,
                    reply_to,
                    mentions,
                } => {
                    let reference = client_msg_id.to_string();
                    let request = SendRequest {
                        conversation_id,
                        client_msg_id: client_msg_id.clone(),
                        body,
                        resend,
                        reply_to,
                        mentions,
                    };
                    let outcome = edge.send_path.send(&user, request).await;
                    Some(answer(&edge, outcome, Some(client_msg_id), reference))
                }
                Job::Change {
                    request,
                    client_msg_id,
                } => {
                    let reference = client_msg_id
                        .as_ref()
                        .map_or_else(|| request.message_id.to_string(), ToString::to_string);
                    let outcome = edge.send_path.change(&user, request).await;
                    Some(answer(&edge, outcome, client_msg_id, reference))
                }
                Job::Event(event) => match edge.send_path.publish_event(&user, event).await {
                    Ok(()) => None,
                    Err(refusal) => Some(ControlFrame::Error {
                        reference: None,
                        code: refusal.code,
                        message: refusal.message,
                    }),
                },
            };
            if let Some(frame) = reply
                && control.send(frame).await.is_err()
            {
                break;
            }
        }
    });
    JobWorker {
        jobs: jobs_tx,
        replies,
    }
}

/// The `ack` or `error` frame of a send, edit or delete.
fn answer<S>(
    edge: &EdgeShared<S>,
    outcome: Result<crate::send::Accepted, crate::send::SendRefusal>,
    client_msg_id: Option<ClientMsgId>,
    reference: String,
) -> ControlFrame {
    match outcome {
        Ok(accepted) => ControlFrame::Ack {
            client_msg_id,
            message_id: accepted.message_id,
            ts: accepted.ts,
        },
        Err(refusal) => {
            edge.metrics
                .frames_rejected
                .get_or_create(&chatpipe_runtime::metrics::ReasonLabel::new(
                    refusal.code.as_str(),
                ))
                .inc();
            ControlFrame::Error {
                reference: Some(reference),
                code: refusal.code,
                message: refusal.message,
            }
        }
    }
}

/// Drain of one connection: finish what the client already sent (its acks
/// go out), write the session's pending frames, then `reconnect` and close.
async fn drain_connection<S>(
    edge: &Arc<EdgeShared<S>>,
    socket: &mut WebSocket,
    session: &Arc<Session>,
    ticket: &crate::sessions::AttachTicket,
    worker: Option<JobWorker>,
) -> Ending {
    let deadline = Duration::from_millis(edge.config.write_timeout_ms);
    // Closing the job queue lets the worker finish what it holds; its
    // replies end when it does.
    if let Some(JobWorker { jobs, mut replies }) = worker {
        drop(jobs);
        let replies_until =
            tokio::time::Instant::now() + Duration::from_millis(edge.config.drain_deadline_ms / 2);
        while let Ok(Some(frame)) = tokio::time::timeout_at(replies_until, replies.recv()).await {
            if let Err(failed) = write(
                socket,
                Message::Text(frame.encode().into()),
                &ticket.kick,
                deadline,
            )
            .await
            {
                return ending_after(failed, ticket);
            }
        }
    }
    match write_frames(socket, session.take_unwritten(), &ticket.kick, deadline).await {
        Ok(count) => {
            edge.metrics.frames_out.inc_by(count as u64);
        }
        Err(failed) => return ending_after(failed, ticket),
    }
    let reconnect = ControlFrame::Reconnect {
        reason: "edge draining; reconnect and resume".into(),
    };
    let _ = write(
        socket,
        Message::Text(reconnect.encode().into()),
        &ticket.kick,
        deadline,
    )
    .await;
    close_with(socket, CLOSE_GOING_AWAY, "draining").await;
    Ending::Drained
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use chatpipe_core::frames::SequencedFrame;
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

    use super::*;
    use crate::config::EdgeConfig;
    use crate::stream::OutboundStream;

    /// A socket that counts the writes it is handed and keeps the bytes.
    struct CountingSocket {
        writes: Arc<AtomicUsize>,
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for CountingSocket {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for CountingSocket {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_burst_of_frames_is_one_write_to_the_socket() {
        let edge = EdgeConfig::default();
        let writes = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let socket = CountingSocket {
            writes: writes.clone(),
            bytes: bytes.clone(),
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(edge.ws_read_buffer_bytes)
            .write_buffer_size(edge.ws_write_buffer_bytes);
        let server = WebSocketStream::from_raw_socket(socket, Role::Server, Some(config)).await;
        // The edge's socket type takes axum's messages; tungstenite's are
        // the same frames on the wire.
        let mut sink = server.with(|message: Message| {
            let Message::Text(text) = message else {
                unreachable!("only text frames are written here")
            };
            futures::future::ready(Ok::<_, tokio_tungstenite::tungstenite::Error>(
                tokio_tungstenite::tungstenite::Message::text(text.as_str()),
            ))
        });
        let mut stream = OutboundStream::new(256);
        let body = Arc::new(SequencedFrame::new(
            "message",
            r#"{"message":{"body":"a burst"}}"#,
        ));
        for _ in 0..100 {
            stream.push(&body);
        }
        let kick = tokio_util::sync::CancellationToken::new();
        let written = write_frames(
            &mut sink,
            stream.take_unwritten(),
            &kick,
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(written, Ok(100));
        assert_eq!(writes.load(Ordering::SeqCst), 1, "one write for the burst");

        // A second burst is one more write.
        stream.push(&body);
        stream.push(&body);
        assert_eq!(
            write_frames(
                &mut sink,
                stream.take_unwritten(),
                &kick,
                Duration::from_secs(5)
            )
            .await,
            Ok(2)
        );
        assert_eq!(writes.load(Ordering::SeqCst), 2);

        // What a client reads: the contract's frames, seq by seq.
        let wire = bytes.lock().unwrap().clone();
        let mut client =
            WebSocketStream::from_raw_socket(std::io::Cursor::new(wire), Role::Client, None).await;
        for seq in 1..=102 {
            let message = client
                .next()
                .await
                .expect("a frame")
                .expect("a valid frame");
            assert_eq!(
                message.into_text().unwrap().as_str(),
                format!(r#"{{"op":"message","seq":{seq},"message":{{"body":"a burst"}}}}"#)
            );
        }
    }
}

/// Property tests of the resume parameters (`?resume=<session_id>&last_seq=N`):
/// the query string as axum extracts it, then [`parse_resume`], then the
/// session stream's replay. Short pass in every `cargo test`; long pass in
/// `benches/fuzz.sh`.
#[cfg(test)]
mod properties {
    use std::sync::Arc;

    use axum::http::Uri;
    use chatpipe_core::frames::SequencedFrame;
    use proptest::prelude::*;

    use super::*;
    use crate::stream::{OutboundStream, Replay};

    use chatpipe_testkit::percent_encode as encode;

    fn connect_params(query: &str) -> Option<ConnectParams> {
        let uri: Uri = format!("/ws?{query}").parse().ok()?;
        Query::<ConnectParams>::try_from_uri(&uri)
            .ok()
            .map(|Query(params)| params)
    }

    fn session_id() -> impl Strategy<Value = SessionId> {
        prop_oneof!["[0-9a-f]{32}", "[A-Za-z0-9_.:@-]{1,64}",]
            .prop_map(|raw| SessionId::parse(raw).expect("a valid session id"))
    }

    fn param_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[+-]?0{0,2}[0-9]{0,21}",
            "[A-Za-z0-9_.:@ %&=+/-]{0,70}",
            any::<String>(),
        ]
    }

    proptest! {
        /// Any query string: extracted or refused by axum (a 400 before the
        /// upgrade), then resumed or treated as a new session; never a panic.
        #[test]
        fn any_query_string_is_a_resume_a_new_session_or_a_400(
            raw_query in "[ -~]{0,120}",
        ) {
            if let Some(params) = connect_params(&raw_query) {
                let resume = parse_resume(&params);
                if let Some((session, last_seq)) = resume {
                    prop_assert_eq!(Some(session.as_str()), params.resume.as_deref());
                    prop_assert_eq!(
                        last_seq,
                        params.last_seq.as_deref().map_or(Ok(0), str::parse::<u64>).unwrap()
                    );
                }
            }
        }

        /// Resume values as a client encodes them: a valid session id and
        /// `last_seq` come back exactly; anything else means no resume.
        #[test]
        fn resume_values_round_trip_through_the_query_string(
            resume in prop::option::of(prop_oneof![
                session_id().prop_map(SessionId::into_string),
                param_value(),
            ]),
            last_seq in prop::option::of(prop_oneof![
                any::<u64>().prop_map(|seq| seq.to_string()),
                param_value(),
            ]),
            token in prop::option::of("[A-Za-z0-9._-]{0,40}"),
            reverse in any::<bool>(),
        ) {
            let mut pairs = Vec::new();
            for (name, value) in [("token", &token), ("resume", &resume), ("last_seq", &last_seq)] {
                if let Some(value) = value {
                    pairs.push(format!("{name}={}", encode(value)));
                }
            }
            if reverse {
                pairs.reverse();
            }
            let params = connect_params(&pairs.join("&")).expect("an encoded query extracts");
            prop_assert_eq!(&params.resume, &resume);
            prop_assert_eq!(&params.last_seq, &last_seq);
            prop_assert_eq!(&params.token, &token);
            let expected = resume.as_deref().and_then(|raw| SessionId::parse(raw).ok()).and_then(|session| {
                let seq = match last_seq.as_deref() {
                    None => 0,
                    Some(text) => text.parse::<u64>().ok()?,
                };
                Some((session, seq))
            });
            prop_assert_eq!(parse_resume(&params), expected);
        }

        /// Whatever `last_seq` a client claims, the replay is exactly the
        /// frames after it (or after what it acknowledged), or a refusal
        /// when they are gone or were never sent.
        #[test]
        fn a_resume_replays_exactly_what_came_after_last_seq_or_refuses(
            capacity in 1usize..16,
            pushes in 0u64..40,
            acked in prop::option::of(0u64..48),
            last_seq in prop_oneof![0u64..48, any::<u64>()],
            lost in prop::bool::weighted(0.1),
        ) {
            let body = Arc::new(SequencedFrame::new("presence", r#"{"user_id":"u","status":"online"}"#));
            let mut stream = OutboundStream::new(capacity);
            for _ in 0..pushes {
                stream.push(&body);
            }
            stream.take_unwritten();
            if let Some(acked) = acked {
                stream.ack(acked);
            }
            if lost {
                stream.mark_lost();
            }
            let evicted_upto = pushes.saturating_sub(capacity as u64);
            let replay = stream.resume_after(last_seq);
            match replay {
                Replay::Frames(frames) => {
                    prop_assert!(!lost && last_seq <= pushes && last_seq >= evicted_upto);
                    let from = last_seq.max(acked.unwrap_or(0)).min(pushes);
                    let seqs: Vec<u64> = frames.iter().map(|frame| frame.seq).collect();
                    prop_assert_eq!(seqs, ((from + 1)..=pushes).collect::<Vec<u64>>());
                    prop_assert_eq!(stream.unwritten(), 0);
                }
                Replay::Gap => {
                    prop_assert!(lost || last_seq > pushes || last_seq < evicted_upto);
                }
            }
        }
    }
}
