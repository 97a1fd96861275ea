//! A link to one peer node, whatever carries it: an ordered, reliable sequence of frames
//! each way. Every transport (QUIC, gRPC, in memory) hands the node the same [`Link`] and
//! drives a [`LinkIo`] from its own tasks, and one conformance suite checks them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::mpsc;

use super::frame::{FrameError, FRAME_BYTES_MAX};
use super::tls::TlsError;

/// Frames queued towards one peer before [`Link::try_send`] answers `Full`.
pub const SEND_QUEUE_FRAMES: usize = 1024;
/// Frames received and not yet taken by the node before the link stops reading.
pub const RECEIVE_QUEUE_FRAMES: usize = 1024;
/// Links an endpoint accepted and the node has not yet taken.
pub const ACCEPT_BACKLOG: usize = 64;

#[derive(Debug, Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("{0}")]
    Transport(String),
    #[error("the peer sent no hello")]
    NoHello,
    #[error("the send queue is full: the peer is not keeping up")]
    Full,
    #[error("the link is closed")]
    Closed,
}

impl LinkError {
    pub fn transport(e: impl std::fmt::Display) -> LinkError {
        LinkError::Transport(e.to_string())
    }
}

/// The node's side of a link.
pub struct Link {
    sender: LinkSender,
    /// Frames from the peer, in order; ends when the link closes.
    pub inbound: mpsc::Receiver<Bytes>,
    /// Write calls the transport made, to see coalescing.
    writes: Arc<AtomicU64>,
}

/// The transport's side of a link.
pub struct LinkIo {
    /// Frames to write, in order.
    pub outgoing: mpsc::Receiver<Bytes>,
    /// Where frames read from the peer go.
    pub incoming: mpsc::Sender<Bytes>,
    /// Counted by the transport once per write call.
    pub writes: Arc<AtomicU64>,
}

/// A new link to `peer` and the transport's side of it.
pub fn new(peer: String) -> (Link, LinkIo) {
    let (queue, outgoing) = mpsc::channel(SEND_QUEUE_FRAMES);
    let (incoming, inbound) = mpsc::channel(RECEIVE_QUEUE_FRAMES);
    let writes = Arc::new(AtomicU64::new(0));
    (
        Link {
            sender: LinkSender { peer, queue },
            inbound,
            writes: writes.clone(),
        },
        LinkIo {
            outgoing,
            incoming,
            writes,
        },
    )
}

/// Names a link without keeping it open.
pub struct WeakLinkSender(mpsc::WeakSender<Bytes>);

impl WeakLinkSender {
    pub fn same_link(&self, other: &LinkSender) -> bool {
        self.0
            .upgrade()
            .is_some_and(|queue| queue.same_channel(&other.queue))
    }
}

/// The sending half of a link, shared by whoever routes to the peer.
#[derive(Clone)]
pub struct LinkSender {
    /// The peer's node id, from its hello.
    pub peer: String,
    queue: mpsc::Sender<Bytes>,
}

impl LinkSender {
    /// Queues a frame without waiting; `Full` is backpressure for the caller to act on.
    pub fn try_send(&self, frame: Bytes) -> Result<(), LinkError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(frame.len()).into());
        }
        self.queue.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LinkError::Full,
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed,
        })
    }

    /// Queues a frame, waiting while the queue is full.
    pub async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(FrameError::TooLarge(frame.len()).into());
        }
        self.queue.send(frame).await.map_err(|_| LinkError::Closed)
    }

    /// Whether the transport under the link has ended.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Whether both are halves of the same link.
    pub fn same_link(&self, other: &LinkSender) -> bool {
        self.queue.same_channel(&other.queue)
    }

    /// A handle that names the link without keeping it open: the link closes (and the
    /// peer notices) once every `LinkSender` is gone.
    pub fn downgrade(&self) -> WeakLinkSender {
        WeakLinkSender(self.queue.downgrade())
    }
}

impl Link {
    /// The peer's node id, from its hello.
    pub fn peer(&self) -> &str {
        &self.sender.peer
    }

    /// Splits the link into its sending half and the frames from the peer.
    pub fn split(self) -> (LinkSender, mpsc::Receiver<Bytes>) {
        (self.sender, self.inbound)
    }

    /// See [`LinkSender::try_send`].
    pub fn try_send(&self, frame: Bytes) -> Result<(), LinkError> {
        self.sender.try_send(frame)
    }

    /// See [`LinkSender::send`].
    pub async fn send(&self, frame: Bytes) -> Result<(), LinkError> {
        self.sender.send(frame).await
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

/// The behaviour every transport must show, run by each transport's tests.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    /// Runs every check on fresh pairs from `pair`, which returns the two ends (a to b, b to
    /// a) and whatever must stay alive while they are used (endpoints).
    pub async fn all<K, F: std::future::Future<Output = (K, Link, Link)>>(
        mut pair: impl FnMut() -> F,
    ) {
        let (_keep, ab, ba) = pair().await;
        ordered_and_coalesced(ab, ba).await;
        let (_keep, ab, ba) = pair().await;
        bounded(ab, ba).await;
        let (_keep, ab, ba) = pair().await;
        closing(ab, ba).await;
    }

    /// 10,000 frames arrive in order, in far fewer writes; the other direction works too.
    pub async fn ordered_and_coalesced(ab: Link, mut ba: Link) {
        assert_eq!((ab.peer(), ba.peer()), ("node-b", "node-a"));
        let frames = 10_000u32;
        let sender = tokio::spawn(async move {
            for i in 0..frames {
                ab.send(Bytes::from(i.to_be_bytes().to_vec()))
                    .await
                    .unwrap();
            }
            ab
        });
        for i in 0..frames {
            let frame = ba.inbound.recv().await.unwrap();
            assert_eq!(frame.as_ref(), i.to_be_bytes());
        }
        let mut ab = sender.await.unwrap();
        assert!(
            ab.writes() < frames as u64 / 2,
            "{} writes for {frames} frames",
            ab.writes()
        );
        ba.try_send(Bytes::from_static(b"back")).unwrap();
        assert_eq!(ab.inbound.recv().await.unwrap().as_ref(), b"back");
    }

    /// Oversized frames are refused; a peer that reads nothing fills the queue (`Full`).
    pub async fn bounded(ab: Link, _never_read: Link) {
        assert!(matches!(
            ab.try_send(Bytes::from(vec![0u8; FRAME_BYTES_MAX + 1])),
            Err(LinkError::Frame(FrameError::TooLarge(_)))
        ));
        let frame = Bytes::from(vec![7u8; 1024]);
        let mut queued = 0usize;
        let full = loop {
            match ab.try_send(frame.clone()) {
                Ok(()) => queued += 1,
                Err(e) => break e,
            }
            assert!(queued < 1_000_000, "the queue never filled");
            if queued % 256 == 0 {
                tokio::task::yield_now().await;
            }
        };
        assert!(matches!(full, LinkError::Full), "{full}");
    }

    /// When one side goes, the other's inbound ends and sending reports `Closed`.
    pub async fn closing(ab: Link, mut ba: Link) {
        drop(ab);
        let deadline = std::time::Duration::from_secs(5);
        let end = tokio::time::timeout(deadline, ba.inbound.recv())
            .await
            .unwrap();
        assert!(end.is_none());
        let closed = tokio::time::timeout(deadline, async {
            loop {
                match ba.try_send(Bytes::from_static(b"x")) {
                    Err(LinkError::Closed) => return,
                    _ => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "sending on a link whose peer left never reported Closed"
        );
    }
}
