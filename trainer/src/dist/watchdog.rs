//! A watchdog thread: the training loop declares each blocking operation (a collective, a data
//! fetch) with its timeout; when one runs past its deadline, the watchdog reports rank, step and
//! operation and ends the job (through the `on_timeout` action: `MPI_Abort` in `syncdiff-train`).
//!
//! A rank frozen by the kernel (SIGSTOP, a hung NFS read, a dead GPU) cannot report itself; its
//! peers wait for it in the next collective and their watchdogs fire instead.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the loop is waiting for.
#[derive(Debug, Clone)]
struct Watch {
    op: String,
    step: u64,
    started: Instant,
    timeout: Duration,
    /// Distinguishes consecutive watches of the same operation.
    id: u64,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Watch>,
    next_id: u64,
    shutdown: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// What a timeout reports: the message and the action taken.
pub type OnTimeout = Box<dyn Fn(&str) + Send>;

/// The watchdog of one rank.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

/// Ends a watch when dropped (the operation finished or failed).
#[derive(Debug)]
pub struct WatchGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WatchGuard<'_> {
    fn drop(&mut self) {
        let mut s = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if s.current.as_ref().is_some_and(|w| w.id == self.id) {
            s.current = None;
        }
    }
}

impl Watchdog {
    /// Starts the watchdog thread. `prefix` names the rank in messages (`[rank 1/6]`);
    /// `on_timeout` receives the one-line message and is expected not to return (it aborts).
    /// A thread that cannot start is an error: training never runs without hang protection.
    pub fn start(prefix: String, on_timeout: OnTimeout) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || run(&s, &prefix, &on_timeout))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Declares that the loop now waits for `op` at `step`, for at most `timeout` (zero: no
    /// limit). The watch ends when the guard drops.
    pub fn watch(&self, op: impl Into<String>, step: u64, timeout: Duration) -> WatchGuard<'_> {
        let mut s = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.next_id += 1;
        let id = s.next_id;
        s.current = (!timeout.is_zero()).then(|| Watch {
            op: op.into(),
            step,
            started: Instant::now(),
            timeout,
            id,
        });
        self.shared.wake.notify_all();
        WatchGuard {
            shared: &self.shared,
            id,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, prefix: &str, on_timeout: &OnTimeout) {
    let mut s = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if s.shutdown {
            return;
        }
        let Some(w) = s.current.clone() else {
            s = shared.wake.wait(s).unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let deadline = w.started + w.timeout;
        let now = Instant::now();
        if now < deadline {
            s = shared
                .wake
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            continue;
        }
        // Still the same watch, past its deadline.
        drop(s);
        on_timeout(&format!(
            "{prefix} watchdog: step {}: {} did not finish within {} s (another rank may be stalled, \
             dead or much slower); aborting the job",
            w.step,
            w.op,
            w.timeout.as_secs_f64()
        ));
        s = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.current.as_ref().is_some_and(|c| c.id == w.id) {
            // The action returned (tests): report each watch once.
            s.current = None;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn fires_once_naming_rank_step_and_operation() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(
            "[rank 1/2]".into(),
            Box::new(move |m| tx.send(m.to_string()).unwrap()),
        )
        .unwrap();
        {
            let _g = dog.watch("gradient all-reduce", 7, Duration::from_millis(50));
            std::thread::sleep(Duration::from_millis(300));
        }
        let m = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(
            m.starts_with(
                "[rank 1/2] watchdog: step 7: gradient all-reduce did not finish within 0.05 s"
            ),
            "{m}"
        );
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn finished_operations_do_not_fire() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(
            "[rank 0/1]".into(),
            Box::new(move |m| tx.send(m.to_string()).unwrap()),
        )
        .unwrap();
        for step in 0..20 {
            let _g = dog.watch("data fetch", step, Duration::from_millis(100));
            std::thread::sleep(Duration::from_millis(5));
        }
        // No limit at all.
        let _g = dog.watch("checksum", 20, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err());
    }
}
