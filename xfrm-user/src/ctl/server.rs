//! The daemon's end of the control socket, on the control plane's tokio runtime: one task
//! accepts, one task per connection reads requests, hands each to the run loop (which owns
//! the tables and the XDP maps) and sends the reply back once the change is live. Requests
//! of one connection are answered in order; the run loop takes them one at a time.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
};

use tokio::{
    io::unix::AsyncFd,
    sync::{broadcast, mpsc, oneshot},
};

use super::{protocol, render::Show, socket};
use crate::config::request::{parse_request, Request};

/// A request for the run loop, and where its reply goes.
pub struct Call {
    pub request: Request,
    /// Its words as received (the state file keeps those of an add or update; wiped when
    /// dropped: they may hold a key).
    pub text: zeroize::Zeroizing<String>,
    pub show: Show,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What the run loop keeps: the requests to execute and the sender of `monitor` events.
pub struct Server {
    pub calls: mpsc::Receiver<Call>,
    pub events: broadcast::Sender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Events a slow `monitor` client may fall behind by before it is told it lost some.
const EVENT_BACKLOG: usize = 4096;

impl Server {
    /// Listens at `path`; must be called inside the runtime.
    pub fn start(path: &Path) -> std::io::Result<Self> {
        let listener = register(socket::listen(path)?)?;
        let (tx, calls) = mpsc::channel(64);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let ev = events.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok(mut g) = listener.readable().await else {
                    return;
                };
                match g.try_io(|l| socket::accept(l.get_ref().as_raw_fd())) {
                    Ok(Ok((fd, uid))) => {
                        let Ok(conn) = register(fd) else { continue };
                        tokio::spawn(serve(conn, uid, tx.clone(), ev.clone()));
                    }
                    Ok(Err(e)) => log::warn!("control socket: accept: {e}"),
                    Err(_would_block) => {}
                }
            }
        });
        Ok(Self {
            calls,
            events,
            task,
        })
    }
}

/// Registers a socket this module owns with the reactor.
fn register(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd moves into the AsyncFd, which deregisters it before closing it;
    // nothing else holds the descriptor.
    unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)
}

async fn recv(conn: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut g = conn.readable().await?;
        if let Ok(r) = g.try_io(|c| socket::recv(c.get_ref().as_raw_fd(), buf)) {
            return r;
        }
    }
}

async fn send(conn: &AsyncFd<OwnedFd>, d: &[u8]) -> std::io::Result<()> {
    loop {
        let mut g = conn.writable().await?;
        if let Ok(r) = g.try_io(|c| socket::send(c.get_ref().as_raw_fd(), d)) {
            return r;
        }
    }
}

async fn send_reply(conn: &AsyncFd<OwnedFd>, r: &Result<String, String>) -> std::io::Result<()> {
    for d in protocol::reply(r) {
        send(conn, &d).await?;
    }
    Ok(())
}

async fn serve(
    conn: AsyncFd<OwnedFd>,
    uid: u32,
    calls: mpsc::Sender<Call>,
    events: broadcast::Sender<String>,
) {
    // One byte more than the limit, so that the real length (MSG_TRUNC) tells an oversized
    // request even where the kernel would not report it.
    let mut buf = vec![0u8; protocol::MAX_REQUEST + 1];
    if uid != 0 {
        // Its first request is answered with the reason (not read), then it is cut off:
        // a client that is told before it sends would only see a broken pipe.
        if matches!(recv(&conn, &mut buf).await, Ok(n) if n > 0) {
            let e = format!(
                "permission denied: the control socket takes requests from root only (peer uid {uid})"
            );
            let _ = send_reply(&conn, &Err(e)).await;
        }
        return;
    }
    loop {
        let n = match recv(&conn, &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = match protocol::parse(&buf, n) {
            Err(e) => Err(e),
            Ok(m) => match parse_request(m.command, "request") {
                Err(e) => Err(e.to_string()),
                Ok(Request::Monitor) => {
                    let rx = events.subscribe();
                    if send_reply(&conn, &Ok(String::new())).await.is_ok() {
                        monitor(&conn, rx, &mut buf).await;
                    }
                    return;
                }
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    let call = Call {
                        request,
                        text: zeroize::Zeroizing::new(m.command.to_string()),
                        show: m.show,
                        reply: tx,
                    };
                    if calls.send(call).await.is_err() {
                        return;
                    }
                    rx.await
                        .unwrap_or_else(|_| Err("the daemon is stopping".to_string()))
                }
            },
        };
        if send_reply(&conn, &reply).await.is_err() {
            return;
        }
    }
}

/// A `monitor` connection: every event, until the client goes.
async fn monitor(conn: &AsyncFd<OwnedFd>, mut rx: broadcast::Receiver<String>, buf: &mut [u8]) {
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let d = match ev {
                    Ok(text) => protocol::event(&text),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        protocol::event(&format!("Lost {n} events (the monitor read too slowly)\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if send(conn, &d).await.is_err() {
                    return;
                }
            }
            r = recv(conn, buf) => {
                match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let e = Err("monitor: this connection only reports events".to_string());
                        if send_reply(conn, &e).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}
