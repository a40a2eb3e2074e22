//! One session's outbound stream, without I/O.
//!
//! Every per-session frame gets the next `seq` and is kept until the client
//! acknowledges it with `ack_seq`, so that a client that reconnects with
//! `resume` can be replayed exactly what came after its `last_seq`. The
//! buffer is bounded: when it is full the oldest frame is evicted, and a
//! resume that would need it is refused (the client then catches up from
//! history). Separately, the writer's progress (`written_upto`) tells how far
//! behind a reader is, which is how slow consumers are detected.

use std::collections::VecDeque;
use std::sync::Arc;

use chatpipe_core::frames::SequencedFrame;

/// One frame of a session's stream: its `seq`, and the frame's body encoded
/// once and shared with every other session that receives it. A session
/// thus holds a number and a pointer per frame, whatever the frame's size
/// or the recipients' count; the text with this session's `seq` exists only
/// while it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    body: Arc<SequencedFrame>,
}

impl Frame {
    /// The frame's text for this session (built at write time).
    pub fn text(&self) -> axum::extract::ws::Utf8Bytes {
        // From a `String`: the buffer moves, no copy.
        axum::extract::ws::Utf8Bytes::from(self.body.with_seq(self.seq))
    }

    /// Whether this frame shares `body` (not a copy of it).
    pub fn shares(&self, body: &Arc<SequencedFrame>) -> bool {
        Arc::ptr_eq(&self.body, body)
    }
}

/// The outcome of a resume request against the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Frames after `last_seq`, in order (maybe none).
    Frames(Vec<Frame>),
    /// Some frame after `last_seq` was evicted, or `last_seq` is in the
    /// future: the session cannot be resumed.
    Gap,
}

#[derive(Debug)]
pub struct OutboundStream {
    /// seq of the next frame.
    next_seq: u64,
    /// Frames not yet acknowledged, oldest first.
    frames: VecDeque<Frame>,
    capacity: usize,
    /// Highest seq handed to the socket writer.
    written_upto: u64,
    /// Highest seq ever evicted without acknowledgement.
    evicted_upto: u64,
    /// Frames meant for this session were lost before reaching the edge:
    /// no resume may pretend the stream is complete.
    lost: bool,
}

impl OutboundStream {
    pub fn new(capacity: usize) -> Self {
        debug_assert!(capacity > 0);
        Self {
            next_seq: 1,
            frames: VecDeque::new(),
            capacity: capacity.max(1),
            written_upto: 0,
            evicted_upto: 0,
            lost: false,
        }
    }

    /// Appends the shared `body` as the next frame; returns its seq.
    pub fn push(&mut self, body: &Arc<SequencedFrame>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.frames.len() == self.capacity
            && let Some(evicted) = self.frames.pop_front()
        {
            self.evicted_upto = evicted.seq;
            // An evicted frame the writer never took is skipped; the
            // connection is closed as a slow consumer before this happens
            // when `max_unwritten_frames < capacity`.
            self.written_upto = self.written_upto.max(evicted.seq);
        }
        self.frames.push_back(Frame {
            seq,
            body: body.clone(),
        });
        seq
    }

    /// The client has every frame up to `seq`: drop them.
    pub fn ack(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|front| front.seq <= seq) {
            self.frames.pop_front();
        }
    }

    /// Frames not yet handed to the writer; marks them handed.
    pub fn take_unwritten(&mut self) -> Vec<Frame> {
        let from = self.written_upto;
        let pending: Vec<Frame> = self
            .frames
            .iter()
            .filter(|frame| frame.seq > from)
            .cloned()
            .collect();
        self.written_upto = self.next_seq - 1;
        pending
    }

    /// How many frames wait for the writer.
    pub fn unwritten(&self) -> usize {
        (self.next_seq - 1 - self.written_upto) as usize
    }

    /// Frames meant for this session were lost upstream: every later resume
    /// is refused, so that the client catches up from history.
    pub fn mark_lost(&mut self) {
        self.lost = true;
    }

    /// Frames held for replay.
    pub fn buffered(&self) -> usize {
        self.frames.len()
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Prepares a resume after `last_seq`: on success the returned frames are
    /// what the new connection must receive first, and everything up to now
    /// counts as written.
    pub fn resume_after(&mut self, last_seq: u64) -> Replay {
        if self.lost || last_seq > self.last_seq() || last_seq < self.evicted_upto {
            return Replay::Gap;
        }
        self.ack(last_seq);
        let frames = self.frames.iter().cloned().collect();
        self.written_upto = self.last_seq();
        Replay::Frames(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Arc<SequencedFrame> {
        Arc::new(SequencedFrame::new(
            "presence",
            r#"{"user_id":"u","status":"online"}"#,
        ))
    }

    #[test]
    fn seqs_increase_and_ack_trims() {
        let mut stream = OutboundStream::new(8);
        let frame = body();
        assert_eq!(stream.push(&frame), 1);
        assert_eq!(stream.push(&frame), 2);
        assert_eq!(stream.push(&frame), 3);
        assert_eq!(stream.take_unwritten().len(), 3);
        assert_eq!(stream.unwritten(), 0);
        stream.ack(2);
        assert_eq!(stream.buffered(), 1);
    }

    #[test]
    fn resume_replays_exactly_what_came_after_last_seq() {
        let mut stream = OutboundStream::new(8);
        let frame = body();
        for _ in 0..5 {
            stream.push(&frame);
        }
        stream.take_unwritten();
        match stream.resume_after(3) {
            Replay::Frames(frames) => {
                let texts: Vec<String> = frames
                    .iter()
                    .map(|frame| frame.text().as_str().to_owned())
                    .collect();
                assert_eq!(
                    texts,
                    [
                        r#"{"op":"presence","seq":4,"user_id":"u","status":"online"}"#,
                        r#"{"op":"presence","seq":5,"user_id":"u","status":"online"}"#
                    ]
                );
                assert!(frames.iter().all(|written| written.shares(&frame)));
            }
            Replay::Gap => panic!("resume should succeed"),
        }
        assert_eq!(stream.resume_after(9), Replay::Gap);
    }

    #[test]
    fn eviction_makes_old_resumes_impossible_and_memory_bounded() {
        let mut stream = OutboundStream::new(4);
        let frame = body();
        for _ in 0..10 {
            stream.push(&frame);
        }
        assert_eq!(stream.buffered(), 4);
        assert_eq!(stream.resume_after(2), Replay::Gap);
        assert!(matches!(stream.resume_after(6), Replay::Frames(ref frames) if frames.len() == 4));
    }

    #[test]
    fn unwritten_counts_what_the_writer_has_not_taken() {
        let mut stream = OutboundStream::new(100);
        let frame = body();
        for _ in 0..7 {
            stream.push(&frame);
        }
        assert_eq!(stream.unwritten(), 7);
        stream.take_unwritten();
        stream.push(&frame);
        assert_eq!(stream.unwritten(), 1);
    }
}
