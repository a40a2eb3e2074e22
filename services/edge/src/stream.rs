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

/// One encoded frame: UTF-8 text behind a reference count, so the replay
/// buffer and the socket writer share it and the write copies nothing.
pub type Frame = axum::extract::ws::Utf8Bytes;

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
    /// Frames not yet acknowledged, oldest first, with their seq.
    frames: VecDeque<(u64, Frame)>,
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

    /// Appends a frame built by `encode(seq)`; returns its seq.
    pub fn push(&mut self, encode: impl FnOnce(u64) -> String) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.frames.len() == self.capacity
            && let Some((evicted, _)) = self.frames.pop_front()
        {
            self.evicted_upto = evicted;
            // An evicted frame the writer never took is skipped; the
            // connection is closed as a slow consumer before this happens
            // when `max_unwritten_frames < capacity`.
            self.written_upto = self.written_upto.max(evicted);
        }
        self.frames.push_back((seq, Frame::from(encode(seq))));
        seq
    }

    /// The client has every frame up to `seq`: drop them.
    pub fn ack(&mut self, seq: u64) {
        while self.frames.front().is_some_and(|(front, _)| *front <= seq) {
            self.frames.pop_front();
        }
    }

    /// Frames not yet handed to the writer; marks them handed.
    pub fn take_unwritten(&mut self) -> Vec<Frame> {
        let from = self.written_upto;
        let pending: Vec<Frame> = self
            .frames
            .iter()
            .filter(|(seq, _)| *seq > from)
            .map(|(_, frame)| frame.clone())
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
        let frames = self.frames.iter().map(|(_, frame)| frame.clone()).collect();
        self.written_upto = self.last_seq();
        Replay::Frames(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> String {
        format!("f{seq}")
    }

    #[test]
    fn seqs_increase_and_ack_trims() {
        let mut stream = OutboundStream::new(8);
        assert_eq!(stream.push(frame), 1);
        assert_eq!(stream.push(frame), 2);
        assert_eq!(stream.push(frame), 3);
        assert_eq!(stream.take_unwritten().len(), 3);
        assert_eq!(stream.unwritten(), 0);
        stream.ack(2);
        assert_eq!(stream.buffered(), 1);
    }

    #[test]
    fn resume_replays_exactly_what_came_after_last_seq() {
        let mut stream = OutboundStream::new(8);
        for _ in 0..5 {
            stream.push(frame);
        }
        stream.take_unwritten();
        match stream.resume_after(3) {
            Replay::Frames(frames) => {
                let texts: Vec<&str> = frames.iter().map(|frame| &**frame).collect();
                assert_eq!(texts, ["f4", "f5"]);
            }
            Replay::Gap => panic!("resume should succeed"),
        }
        assert_eq!(stream.resume_after(9), Replay::Gap);
    }

    #[test]
    fn eviction_makes_old_resumes_impossible_and_memory_bounded() {
        let mut stream = OutboundStream::new(4);
        for _ in 0..10 {
            stream.push(frame);
        }
        assert_eq!(stream.buffered(), 4);
        assert_eq!(stream.resume_after(2), Replay::Gap);
        assert!(matches!(stream.resume_after(6), Replay::Frames(ref frames) if frames.len() == 4));
    }

    #[test]
    fn unwritten_counts_what_the_writer_has_not_taken() {
        let mut stream = OutboundStream::new(100);
        for _ in 0..7 {
            stream.push(frame);
        }
        assert_eq!(stream.unwritten(), 7);
        stream.take_unwritten();
        stream.push(frame);
        assert_eq!(stream.unwritten(), 1);
    }
}
