//! Latency without `tc netem`, for kernels built without it (CONFIG_NET_SCH_NETEM unset):
//! relays in the calling process that hold every datagram (UDP, the QUIC mesh) or chunk
//! (TCP: the control plane, the gRPC mesh) for a fixed delay in each direction and drop a
//! share of datagrams. One relay per path from one host to one service of another; it
//! listens on the destination's alias address and sends from the source's, so that a cut
//! between the two hosts (iptables on their source addresses) stops it as it stops the
//! direct path. `latency.rs` decides which paths get one and redirects them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Error;

/// The relays of one harness; stopped on drop.
#[derive(Default)]
pub struct Relays {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relays {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

type Datagram = (Instant, Arc<UdpSocket>, Vec<u8>, SocketAddr);

/// Sends each datagram at its time (all have the same delay, so arrival order is
/// departure order).
fn delay_line(mut queue: mpsc::UnboundedReceiver<Datagram>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((at, socket, data, to)) = queue.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = socket.send_to(&data, to).await;
        }
    })
}

impl Relays {
    /// A UDP relay on `ip` (a free port) to `target`, sending from `source`: one upstream
    /// socket per client address, `delay` each way, `loss` (0..1) of datagrams dropped
    /// each way.
    pub async fn udp(
        &mut self,
        ip: IpAddr,
        source: IpAddr,
        target: SocketAddr,
        delay: Duration,
        loss: f64,
    ) -> Result<SocketAddr, Error> {
        let bind = |e: std::io::Error| Error::Setup(format!("binding a UDP relay on {ip}: {e}"));
        let front = Arc::new(UdpSocket::bind((ip, 0)).await.map_err(bind)?);
        let addr = front.local_addr().map_err(bind)?;
        let (line, queue) = mpsc::unbounded_channel::<Datagram>();
        self.tasks.push(delay_line(queue));
        let task = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut buf = vec![0u8; 65_536];
            let mut backs: Vec<JoinHandle<()>> = Vec::new();
            loop {
                let Ok((n, from)) = front.recv_from(&mut buf).await else {
                    continue;
                };
                if rand::random::<f64>() < loss {
                    continue;
                }
                let upstream = match upstreams.get(&from) {
                    Some(u) => u.clone(),
                    None => {
                        let Ok(socket) = UdpSocket::bind((source, 0)).await else {
                            continue;
                        };
                        let socket = Arc::new(socket);
                        upstreams.insert(from, socket.clone());
                        // Answers from the target go back to `from` through the front.
                        let (back, front, line) = (socket.clone(), front.clone(), line.clone());
                        backs.push(tokio::spawn(async move {
                            let mut buf = vec![0u8; 65_536];
                            while let Ok((n, _)) = back.recv_from(&mut buf).await {
                                if rand::random::<f64>() < loss {
                                    continue;
                                }
                                let at = Instant::now() + delay;
                                if line
                                    .send((at, front.clone(), buf[..n].to_vec(), from))
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }));
                        socket
                    }
                };
                let at = Instant::now() + delay;
                if line
                    .send((at, upstream, buf[..n].to_vec(), target))
                    .is_err()
                {
                    break;
                }
            }
            for back in backs {
                back.abort();
            }
        });
        self.tasks.push(task);
        Ok(addr)
    }

    /// A TCP relay on `ip` (a free port) to `target`, connecting from `source`, `delay`
    /// each way.
    pub async fn tcp(
        &mut self,
        ip: IpAddr,
        source: IpAddr,
        target: SocketAddr,
        delay: Duration,
    ) -> Result<SocketAddr, Error> {
        let bind = |e: std::io::Error| Error::Setup(format!("binding a TCP relay on {ip}: {e}"));
        let listener = TcpListener::bind((ip, 0)).await.map_err(bind)?;
        let addr = listener.local_addr().map_err(bind)?;
        let task = tokio::spawn(async move {
            let mut conns: Vec<JoinHandle<()>> = Vec::new();
            while let Ok((inbound, _)) = listener.accept().await {
                conns.retain(|c| !c.is_finished());
                conns.push(tokio::spawn(async move {
                    let Ok(outbound) = connect_from(source, target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    let up = tokio::spawn(pipe(in_read, out_write, delay));
                    pipe(out_read, in_write, delay).await;
                    up.abort();
                }));
            }
            for c in conns {
                c.abort();
            }
        });
        self.tasks.push(task);
        Ok(addr)
    }
}

async fn connect_from(
    source: IpAddr,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

/// Copies `from` to `to`, each chunk `delay` after it was read; closes `to` after `from`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}
