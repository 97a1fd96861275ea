//! The task of one WebSocket connection: reads client frames into the session, writes the
//! connection's queue to the socket several frames per system call, pings a silent client
//! and closes one that does not answer.
//!
//! Memory is deliberate: the read buffer exists only while a frame is incomplete, the send
//! queue only while it holds frames, and there is one task per connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relaymesh_proto::codes::{ws_close, ErrorCode};
use relaymesh_proto::frame;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::edge::ws::codec::{CodecError, Message, MessageReader};
use crate::edge::ws::session::Session;
use crate::frames;
use crate::outbox::{Close, Drained};
use crate::shared::Shared;
use crate::telemetry;

/// Bytes read from one socket before the task yields to others.
const READ_BUDGET_BYTES: usize = 64 * 1024;

/// How long a closing connection may take to flush its last frames and see the client go.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

enum Read {
    /// Bytes arrived.
    Data,
    /// Nothing to read right now.
    Empty,
    Eof,
}

/// Reads what the socket has, up to a budget, into the reader. The stack buffer lives only
/// in this synchronous function, never in the connection task's state.
fn read_available(stream: &TcpStream, reader: &mut MessageReader) -> io::Result<Read> {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    while total < READ_BUDGET_BYTES {
        match stream.try_read(&mut buf) {
            Ok(0) => return Ok(Read::Eof),
            Ok(n) => {
                reader.extend(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(if total > 0 { Read::Data } else { Read::Empty })
}

/// How the loop ended.
enum End {
    /// The socket is gone; nothing more can be written.
    Gone,
    /// Close with this code after writing what is queued.
    Close(Close),
    /// The client sent a close frame; answer it.
    ClientClosed(u16),
}

pub async fn run(stream: TcpStream, leftover: Bytes, mut session: Session, shared: Arc<Shared>) {
    let conn = session.conn().clone();
    let activity = Duration::from_secs(shared.config.activity_timeout_secs);
    let pong_wait = Duration::from_secs(shared.config.pong_timeout_secs);
    let message_max = shared.config.client_message_bytes_max;
    let mut reader = MessageReader::default();
    reader.extend(&leftover);
    drop(leftover);
    let mut last_seen = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    // Apps with "authorized connections" close sockets that neither sign in nor join a
    // private or presence channel in time.
    let mut authorize_by = session
        .app()
        .config()
        .authorization_timeout_secs
        .map(|secs| last_seen + Duration::from_secs(secs));
    let timer = tokio::time::sleep_until(
        authorize_by.map_or(last_seen + activity, |d| d.min(last_seen + activity)),
    );
    tokio::pin!(timer);
    let mut write_blocked = false;

    let end = 'session: loop {
        loop {
            match reader.next_message(message_max) {
                Ok(Some(Message::Text(text))) => session.on_text(&text),
                Ok(Some(Message::Binary)) => {
                    telemetry::count_error(None, "binary_frame");
                    conn.push_text(&frame::error(None, "Binary frames are not supported", None));
                }
                Ok(Some(Message::Ping(payload))) => {
                    conn.push(frames::pong_frame(&payload));
                }
                Ok(Some(Message::Pong)) => {}
                Ok(Some(Message::Close(code))) => break 'session End::ClientClosed(code),
                Ok(None) => break,
                Err(e) => break 'session End::Close(codec_close(&e)),
            }
        }
        if !write_blocked {
            match conn.drain_into(&stream) {
                Ok(Drained::Empty) => {}
                Ok(Drained::Blocked) => write_blocked = true,
                Ok(Drained::Close(close)) => break End::Close(close),
                Err(_) => break End::Gone,
            }
        }
        tokio::select! {
            biased;
            ready = stream.readable() => {
                if ready.is_err() {
                    break End::Gone;
                }
                match read_available(&stream, &mut reader) {
                    Ok(Read::Data) => {
                        last_seen = Instant::now();
                        ping_sent = None;
                    }
                    Ok(Read::Empty) => {}
                    Ok(Read::Eof) | Err(_) => break End::Gone,
                }
            }
            ready = stream.writable(), if write_blocked => {
                if ready.is_err() {
                    break End::Gone;
                }
                write_blocked = false;
            }
            _ = conn.woken() => {
                // While the socket is blocked only a close wakes the task (a full queue is
                // a close): a client that stopped reading must not keep its slot.
                if write_blocked {
                    if let Some(close) = conn.closing() {
                        break End::Close(close);
                    }
                }
            }
            _ = &mut timer => {
                let now = Instant::now();
                if let Some(deadline) = authorize_by {
                    if session.is_authorized() {
                        authorize_by = None;
                    } else if now >= deadline {
                        telemetry::count_error(Some(ErrorCode::Unauthorized.as_u16()), "authorization_timeout");
                        conn.close(ErrorCode::Unauthorized.as_u16(), "Connection not authorized within timeout");
                        timer.as_mut().reset(now + CLOSE_LINGER);
                        continue;
                    }
                }
                let next = match ping_sent {
                    Some(sent) if now >= sent + pong_wait => {
                        telemetry::count_error(Some(ErrorCode::PongNotReceived.as_u16()), "pong_timeout");
                        conn.close(ErrorCode::PongNotReceived.as_u16(), "Pong reply not received");
                        now + CLOSE_LINGER
                    }
                    Some(sent) => sent + pong_wait,
                    None if now >= last_seen + activity => {
                        conn.push_text(frame::PING);
                        ping_sent = Some(now);
                        now + pong_wait
                    }
                    None => last_seen + activity,
                };
                timer.as_mut().reset(authorize_by.map_or(next, |d| d.min(next)));
            }
        }
    };
    session.end();
    // Boxed: the closing state is needed once, so it stays out of the idle task's size.
    Box::pin(finish(stream, end)).await;
}

fn codec_close(e: &CodecError) -> Close {
    telemetry::count_error(Some(e.close_code()), e.reason());
    Close {
        code: e.close_code(),
        reason: e.reason(),
    }
}

/// Writes the last frames (a `pusher:error` for Pusher codes, then the close frame) and
/// waits briefly for the client to close, so it reads the close before the socket goes.
async fn finish(mut stream: TcpStream, end: End) {
    let (code, reason) = match end {
        End::Gone => return,
        End::Close(close) => (close.code, close.reason),
        End::ClientClosed(code) => {
            let code = if code == 1005 || code < 1000 {
                ws_close::NORMAL
            } else {
                code
            };
            (code, "")
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, async {
        if code >= 4000 {
            let error = frame::error(Some(code), reason, None);
            stream.write_all(&frames::text_frame(&error)).await?;
        }
        stream.write_all(&frames::close_frame(code, reason)).await?;
        stream.shutdown().await?;
        // Read until the client closes its side, discarding what it still sends.
        let mut sink = [0u8; 512];
        loop {
            stream.readable().await?;
            match stream.try_read(&mut sink) {
                Ok(0) => return Ok::<(), io::Error>(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await;
}

/// Refuses a connection during the handshake: a `pusher:error` first, then the close (§2.2).
pub async fn refuse(stream: TcpStream, code: ErrorCode, message: &'static str) {
    telemetry::count_error(Some(code.as_u16()), "connection_refused");
    let close = Close {
        code: code.as_u16(),
        reason: message,
    };
    Box::pin(finish(stream, End::Close(close))).await;
}
