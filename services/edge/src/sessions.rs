//! The sessions this edge holds, by id and by user.
//!
//! A session outlives its connection: when the socket goes, the session is
//! *detached* and keeps collecting frames (bounded) for `resume_window_ms`,
//! so that a client that comes back (after a blip, or to this edge after a
//! reconnect) is replayed what it missed. The registry tells its caller when
//! a user's first session appears and when the last one goes, which is when
//! the edge publishes or removes the user's route and presence.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatpipe_core::frames::SequencedFrame;
use chatpipe_core::{ConversationId, MessageId, SessionId, UserId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::stream::{Frame, OutboundStream, Replay};

/// Why a connection was told to go away by someone other than its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickReason {
    /// Its outbound backlog passed `max_unwritten_frames`.
    SlowConsumer,
    /// Another connection resumed the session.
    TakenOver,
    /// Frames meant for the session were lost before reaching the edge; the
    /// client must start a new session and catch up from history.
    Resync,
}

#[derive(Debug)]
enum Attachment {
    Attached {
        connection: u64,
        kick: CancellationToken,
        kick_reason: Arc<Mutex<Option<KickReason>>>,
    },
    Detached {
        since: Instant,
    },
}

/// One session.
#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub user: UserId,
    stream: Mutex<OutboundStream>,
    /// Wakes the connection's writer when frames arrive.
    pub wake: Notify,
    attachment: Mutex<Attachment>,
    /// The read markers this session's client sent, so that the copy of
    /// its own `read` that fan-out sends to the reader's devices (to keep
    /// them in sync) is not echoed back to it.
    read_markers: Mutex<SentReadMarkers>,
}

/// Conversations whose read marker one session remembers; past it the
/// memory starts over (the cost: one harmless echo of an own marker).
pub const MAX_REMEMBERED_READ_MARKERS: usize = 256;

/// The highest read marker a session sent, per conversation (bounded by
/// [`MAX_REMEMBERED_READ_MARKERS`]). Pure.
#[derive(Debug, Default)]
pub struct SentReadMarkers {
    highest: HashMap<ConversationId, MessageId>,
}

impl SentReadMarkers {
    /// Remembers that the client sent `marker` for `conversation`.
    pub fn note(&mut self, conversation: &ConversationId, marker: MessageId) {
        if self.highest.len() >= MAX_REMEMBERED_READ_MARKERS
            && !self.highest.contains_key(conversation)
        {
            self.highest.clear();
        }
        let entry = self.highest.entry(conversation.clone()).or_insert(marker);
        *entry = (*entry).max(marker);
    }

    /// Whether the client already has `marker` (it sent it, or a later one).
    pub fn covers(&self, conversation: &ConversationId, marker: MessageId) -> bool {
        self.highest
            .get(conversation)
            .is_some_and(|highest| *highest >= marker)
    }
}

/// A `read` frame to deliver: whose marker it is, so that the reader's
/// session that sent it (or a later one) skips it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ReadMarkerFrame {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub message_id: MessageId,
}

/// What a connection holds while it is attached to a session.
#[derive(Debug, Clone)]
pub struct AttachTicket {
    pub connection: u64,
    pub kick: CancellationToken,
    kick_reason: Arc<Mutex<Option<KickReason>>>,
}

impl AttachTicket {
    pub fn kick_reason(&self) -> Option<KickReason> {
        *self.kick_reason.lock().expect("kick lock")
    }
}

impl Session {
    fn new(id: SessionId, user: UserId, capacity: usize) -> Self {
        Self {
            id,
            user,
            stream: Mutex::new(OutboundStream::new(capacity)),
            wake: Notify::new(),
            attachment: Mutex::new(Attachment::Detached {
                since: Instant::now(),
            }),
            read_markers: Mutex::new(SentReadMarkers::default()),
        }
    }

    /// Remembers a read marker this session's client sent.
    pub fn note_read_marker(&self, conversation: &ConversationId, marker: MessageId) {
        self.read_markers
            .lock()
            .expect("read markers lock")
            .note(conversation, marker);
    }

    /// Whether `frame` is this session's own marker (or an older one of
    /// its user), which its client already knows.
    fn knows_read_marker(&self, frame: &ReadMarkerFrame) -> bool {
        self.user == frame.user_id
            && self
                .read_markers
                .lock()
                .expect("read markers lock")
                .covers(&frame.conversation_id, frame.message_id)
    }

    /// Attaches a connection, kicking any previous one.
    fn attach(&self, connection: u64) -> AttachTicket {
        let ticket = AttachTicket {
            connection,
            kick: CancellationToken::new(),
            kick_reason: Arc::new(Mutex::new(None)),
        };
        let mut attachment = self.attachment.lock().expect("attachment lock");
        if let Attachment::Attached {
            kick, kick_reason, ..
        } = &*attachment
        {
            *kick_reason.lock().expect("kick lock") = Some(KickReason::TakenOver);
            kick.cancel();
        }
        *attachment = Attachment::Attached {
            connection,
            kick: ticket.kick.clone(),
            kick_reason: ticket.kick_reason.clone(),
        };
        ticket
    }

    /// Detaches `connection` if it is still the attached one.
    fn detach(&self, connection: u64) {
        let mut attachment = self.attachment.lock().expect("attachment lock");
        if matches!(&*attachment, Attachment::Attached { connection: current, .. } if *current == connection)
        {
            *attachment = Attachment::Detached {
                since: Instant::now(),
            };
        }
    }

    fn detached_since(&self) -> Option<Instant> {
        match &*self.attachment.lock().expect("attachment lock") {
            Attachment::Detached { since } => Some(*since),
            Attachment::Attached { .. } => None,
        }
    }

    /// Queues one frame (shared, not copied); kicks the attached connection
    /// if it lags too far.
    pub fn enqueue(&self, body: &Arc<SequencedFrame>, max_unwritten: usize) -> u64 {
        let (seq, lagging) = {
            let mut stream = self.stream.lock().expect("stream lock");
            let seq = stream.push(body);
            (seq, stream.unwritten() > max_unwritten)
        };
        if lagging {
            let attachment = self.attachment.lock().expect("attachment lock");
            if let Attachment::Attached {
                kick, kick_reason, ..
            } = &*attachment
            {
                kick_reason
                    .lock()
                    .expect("kick lock")
                    .get_or_insert(KickReason::SlowConsumer);
                kick.cancel();
            }
        }
        self.wake.notify_one();
        seq
    }

    /// Marks the stream lost (no resume) and kicks the attached connection.
    fn resync(&self) {
        self.stream.lock().expect("stream lock").mark_lost();
        let attachment = self.attachment.lock().expect("attachment lock");
        if let Attachment::Attached {
            kick, kick_reason, ..
        } = &*attachment
        {
            *kick_reason.lock().expect("kick lock") = Some(KickReason::Resync);
            kick.cancel();
        }
    }

    pub fn take_unwritten(&self) -> Vec<Frame> {
        self.stream.lock().expect("stream lock").take_unwritten()
    }

    pub fn ack(&self, seq: u64) {
        self.stream.lock().expect("stream lock").ack(seq);
    }

    pub fn buffered(&self) -> usize {
        self.stream.lock().expect("stream lock").buffered()
    }

    pub fn unwritten(&self) -> usize {
        self.stream.lock().expect("stream lock").unwritten()
    }
}

/// A change in the set of users this edge holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// The user's first session here: publish the route, presence online.
    UserArrived(UserId),
    /// The user's last session here ended: remove the route, presence offline.
    UserLeft(UserId),
}

#[derive(Debug, Default)]
struct Tables {
    sessions: HashMap<SessionId, Arc<Session>>,
    by_user: HashMap<UserId, HashSet<SessionId>>,
}

/// Every session of this edge.
#[derive(Debug)]
pub struct SessionRegistry {
    tables: Mutex<Tables>,
    buffer_frames: usize,
    max_unwritten: usize,
    /// Sessions one user may hold here, detached ones included.
    max_per_user: usize,
}

/// A user already holds `max_sessions_per_user` attached sessions here, so
/// no detached one could make room for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many sessions for this user: at most {max} at once")]
pub struct TooManySessions {
    pub max: usize,
}

/// The result of a resume request.
#[derive(Debug)]
pub enum ResumeOutcome {
    Resumed {
        session: Arc<Session>,
        ticket: AttachTicket,
        replay: Vec<Frame>,
    },
    /// Unknown or expired session, another user's, or a gap in its buffer.
    Refused,
}

impl SessionRegistry {
    pub fn new(buffer_frames: usize, max_unwritten: usize) -> Self {
        Self {
            tables: Mutex::new(Tables::default()),
            buffer_frames,
            max_unwritten,
            max_per_user: usize::MAX,
        }
    }

    /// Caps the sessions one user holds (attached and detached; at least 1).
    pub fn with_max_sessions_per_user(mut self, max: usize) -> Self {
        self.max_per_user = max.max(1);
        self
    }

    /// Creates and attaches a fresh session for `user`. At the user's cap,
    /// the session detached the longest is dropped to make room (its client
    /// can no longer resume it); with every session attached, the new one
    /// is refused.
    pub fn open(
        &self,
        user: &UserId,
        connection: u64,
    ) -> Result<(Arc<Session>, AttachTicket, Option<RouteChange>), TooManySessions> {
        let mut tables = self.tables.lock().expect("sessions lock");
        let held = tables.by_user.get(user).map_or(0, HashSet::len);
        if held >= self.max_per_user {
            let oldest_detached = tables.by_user[user]
                .iter()
                .filter_map(|id| {
                    let since = tables.sessions.get(id)?.detached_since()?;
                    Some((since, id.clone()))
                })
                .min_by_key(|(since, _)| *since);
            let Some((_, dropped)) = oldest_detached else {
                return Err(TooManySessions {
                    max: self.max_per_user,
                });
            };
            // The user keeps sessions here (the new one), so no route change.
            tables.sessions.remove(&dropped);
            if let Some(user_sessions) = tables.by_user.get_mut(user) {
                user_sessions.remove(&dropped);
            }
        }
        let id = SessionId::parse(uuid::Uuid::new_v4().simple().to_string())
            .expect("uuid is a valid id");
        let session = Arc::new(Session::new(id.clone(), user.clone(), self.buffer_frames));
        let ticket = session.attach(connection);
        tables.sessions.insert(id.clone(), session.clone());
        let user_sessions = tables.by_user.entry(user.clone()).or_default();
        let arrived = user_sessions.is_empty();
        user_sessions.insert(id);
        Ok((
            session,
            ticket,
            arrived.then(|| RouteChange::UserArrived(user.clone())),
        ))
    }

    /// Re-attaches `session_id` for `user` and prepares the replay after `last_seq`.
    pub fn resume(
        &self,
        session_id: &SessionId,
        user: &UserId,
        last_seq: u64,
        connection: u64,
    ) -> ResumeOutcome {
        let session = {
            let tables = self.tables.lock().expect("sessions lock");
            match tables.sessions.get(session_id) {
                Some(session) if session.user == *user => session.clone(),
                _ => return ResumeOutcome::Refused,
            }
        };
        let replay = session
            .stream
            .lock()
            .expect("stream lock")
            .resume_after(last_seq);
        match replay {
            Replay::Gap => ResumeOutcome::Refused,
            Replay::Frames(replay) => {
                let ticket = session.attach(connection);
                ResumeOutcome::Resumed {
                    session,
                    ticket,
                    replay,
                }
            }
        }
    }

    /// The connection ended; the session waits for a resume.
    pub fn detach(&self, session: &Session, connection: u64) {
        session.detach(connection);
    }

    /// Ends a session for good (resume window over, or a resume was refused
    /// and the client started anew).
    pub fn close(&self, session_id: &SessionId) -> Option<RouteChange> {
        let mut tables = self.tables.lock().expect("sessions lock");
        let session = tables.sessions.remove(session_id)?;
        let user_sessions = tables.by_user.get_mut(&session.user)?;
        user_sessions.remove(session_id);
        if user_sessions.is_empty() {
            tables.by_user.remove(&session.user);
            return Some(RouteChange::UserLeft(session.user.clone()));
        }
        None
    }

    /// Removes sessions detached for longer than `window`.
    pub fn expire_detached(&self, window: Duration) -> Vec<RouteChange> {
        let expired: Vec<SessionId> = {
            let tables = self.tables.lock().expect("sessions lock");
            tables
                .sessions
                .values()
                .filter(|session| {
                    session
                        .detached_since()
                        .is_some_and(|since| since.elapsed() >= window)
                })
                .map(|session| session.id.clone())
                .collect()
        };
        expired.iter().filter_map(|id| self.close(id)).collect()
    }

    /// Queues a frame to every session of `user`; returns how many.
    pub fn deliver(&self, user: &UserId, body: &Arc<SequencedFrame>) -> usize {
        self.deliver_to_all([user.as_str()], body).0
    }

    /// Every session held now may have missed frames: none of them can be
    /// resumed, and attached connections are closed so that their clients
    /// start over and catch up from history. Returns how many sessions.
    pub fn resync_all(&self) -> usize {
        let sessions = self.all_sessions();
        for session in &sessions {
            session.resync();
        }
        sessions.len()
    }

    /// Queues one shared frame to every session of each of `recipients`
    /// (one lock for the whole list); returns the sessions reached and the
    /// recipients that hold none here.
    pub fn deliver_to_all<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
        body: &Arc<SequencedFrame>,
    ) -> (usize, usize) {
        self.deliver_to_all_but(recipients, body, None)
    }

    /// [`Self::deliver_to_all`], leaving out, for a `read` frame, the
    /// reader's sessions that already know the marker (the one that sent
    /// it).
    pub fn deliver_to_all_but<'a>(
        &self,
        recipients: impl IntoIterator<Item = &'a str>,
        body: &Arc<SequencedFrame>,
        read_marker: Option<&ReadMarkerFrame>,
    ) -> (usize, usize) {
        let recipients = recipients.into_iter();
        let mut targets: Vec<Arc<Session>> = Vec::with_capacity(recipients.size_hint().0);
        let mut absent = 0;
        {
            let tables = self.tables.lock().expect("sessions lock");
            for recipient in recipients {
                match tables.by_user.get(recipient) {
                    Some(ids) => {
                        targets.extend(ids.iter().filter_map(|id| tables.sessions.get(id).cloned()))
                    }
                    None => absent += 1,
                }
            }
        }
        if let Some(frame) = read_marker {
            targets.retain(|session| !session.knows_read_marker(frame));
        }
        for session in &targets {
            session.enqueue(body, self.max_unwritten);
        }
        (targets.len(), absent)
    }

    /// Frames queued and not yet handed to a writer, over every session.
    pub fn queued_frames(&self) -> usize {
        self.all_sessions()
            .iter()
            .map(|session| session.unwritten())
            .sum()
    }

    /// Every session, taken out of the lock.
    fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.tables
            .lock()
            .expect("sessions lock")
            .sessions
            .values()
            .cloned()
            .collect()
    }

    pub fn session_count(&self) -> usize {
        self.tables.lock().expect("sessions lock").sessions.len()
    }

    /// Users with at least one session here (for route re-announcement).
    pub fn users(&self) -> Vec<UserId> {
        self.tables
            .lock()
            .expect("sessions lock")
            .by_user
            .keys()
            .cloned()
            .collect()
    }

    /// Sessions of one user (tests and diagnostics).
    pub fn sessions_of(&self, user: &UserId) -> Vec<Arc<Session>> {
        let tables = self.tables.lock().expect("sessions lock");
        tables
            .by_user
            .get(user)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| tables.sessions.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    fn body() -> Arc<SequencedFrame> {
        Arc::new(SequencedFrame::new(
            "presence",
            r#"{"user_id":"x","status":"online"}"#,
        ))
    }

    #[test]
    fn first_and_last_session_change_routes() {
        let registry = SessionRegistry::new(16, 8);
        let (first, _, change) = registry.open(&user("alice"), 1).unwrap();
        assert_eq!(change, Some(RouteChange::UserArrived(user("alice"))));
        let (second, _, change) = registry.open(&user("alice"), 2).unwrap();
        assert_eq!(change, None);
        assert_eq!(registry.close(&first.id), None);
        assert_eq!(
            registry.close(&second.id),
            Some(RouteChange::UserLeft(user("alice")))
        );
    }

    #[test]
    fn delivery_reaches_every_device_and_resume_replays() {
        let registry = SessionRegistry::new(16, 8);
        let (phone, _, _) = registry.open(&user("bob"), 1).unwrap();
        let (laptop, _, _) = registry.open(&user("bob"), 2).unwrap();
        let frame = body();
        assert_eq!(registry.deliver(&user("bob"), &frame), 2);
        assert_eq!(registry.deliver(&user("nobody"), &frame), 0);
        assert_eq!(phone.take_unwritten().len(), 1);
        registry.detach(&phone, 1);
        registry.deliver(&user("bob"), &frame);
        match registry.resume(&phone.id, &user("bob"), 1, 3) {
            ResumeOutcome::Resumed { replay, .. } => {
                assert_eq!(replay[0].seq, 2);
                assert_eq!(
                    replay[0].text().as_str(),
                    r#"{"op":"presence","seq":2,"user_id":"x","status":"online"}"#
                );
                assert!(replay[0].shares(&frame), "one body for every session");
            }
            ResumeOutcome::Refused => panic!("resume refused"),
        }
        assert!(matches!(
            registry.resume(&laptop.id, &user("mallory"), 0, 4),
            ResumeOutcome::Refused
        ));
    }

    #[test]
    fn a_read_marker_reaches_the_readers_other_devices_but_not_its_sender() {
        let registry = SessionRegistry::new(16, 8);
        let (phone, _, _) = registry.open(&user("bob"), 1).unwrap();
        let (laptop, _, _) = registry.open(&user("bob"), 2).unwrap();
        let (alice, _, _) = registry.open(&user("alice"), 3).unwrap();
        let conversation = ConversationId::parse("c1").unwrap();
        // Alice read further in the same conversation: her marker does not
        // hide Bob's receipt from her.
        alice.note_read_marker(&conversation, MessageId::from_u64(90));
        phone.note_read_marker(&conversation, MessageId::from_u64(50));
        let marker = |id: u64| ReadMarkerFrame {
            conversation_id: conversation.clone(),
            user_id: user("bob"),
            message_id: MessageId::from_u64(id),
        };
        let frame = body();
        let (sessions, _) =
            registry.deliver_to_all_but(["bob", "alice"], &frame, Some(&marker(50)));
        assert_eq!(sessions, 2);
        assert_eq!(phone.unwritten(), 0, "the sender knows its own marker");
        assert_eq!((laptop.unwritten(), alice.unwritten()), (1, 1));
        // An older marker of Bob's (sent from the laptop before) is not
        // news to the phone either; a newer one is.
        registry.deliver_to_all_but(["bob"], &frame, Some(&marker(40)));
        assert_eq!(phone.unwritten(), 0);
        registry.deliver_to_all_but(["bob"], &frame, Some(&marker(60)));
        assert_eq!(phone.unwritten(), 1);
    }

    #[test]
    fn remembered_markers_are_bounded() {
        let mut markers = SentReadMarkers::default();
        for index in 0..=MAX_REMEMBERED_READ_MARKERS {
            let conversation = ConversationId::parse(format!("c{index}")).unwrap();
            markers.note(&conversation, MessageId::from_u64(7));
        }
        assert!(markers.highest.len() <= MAX_REMEMBERED_READ_MARKERS);
        let last = ConversationId::parse(format!("c{MAX_REMEMBERED_READ_MARKERS}")).unwrap();
        assert!(markers.covers(&last, MessageId::from_u64(7)));
        assert!(!markers.covers(&last, MessageId::from_u64(8)));
    }

    #[test]
    fn a_lagging_reader_is_kicked_as_slow() {
        let registry = SessionRegistry::new(64, 4);
        let (session, ticket, _) = registry.open(&user("carol"), 1).unwrap();
        for _ in 0..5 {
            registry.deliver(&user("carol"), &body());
        }
        assert!(ticket.kick.is_cancelled());
        assert_eq!(ticket.kick_reason(), Some(KickReason::SlowConsumer));
        assert_eq!(session.unwritten(), 5);
    }

    #[test]
    fn resume_takes_over_a_half_open_connection() {
        let registry = SessionRegistry::new(16, 8);
        let (session, old_ticket, _) = registry.open(&user("dave"), 1).unwrap();
        assert!(matches!(
            registry.resume(&session.id, &user("dave"), 0, 2),
            ResumeOutcome::Resumed { .. }
        ));
        assert_eq!(old_ticket.kick_reason(), Some(KickReason::TakenOver));
    }

    #[test]
    fn detached_sessions_expire() {
        let registry = SessionRegistry::new(16, 8);
        let (session, _, _) = registry.open(&user("erin"), 1).unwrap();
        registry.detach(&session, 1);
        assert_eq!(registry.expire_detached(Duration::from_secs(60)), vec![]);
        assert_eq!(
            registry.expire_detached(Duration::ZERO),
            vec![RouteChange::UserLeft(user("erin"))]
        );
        assert_eq!(registry.session_count(), 0);
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).unwrap()
    }

    #[test]
    fn the_oldest_detached_session_makes_room_and_attached_ones_are_never_dropped() {
        let registry = SessionRegistry::new(16, 8).with_max_sessions_per_user(3);
        let alice = user("alice");
        let opened: Vec<_> = (1..=3)
            .map(|connection| registry.open(&alice, connection).unwrap().0)
            .collect();
        // All three attached: a fourth is refused.
        assert_eq!(
            registry.open(&alice, 4).unwrap_err(),
            TooManySessions { max: 3 }
        );
        registry.detach(&opened[1], 2);
        std::thread::sleep(Duration::from_millis(2));
        registry.detach(&opened[0], 1);
        let (fourth, _, change) = registry.open(&alice, 5).unwrap();
        assert_eq!(change, None, "the user stays here");
        let ids: HashSet<_> = registry
            .sessions_of(&alice)
            .iter()
            .map(|session| session.id.clone())
            .collect();
        let expected: HashSet<_> = [&opened[0], &opened[2], &fourth]
            .iter()
            .map(|session| session.id.clone())
            .collect();
        assert_eq!(ids, expected, "the session detached longest was dropped");
        // Another user is not affected.
        assert!(registry.open(&user("bob"), 6).is_ok());
    }
}
