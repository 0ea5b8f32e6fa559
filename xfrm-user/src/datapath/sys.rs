//! Small pieces the datapath's modules share: sockets and their int options, an fd lent to
//! tokio's readiness, and where a control task runs.

use std::{
    future::Future,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::Arc,
    thread::JoinHandle,
};

use tokio::sync::Notify;

/// socket(2), owned.
pub fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, ty, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// setsockopt(2) of an int option.
pub fn setsockopt_int(fd: &OwnedFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: an int option of a valid socket.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An fd registered with tokio's reactor by number; the descriptor stays owned elsewhere
/// (see the SAFETY comments where one is made).
pub struct LentFd(pub RawFd);

impl AsRawFd for LentFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// A control task (neighbour cache, log pump): on the tokio runtime current when it is
/// started (the gateway's control plane), or, outside one (tests, tools), on a thread of
/// its own with a runtime of its own. It ends at [`ControlTask::stop`] or on drop.
pub struct ControlTask {
    stop: Arc<Notify>,
    host: Option<Host>,
}

enum Host {
    Task(tokio::task::JoinHandle<()>),
    Thread(JoinHandle<()>),
}

impl ControlTask {
    /// Starts `make(stop)`: the future must end once `stop` is notified.
    pub fn start<F>(name: &str, make: impl FnOnce(Arc<Notify>) -> F) -> io::Result<Self>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = Arc::new(Notify::new());
        let run = make(stop.clone());
        let host = match tokio::runtime::Handle::try_current() {
            Ok(h) => Host::Task(h.spawn(run)),
            Err(_) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                Host::Thread(
                    std::thread::Builder::new()
                        .name(name.into())
                        .spawn(move || rt.block_on(run))?,
                )
            }
        };
        Ok(Self {
            stop,
            host: Some(host),
        })
    }

    /// Asks the task to end; a thread is joined, a task on a runtime that may not run again
    /// is aborted.
    pub fn stop(&mut self) {
        // A permit if the task is not waiting right now: it stops at its next turn.
        self.stop.notify_one();
        match self.host.take() {
            Some(Host::Thread(t)) => {
                let _ = t.join();
            }
            Some(Host::Task(t)) => t.abort(),
            None => {}
        }
    }
}

impl Drop for ControlTask {
    fn drop(&mut self) {
        self.stop();
    }
}
