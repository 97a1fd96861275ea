//! The WebSocket frames the node writes (RFC 6455, server side).
//!
//! Outgoing frames are unmasked, so one encoded frame (header and payload) is valid for
//! every subscriber: an event is encoded once and the bytes are shared. This is a leaf
//! rather than part of `edge/ws/`, because owners, the hub's callers and the routing
//! encode frames too; the reading side stays in `edge/ws/codec.rs`.

use bytes::{BufMut, Bytes, BytesMut};

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Encodes one unmasked, final frame.
fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut out = BytesMut::with_capacity(len + 10);
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// A text frame carrying `text`.
pub fn text_frame(text: &str) -> Bytes {
    encode(OP_TEXT, text.as_bytes())
}

pub fn pong_frame(payload: &[u8]) -> Bytes {
    encode(OP_PONG, payload)
}

/// A close frame; the reason is cut to fit a control frame (125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len().min(123));
    payload.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_length_forms() {
        assert_eq!(&text_frame("hi")[..], &[0x81, 2, b'h', b'i']);
        let f = text_frame(&"a".repeat(200));
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        let f = text_frame(&"a".repeat(70_000));
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_000 + 10);
        let c = close_frame(4201, "Pong reply not received");
        assert_eq!(&c[..4], &[0x88, 25, 0x10, 0x69]);
    }
}
