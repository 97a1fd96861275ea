//! The shared half of a client connection: its socket id and its bounded send queue.
//!
//! Producers (the hub's fan-out, HTTP handlers, the connection's own session) push whole
//! encoded WebSocket frames; the connection's task is the only consumer. The queue holds
//! no allocation until it is used. Over its frame or byte cap the connection is a slow
//! consumer: its queue is dropped and it is closed with 4100, so one slow reader can
//! neither grow memory nor hold back anyone else.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard};

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use relaymesh_proto::codes::ErrorCode;

use crate::frames;
use crate::telemetry;

/// Frames handed to one vectored write.
const WRITE_BATCH_FRAMES: usize = 32;

/// A socket id, `{node}.{sequence}` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SocketId {
    pub node: u64,
    pub seq: u64,
}

impl SocketId {
    /// Parses the `^\d+\.\d+$` form.
    pub fn parse(text: &str) -> Option<SocketId> {
        let (a, b) = text.split_once('.')?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        Some(SocketId {
            node: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }
}

/// The mesh's form of a socket id.
impl From<SocketId> for relaymesh_proto::mesh::SocketRef {
    fn from(s: SocketId) -> Self {
        relaymesh_proto::mesh::SocketRef {
            node: s.node,
            seq: s.seq,
        }
    }
}

impl From<relaymesh_proto::mesh::SocketRef> for SocketId {
    fn from(s: relaymesh_proto::mesh::SocketRef) -> Self {
        SocketId {
            node: s.node,
            seq: s.seq,
        }
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.seq)
    }
}

/// How the connection ends once its queue has drained.
#[derive(Debug, Clone)]
pub struct Close {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Set once: nothing more is accepted, and the task closes after the queue drains.
    close: Option<Close>,
    /// The queue overflowed and was dropped, including any batch being written.
    dropped: bool,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The connection is closing; the frame was dropped.
    Closed,
    /// The push overflowed the queue: the connection is now closing as a slow consumer.
    Overflow,
}

pub struct Conn {
    pub socket_id: SocketId,
    frames_max: u32,
    bytes_max: u32,
    queue: Mutex<Queue>,
    /// Wakes the connection task when the queue goes from empty to non-empty or closes.
    wake: Notify,
}

/// The result of one attempt to write queued frames.
pub enum Drained {
    /// Everything queued was written.
    Empty,
    /// The socket would block with frames still queued.
    Blocked,
    /// The queue is drained and the connection must close with this.
    Close(Close),
}

impl Conn {
    pub fn new(socket_id: SocketId, frames_max: usize, bytes_max: usize) -> Conn {
        Conn {
            socket_id,
            frames_max: frames_max.min(u32::MAX as usize) as u32,
            bytes_max: bytes_max.min(u32::MAX as usize) as u32,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // critical section is a few field updates), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one encoded frame.
    pub fn push(&self, frame: Bytes) -> Pushed {
        let mut queue = self.lock();
        if queue.close.is_some() {
            return Pushed::Closed;
        }
        if queue.frames.len() >= self.frames_max as usize
            || queue.bytes + frame.len() > self.bytes_max as usize
        {
            queue.frames = VecDeque::new();
            queue.bytes = 0;
            queue.dropped = true;
            queue.close = Some(Close {
                code: ErrorCode::OverCapacity.as_u16(),
                reason: "Slow consumer: send queue full",
            });
            drop(queue);
            telemetry::count_error(Some(ErrorCode::OverCapacity.as_u16()), "slow_consumer");
            self.wake.notify_one();
            return Pushed::Overflow;
        }
        queue.bytes += frame.len();
        queue.frames.push_back(frame);
        let first = queue.frames.len() == 1;
        drop(queue);
        if first {
            self.wake.notify_one();
        }
        Pushed::Queued
    }

    /// Queues a text frame built from `text`.
    pub fn push_text(&self, text: &str) -> Pushed {
        self.push(frames::text_frame(text))
    }

    /// Closes the connection after the frames already queued.
    pub fn close(&self, code: u16, reason: &'static str) {
        let mut queue = self.lock();
        if queue.close.is_none() {
            queue.close = Some(Close { code, reason });
            drop(queue);
            self.wake.notify_one();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.lock().close.is_some()
    }

    /// How the connection is to close, once it is closing.
    pub fn closing(&self) -> Option<Close> {
        self.lock().close.clone()
    }

    /// Takes every queued frame, as a connection task would write them (a deterministic
    /// test reads its clients this way).
    pub fn take_queued(&self) -> Vec<Bytes> {
        let mut queue = self.lock();
        queue.bytes = 0;
        std::mem::take(&mut queue.frames).into()
    }

    /// Waits until something was queued or the connection was closed.
    pub async fn woken(&self) {
        self.wake.notified().await
    }

    /// Writes queued frames, several per system call, until the queue is empty or the
    /// socket would block.
    pub fn drain_into(&self, stream: &TcpStream) -> io::Result<Drained> {
        loop {
            let mut batch: [Bytes; WRITE_BATCH_FRAMES] = std::array::from_fn(|_| Bytes::new());
            let count = {
                let mut queue = self.lock();
                let count = queue.frames.len().min(WRITE_BATCH_FRAMES);
                if count == 0 {
                    return Ok(match queue.close.clone() {
                        Some(close) => Drained::Close(close),
                        None => Drained::Empty,
                    });
                }
                for slot in batch.iter_mut().take(count) {
                    if let Some(frame) = queue.frames.pop_front() {
                        *slot = frame;
                    }
                }
                count
            };
            let slices: [IoSlice<'_>; WRITE_BATCH_FRAMES] =
                std::array::from_fn(|i| IoSlice::new(&batch[i]));
            let written = match stream.try_write_vectored(&slices[..count]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            self.requeue_unwritten(&mut batch[..count], written);
            if written == 0 {
                return Ok(Drained::Blocked);
            }
        }
    }

    /// Accounts for `written` bytes of `batch` and puts the rest back at the queue's front.
    fn requeue_unwritten(&self, batch: &mut [Bytes], mut written: usize) {
        let mut queue = self.lock();
        queue.bytes = queue.bytes.saturating_sub(written);
        if queue.dropped {
            // A slow-consumer close dropped the queue: the unwritten batch goes too.
            return;
        }
        let mut rest: Vec<Bytes> = Vec::new();
        for frame in batch.iter_mut() {
            let mut frame = std::mem::take(frame);
            if written >= frame.len() {
                written -= frame.len();
                continue;
            }
            frame.advance(written);
            written = 0;
            rest.push(frame);
        }
        for frame in rest.into_iter().rev() {
            queue.frames.push_front(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_round_trip() {
        let id = SocketId { node: 123, seq: 45 };
        assert_eq!(SocketId::parse(&id.to_string()), Some(id));
        for bad in ["1", "1.", ".1", "a.1", "1.2.3", "1.-2", ""] {
            assert_eq!(SocketId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn overflow_closes_as_slow_consumer() {
        let conn = Conn::new(SocketId { node: 1, seq: 1 }, 2, 1 << 20);
        assert_eq!(conn.push(Bytes::from_static(b"a")), Pushed::Queued);
        assert_eq!(conn.push(Bytes::from_static(b"b")), Pushed::Queued);
        assert_eq!(conn.push(Bytes::from_static(b"c")), Pushed::Overflow);
        assert!(conn.is_closing());
        assert_eq!(conn.push(Bytes::from_static(b"d")), Pushed::Closed);
        let queue = conn.lock();
        assert!(queue.frames.is_empty());
        assert_eq!(queue.close.as_ref().map(|c| c.code), Some(4100));
    }

    #[test]
    fn byte_cap_counts() {
        let conn = Conn::new(SocketId { node: 1, seq: 1 }, 100, 10);
        assert_eq!(conn.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(conn.push(Bytes::from_static(b"12345")), Pushed::Queued);
        assert_eq!(conn.push(Bytes::from_static(b"1")), Pushed::Overflow);
    }

    #[test]
    fn partial_writes_requeue_in_order() {
        let conn = Conn::new(SocketId { node: 1, seq: 1 }, 100, 1 << 20);
        conn.push(Bytes::from_static(b"third"));
        let mut batch = [Bytes::from_static(b"first"), Bytes::from_static(b"second")];
        // Pretend the two frames were popped and 7 bytes of them were written.
        conn.lock().bytes += 11;
        conn.requeue_unwritten(&mut batch, 7);
        let queue = conn.lock();
        let left: Vec<&[u8]> = queue.frames.iter().map(|f| &f[..]).collect();
        assert_eq!(left, vec![&b"cond"[..], &b"third"[..]]);
        assert_eq!(queue.bytes, 9);
    }
}
