//! The eBPF log pump: the programs' aya-log records to the `log` crate.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::Arc,
};

use anyhow::Result;
use aya_log::EbpfLogger;

use crate::datapath::sys::{ControlTask, LentFd};

/// A task that waits on the aya-log ring buffer and forwards records to `log`.
pub(super) struct LogPump {
    logger: Arc<std::sync::Mutex<EbpfLogger<&'static dyn log::Log>>>,
    _task: ControlTask,
}

impl LogPump {
    pub(super) fn start(logger: EbpfLogger<&'static dyn log::Log>) -> Result<Self> {
        let fd = logger.as_fd().as_raw_fd();
        let logger = Arc::new(std::sync::Mutex::new(logger));
        let pumped = logger.clone();
        let task = ControlTask::start("ebpf-log", move |stop| async move {
            // SAFETY: the fd is the logger's ring buffer, owned by `pumped`, which this task
            // holds (an Arc) for longer than the registration.
            let afd = match unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(
                    LentFd(fd),
                    tokio::io::Interest::READABLE,
                )
            } {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("eBPF logs: {e}");
                    return;
                }
            };
            let flush = || pumped.lock().unwrap_or_else(|e| e.into_inner()).flush();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    ready = afd.readable() => {
                        let Ok(mut guard) = ready else { break };
                        guard.clear_ready();
                        flush();
                    }
                }
            }
            flush();
        })?;
        Ok(Self {
            logger,
            _task: task,
        })
    }

    /// Forward what the programs logged so far, now.
    pub(super) fn flush_now(&self) {
        self.logger
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        // The task is stopped (its field drops after this); what it had not read yet:
        self.flush_now();
    }
}
