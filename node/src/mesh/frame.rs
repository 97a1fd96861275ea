//! Mesh framing: each frame is a big-endian u32 length and that many bytes. A writer packs
//! every frame already queued (up to a bound) into one buffer, so a burst costs one write.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Largest frame a link accepts (an event is at most 1 MiB of data plus its envelope).
pub const FRAME_BYTES_MAX: usize = 2 << 20;
/// Most bytes packed into one write.
pub const BATCH_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit of {FRAME_BYTES_MAX}")]
    TooLarge(usize),
}

/// Appends one frame to `out`.
pub fn encode(frame: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
    if frame.len() > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(frame.len()));
    }
    out.reserve(4 + frame.len());
    out.put_u32(frame.len() as u32);
    out.extend_from_slice(frame);
    Ok(())
}

/// The length announced by a frame header.
pub fn length(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Packs `first` and then as many of `rest` as fit one batch; returns the frames packed.
pub fn pack(
    first: Bytes,
    rest: &mut impl FnMut() -> Option<Bytes>,
    out: &mut BytesMut,
) -> Result<usize, FrameError> {
    out.clear();
    encode(&first, out)?;
    let mut frames = 1;
    while out.len() < BATCH_BYTES_MAX {
        let Some(next) = rest() else { break };
        encode(&next, out)?;
        frames += 1;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_batch() {
        let mut queue: std::collections::VecDeque<Bytes> =
            (0..5).map(|i| Bytes::from(vec![i as u8; i * 10])).collect();
        let first = queue.pop_front().unwrap();
        let mut out = BytesMut::new();
        let packed = pack(first, &mut || queue.pop_front(), &mut out).unwrap();
        assert_eq!(packed, 5);
        let mut at = 0;
        for i in 0..5usize {
            let len = length(out[at..at + 4].try_into().unwrap()).unwrap();
            assert_eq!(len, i * 10);
            assert!(out[at + 4..at + 4 + len].iter().all(|b| *b == i as u8));
            at += 4 + len;
        }
        assert_eq!(at, out.len());
        assert!(length((FRAME_BYTES_MAX as u32 + 1).to_be_bytes()).is_err());
    }
}
