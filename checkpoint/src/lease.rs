//! One writer per checkpoint URL. A training job holds `lease.json` beside its checkpoints for
//! its whole life: created with the store's create-if-absent write, renewed by rank 0 on a
//! heartbeat with compare-and-swap, released (deleted) at a clean exit. A start that finds a
//! live lease of another job refuses, naming the holder (or waits `checkpoint.lease.wait_s` for
//! it to expire); an expired lease is taken over, as is one whose holder was a process on this
//! host that is gone (a crash, a kill), and a live one with `--take-lease`. A
//! holder whose lease was taken over saves nothing more: every save checks the lease before its
//! manifest is written (fencing), and the heartbeat asks the job to stop.
//!
//! Read-only commands (`syncdiff ckpt ...`, generation from a checkpoint) never touch it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use syncdiff_model::config::LeaseConfig;

use super::format::{now_unix, utc_stamp};
use super::{CkptError, Store};
use syncdiff_runtime::objstore::{Conditional, Version};

/// The lease object's name under `checkpoint.url`.
pub const LEASE: &str = "lease.json";

/// Who holds a lease (the content of `lease.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// This holding's random token (what fencing compares).
    pub token: String,
    /// The run id, once the job knows it (after resuming or starting a run).
    pub run: Option<String>,
    /// Host name.
    pub host: String,
    /// Process id of rank 0.
    pub pid: u32,
    /// The scheduler's job id (SLURM_JOB_ID, with SLURM_ARRAY_TASK_ID), when there is one.
    pub job: Option<String>,
    /// When the lease was taken (Unix seconds).
    pub started_unix: u64,
    /// Its last renewal (Unix seconds).
    pub renewed_unix: u64,
    /// Expiry after the last renewal, in seconds.
    pub expire_s: u64,
}

impl Holder {
    fn new(expire_s: u64) -> Self {
        let now = now_unix();
        let job = std::env::var("SLURM_JOB_ID").ok().map(|j| {
            match std::env::var("SLURM_ARRAY_TASK_ID") {
                Ok(t) => format!("{j}_{t}"),
                Err(_) => j,
            }
        });
        Self {
            token: super::new_run_id(),
            run: None,
            host: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown host".into()),
            pid: std::process::id(),
            job,
            started_unix: now,
            renewed_unix: now,
            expire_s,
        }
    }

    /// Seconds since the last renewal (0 when the clock is behind the holder's).
    pub fn age_s(&self) -> u64 {
        now_unix().saturating_sub(self.renewed_unix)
    }

    /// Whether the lease is past its expiry.
    pub fn expired(&self) -> bool {
        self.age_s() > self.expire_s
    }

    /// "run R, host H, pid P, job J, since T, last renewed N s ago".
    pub fn describe(&self) -> String {
        format!(
            "run {}, host {}, pid {}{}, holding since {}, last renewed {} s ago (expires after {} s)",
            self.run.as_deref().unwrap_or("(not started yet)"),
            self.host,
            self.pid,
            self.job
                .as_ref()
                .map(|j| format!(", job {j}"))
                .unwrap_or_default(),
            utc_stamp(self.started_unix),
            self.age_s(),
            self.expire_s
        )
    }
}

/// What a start does with a live lease of another job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// Wait up to `checkpoint.lease.wait_s` for it to expire, then refuse.
    Never,
    /// Take it over now (`--take-lease`).
    Now,
}

struct State {
    me: Holder,
    version: Version,
    /// Set when the lease is found lost: who holds it now.
    lost: Option<String>,
}

/// A held lease. Rank 0 holds it; the heartbeat runs until [`Lease::release`] or drop.
pub struct Lease {
    store: Arc<Store>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// `state.lost.is_some()`, readable every step without the mutex, which a renewal holds for
    /// the length of its request.
    lost_flag: Arc<AtomicBool>,
    heartbeat: Mutex<Option<std::thread::JoinHandle<()>>>,
    released: AtomicBool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("url", &self.store.display(LEASE))
            .finish_non_exhaustive()
    }
}

fn held(url: &str, holder: &Holder, waited: Duration) -> CkptError {
    CkptError::LeaseHeld {
        url: url.to_string(),
        message: format!(
            "another job holds the writer lease ({}){}; two jobs on one checkpoint.url would \
             overwrite and delete each other's checkpoints. If that job is gone (killed), wait \
             for the lease to expire or set checkpoint.lease.wait_s; if it must stop writing \
             here, start with --take-lease; or use another checkpoint.url",
            holder.describe(),
            if waited.is_zero() {
                String::new()
            } else {
                format!(
                    "; waited {:.0} s (checkpoint.lease.wait_s)",
                    waited.as_secs_f64()
                )
            }
        ),
    }
}

fn parse(url: &str, bytes: &[u8]) -> Result<Holder, CkptError> {
    serde_json::from_slice(bytes).map_err(|e| CkptError::LeaseHeld {
        url: url.to_string(),
        message: format!(
            "unreadable ({e}); if no job trains here, delete it, or start with --take-lease"
        ),
    })
}

impl Lease {
    /// Takes the lease on `store` (rank 0, before anything is resumed or saved). `say` reports
    /// a takeover.
    pub fn acquire(
        store: Arc<Store>,
        cfg: &LeaseConfig,
        takeover: Takeover,
        say: &dyn Fn(&str),
    ) -> Result<Self, CkptError> {
        let url = store.display(LEASE);
        let t0 = Instant::now();
        let wait = Duration::from_secs(cfg.wait_s);
        let mut me = Holder::new(cfg.expire_s);
        let mut said_waiting = false;
        loop {
            me.renewed_unix = now_unix();
            let bytes = serde_json::to_vec_pretty(&me).map_err(|e| CkptError::Io {
                path: url.clone(),
                message: e.to_string(),
            })?;
            if let Conditional::Written(version) = store.put_conditional(LEASE, &bytes, None)? {
                return Ok(Self::held(store, me, version, cfg));
            }
            let Some((current, version)) = store.get_versioned(LEASE)? else {
                continue; // released between the two requests: try to create it again
            };
            let holder = parse(&url, &current)?;
            let why = if holder.expired() {
                Some("expired")
            } else if holder.host == me.host && !process_alive(holder.pid) {
                Some("its process on this host is gone")
            } else if takeover == Takeover::Now {
                Some("--take-lease")
            } else {
                None
            };
            if let Some(why) = why {
                if let Conditional::Written(v) =
                    store.put_conditional(LEASE, &bytes, Some(&version))?
                {
                    say(&format!(
                        "took over the writer lease {url} ({why}) from {}",
                        holder.describe()
                    ));
                    return Ok(Self::held(store, me, v, cfg));
                }
                continue; // someone else wrote it meanwhile: look again
            }
            if t0.elapsed() >= wait {
                return Err(held(&url, &holder, t0.elapsed()));
            }
            if !said_waiting {
                say(&format!(
                    "waiting up to {} s for the writer lease {url} to expire ({})",
                    cfg.wait_s,
                    holder.describe()
                ));
                said_waiting = true;
            }
            std::thread::sleep(Duration::from_secs(1).min(wait.saturating_sub(t0.elapsed())));
        }
    }

    fn held(store: Arc<Store>, me: Holder, version: Version, cfg: &LeaseConfig) -> Self {
        let state = Arc::new(Mutex::new(State {
            me,
            version,
            lost: None,
        }));
        let (stop, lost_flag) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let every = Duration::from_secs(cfg.renew_s);
        let heartbeat = {
            let (store, state, stop, lost_flag) = (
                store.clone(),
                state.clone(),
                stop.clone(),
                lost_flag.clone(),
            );
            std::thread::Builder::new()
                .name("lease-heartbeat".into())
                .spawn(move || {
                    let mut next = Instant::now() + every;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(200));
                        if Instant::now() < next {
                            continue;
                        }
                        next = Instant::now() + every;
                        match renew(&store, &state, None) {
                            Ok(()) => {}
                            Err(CkptError::LeaseLost { message, .. }) => {
                                eprintln!("error: {}: {message}", store.display(LEASE));
                                lost_flag.store(true, Ordering::Relaxed);
                                return;
                            }
                            // A failed renewal is retried at the next beat; the lease expires
                            // only after several.
                            Err(e) => eprintln!("warning: renewing the writer lease: {e}"),
                        }
                    }
                })
                .ok()
        };
        Self {
            store,
            state,
            stop,
            lost_flag,
            heartbeat: Mutex::new(heartbeat),
            released: AtomicBool::new(false),
        }
    }

    /// Records the run id in the lease (renewing it).
    pub fn set_run(&self, run: &str) -> Result<(), CkptError> {
        renew(&self.store, &self.state, Some(run))
    }

    /// Whether the heartbeat found the lease taken over (the job should stop).
    pub fn lost(&self) -> bool {
        self.lost_flag.load(Ordering::Relaxed)
    }

    /// Fencing: succeeds only while this job still holds the lease (read from the store now).
    pub fn check(&self) -> Result<(), CkptError> {
        let url = self.store.display(LEASE);
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(by) = &s.lost {
            return Err(lost(&url, by));
        }
        let now = self.store.get_versioned(LEASE)?;
        match now.as_ref().map(|(b, _)| parse(&url, b)).transpose()? {
            Some(h) if h.token == s.me.token => return Ok(()),
            Some(h) => {
                let by = h.describe();
                s.lost = Some(by.clone());
                self.lost_flag.store(true, Ordering::Relaxed);
                return Err(lost(&url, &by));
            }
            None => {}
        }
        // The lease vanished (a store that lost it, a hand that deleted it): take it again as a
        // renewal does, if nobody else did meanwhile.
        drop(s);
        renew(&self.store, &self.state, None).inspect_err(|e| {
            if matches!(e, CkptError::LeaseLost { .. }) {
                self.lost_flag.store(true, Ordering::Relaxed);
            }
        })
    }

    /// Stops the heartbeat and deletes the lease if this job still holds it (a clean exit: the
    /// next job, e.g. a requeue, starts at once).
    pub fn release(&self) -> Result<(), CkptError> {
        if self.released.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.stop_heartbeat();
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.lost.is_none() {
            self.store.delete_if(LEASE, &s.version)?;
        }
        Ok(())
    }

    fn stop_heartbeat(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let h = self
            .heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = h {
            let _ = h.join();
        }
    }
}

impl Drop for Lease {
    /// A job that ends through an error still gives its lease back: this process, the only
    /// writer, saves nothing more (a save still in flight finds the lease gone before its
    /// manifest). Only a process that is killed leaves it behind, to expire.
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            eprintln!("warning: giving back the writer lease: {e}");
        }
    }
}

/// Whether a process with this id runs on this host (`kill(pid, 0)`: only "no such process"
/// counts as gone).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn lost(url: &str, by: &str) -> CkptError {
    CkptError::LeaseLost {
        url: url.to_string(),
        message: format!(
            "this job lost the writer lease; it is held by {by}. Nothing more is saved by this job"
        ),
    }
}

/// One renewal: compare-and-swap of the lease with a new renewal time (and run id).
fn renew(store: &Store, state: &Mutex<State>, run: Option<&str>) -> Result<(), CkptError> {
    let url = store.display(LEASE);
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(by) = &s.lost {
        return Err(lost(&url, by));
    }
    let mut next = s.me.clone();
    next.renewed_unix = now_unix();
    if let Some(r) = run {
        next.run = Some(r.to_string());
    }
    let bytes = serde_json::to_vec_pretty(&next).map_err(|e| CkptError::Io {
        path: url.clone(),
        message: e.to_string(),
    })?;
    match store.put_conditional(LEASE, &bytes, Some(&s.version))? {
        Conditional::Written(v) => {
            s.me = next;
            s.version = v;
            Ok(())
        }
        Conditional::Refused => {
            // A retried request whose first attempt went through looks refused: the store
            // then holds exactly what was sent.
            match store.get_versioned(LEASE)? {
                Some((b, v)) if b == bytes => {
                    s.me = next;
                    s.version = v;
                    Ok(())
                }
                Some((b, _)) => {
                    let by = parse(&url, &b).map_or_else(|e| e.to_string(), |h| h.describe());
                    s.lost = Some(by.clone());
                    Err(lost(&url, &by))
                }
                // Gone (a store restarted without its data, a hand that deleted it): nobody
                // else holds it, so take it again with create-if-absent; losing that race to
                // another job is losing the lease.
                None => match store.put_conditional(LEASE, &bytes, None)? {
                    Conditional::Written(v) => {
                        eprintln!("warning: {url} had disappeared; this job took it again");
                        s.me = next;
                        s.version = v;
                        Ok(())
                    }
                    Conditional::Refused => {
                        let by = match store.get_versioned(LEASE)? {
                            Some((b, _)) => {
                                parse(&url, &b).map_or_else(|e| e.to_string(), |h| h.describe())
                            }
                            None => "another job (it came and went)".to_string(),
                        };
                        s.lost = Some(by.clone());
                        Err(lost(&url, &by))
                    }
                },
            }
        }
    }
}
