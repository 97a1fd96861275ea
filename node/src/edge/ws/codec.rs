//! RFC 6455 framing, server side: reading what clients send. (What the node writes is
//! encoded in `frames.rs`.)
//!
//! Incoming frames are parsed from a buffer that exists only while a frame is incomplete,
//! which keeps an idle connection's memory at a few hundred bytes.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use relaymesh_proto::codes::ws_close;

use crate::frames::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT};

/// A complete message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close code (1005 when it sent none).
    Close(u16),
}

/// A framing violation; the connection is closed with [`CodecError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("message of {0} bytes is over the limit of {1}")]
    TooBig(u64, usize),
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
}

impl CodecError {
    pub fn close_code(&self) -> u16 {
        match self {
            CodecError::Protocol(_) => ws_close::PROTOCOL_ERROR,
            CodecError::TooBig(..) => ws_close::MESSAGE_TOO_BIG,
            CodecError::InvalidUtf8 => ws_close::INVALID_PAYLOAD,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            CodecError::Protocol(_) => "protocol_error",
            CodecError::TooBig(..) => "message_too_big",
            CodecError::InvalidUtf8 => "invalid_utf8",
        }
    }
}

/// Reassembles client messages from the bytes read off the socket.
#[derive(Debug, Default)]
pub struct MessageReader {
    /// Bytes of frames not yet complete; empty (unallocated) between frames.
    buf: BytesMut,
    /// A fragmented message in progress: its opcode and the payload so far.
    fragments: Option<(u8, Vec<u8>)>,
}

impl MessageReader {
    /// Appends bytes read from the socket.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Whether no partial frame or message is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.fragments.is_none()
    }

    /// The next complete message, or `None` when more bytes are needed.
    pub fn next_message(&mut self, max_bytes: usize) -> Result<Option<Message>, CodecError> {
        loop {
            let Some((fin, opcode, payload)) = self.next_frame(max_bytes)? else {
                if self.buf.is_empty() {
                    // Release the buffer's allocation while the connection is idle.
                    self.buf = BytesMut::new();
                }
                return Ok(None);
            };
            match opcode {
                OP_CLOSE => {
                    let code = if payload.len() >= 2 {
                        u16::from_be_bytes([payload[0], payload[1]])
                    } else {
                        1005
                    };
                    return Ok(Some(Message::Close(code)));
                }
                OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_TEXT | OP_BINARY => {
                    if self.fragments.is_some() {
                        return Err(CodecError::Protocol("new message inside a fragmented one"));
                    }
                    if fin {
                        return finish(opcode, payload.to_vec()).map(Some);
                    }
                    self.fragments = Some((opcode, payload.to_vec()));
                }
                OP_CONTINUATION => {
                    let Some((first, mut body)) = self.fragments.take() else {
                        return Err(CodecError::Protocol("continuation without a first frame"));
                    };
                    if body.len() + payload.len() > max_bytes {
                        return Err(CodecError::TooBig(
                            (body.len() + payload.len()) as u64,
                            max_bytes,
                        ));
                    }
                    body.extend_from_slice(&payload);
                    if fin {
                        return finish(first, body).map(Some);
                    }
                    self.fragments = Some((first, body));
                }
                _ => return Err(CodecError::Protocol("unknown opcode")),
            }
        }
    }

    /// Parses one frame off the buffer and unmasks its payload.
    fn next_frame(&mut self, max_bytes: usize) -> Result<Option<(bool, u8, BytesMut)>, CodecError> {
        let buf = &self.buf[..];
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        if b0 & 0x70 != 0 {
            return Err(CodecError::Protocol("reserved bits set"));
        }
        let fin = b0 & 0x80 != 0;
        let opcode = b0 & 0x0F;
        if b1 & 0x80 == 0 {
            return Err(CodecError::Protocol("client frames must be masked"));
        }
        let (len, mut header) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (n as u64, 2),
        };
        if opcode >= 0x8 && (!fin || len > 125) {
            return Err(CodecError::Protocol(
                "control frames must be final and short",
            ));
        }
        if len > max_bytes as u64 {
            return Err(CodecError::TooBig(len, max_bytes));
        }
        if buf.len() < header + 4 {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[header..header + 4]);
        header += 4;
        let total = header + len as usize;
        if buf.len() < total {
            self.buf.reserve(total - buf.len());
            return Ok(None);
        }
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len as usize);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        Ok(Some((fin, opcode, payload)))
    }
}

fn finish(opcode: u8, payload: Vec<u8>) -> Result<Message, CodecError> {
    if opcode == OP_BINARY {
        return Ok(Message::Binary);
    }
    String::from_utf8(payload)
        .map(Message::Text)
        .map_err(|_| CodecError::InvalidUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut out = vec![first];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        out
    }

    #[test]
    fn reads_messages_split_anywhere() {
        let mut wire = masked(0x81, b"hello");
        wire.extend(masked(0x01, b"wor"));
        wire.extend(masked(0x89, b"p"));
        wire.extend(masked(0x80, b"ld"));
        wire.extend(masked(0x88, &1000u16.to_be_bytes()));
        let big = "x".repeat(300);
        wire.extend(masked(0x81, big.as_bytes()));
        for split in [1usize, 3, 7, wire.len()] {
            let mut reader = MessageReader::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(split) {
                reader.extend(chunk);
                while let Some(m) = reader.next_message(1024).unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(
                got,
                vec![
                    Message::Text("hello".into()),
                    Message::Ping(Bytes::from_static(b"p")),
                    Message::Text("world".into()),
                    Message::Close(1000),
                    Message::Text(big.clone()),
                ]
            );
            assert!(reader.is_idle());
        }
    }

    #[test]
    fn rejects_bad_frames() {
        let mut r = MessageReader::default();
        r.extend(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(r.next_message(1024).unwrap_err().close_code(), 1002);
        let mut r = MessageReader::default();
        r.extend(&masked(0x81, &[0xff, 0xfe]));
        assert_eq!(r.next_message(1024).unwrap_err(), CodecError::InvalidUtf8);
        let mut r = MessageReader::default();
        r.extend(&masked(0x81, &[b'a'; 2000])[..8]);
        assert_eq!(r.next_message(1024).unwrap_err().close_code(), 1009);
        let mut r = MessageReader::default();
        r.extend(&masked(0x80, b"x"));
        assert!(matches!(r.next_message(1024), Err(CodecError::Protocol(_))));
        let mut r = MessageReader::default();
        r.extend(&masked(0x82, b"bin"));
        assert_eq!(r.next_message(1024).unwrap(), Some(Message::Binary));
    }
}
