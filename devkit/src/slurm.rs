//! A real one-machine SLURM for tests (`ci/slurm-local.sh`: munged, slurmctld and slurmd from
//! Debian's slurm-wlm), started on demand by the first test of a process that needs it and
//! stopped when the process exits, like the S3 server the checkpoint tests start.
//! Failures panic: this is test code.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::repo;

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A running test cluster: its directory (config, state, logs) and `slurm.conf`.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

/// The process's cluster, locked for the calling test; `None` (with the reason printed) when the
/// SLURM packages are missing outside CI. In CI (`CI` set) a missing package is a failure:
/// `ci/setup.sh` installs them.
pub fn cluster() -> Option<MutexGuard<'static, Cluster>> {
    static CLUSTER: OnceLock<Option<Mutex<Cluster>>> = OnceLock::new();
    let c = CLUSTER.get_or_init(|| {
        let missing: Vec<&str> = ["munged", "slurmctld", "slurmd", "sbatch"]
            .into_iter()
            .filter(|b| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {b}")])
                    .output()
                    .is_ok_and(|o| o.status.success())
            })
            .collect();
        if !missing.is_empty() {
            let why = format!(
                "SLURM tests skipped: {} not installed (bash ci/setup.sh installs slurm-wlm and munge)",
                missing.join(", ")
            );
            assert!(std::env::var_os("CI").is_none(), "{why}");
            println!("{why}");
            return None;
        }
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        let dir = DIR.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("syncdiff-slurm-")
                .tempdir()
                .unwrap()
                .keep()
        });
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
                .to_string()
        };
        let (p1, p2) = (port(), port());
        let o = Command::new("bash")
            .arg(repo().join("ci/slurm-local.sh"))
            .args(["start", dir.to_str().unwrap(), &p1, &p2])
            .output()
            .unwrap();
        assert!(o.status.success(), "ci/slurm-local.sh start: {:?}", text(&o));
        extern "C" fn stop() {
            if let Some(dir) = DIR.get() {
                let _ = Command::new("bash")
                    .arg(repo().join("ci/slurm-local.sh"))
                    .args(["stop", dir.to_str().unwrap_or_default()])
                    .output();
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: `stop` only runs a command and removes a directory.
        unsafe { libc::atexit(stop) };
        Some(Mutex::new(Cluster {
            dir: dir.clone(),
            conf: dir.join("slurm.conf"),
        }))
    });
    c.as_ref()
        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

impl Cluster {
    /// A SLURM client command for this cluster, run from the repository root (the submit dir).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.current_dir(repo()).env("SLURM_CONF", &self.conf);
        c
    }

    /// `sbatch --parsable ARGS` with `env` added; the job id.
    pub fn sbatch(&self, args: &[String], env: &[(&str, String)]) -> u64 {
        let o = self
            .cmd("sbatch")
            .arg("--parsable")
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "sbatch {args:?}: {err}");
        out.trim().split(';').next().unwrap().parse().unwrap()
    }

    /// `scontrol show job -o ID`: the job's fields (of its first line).
    pub fn job(&self, id: u64) -> HashMap<String, String> {
        let o = self
            .cmd("scontrol")
            .args(["show", "job", "-o", &id.to_string()])
            .output()
            .unwrap();
        let (out, _) = text(&o);
        out.lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Waits (at most `limit`) until the job is in one of `states`; its fields then.
    pub fn wait_state(&self, id: u64, states: &[&str], limit: Duration) -> HashMap<String, String> {
        let start = Instant::now();
        loop {
            let j = self.job(id);
            if states.contains(&j.get("JobState").map_or("", String::as_str)) {
                return j;
            }
            assert!(
                start.elapsed() < limit,
                "job {id} not in {states:?} after {limit:?}: {j:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The daemons' logs' last lines, for a failure message.
    pub fn logs(&self) -> String {
        ["slurmctld.log", "slurmd.log"]
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(self.dir.join("log").join(f)).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                format!(
                    "{f}:\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Waits (at most `limit`) until the file holds `needle`; its text then.
pub fn wait_for_text(path: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let t = std::fs::read_to_string(path).unwrap_or_default();
        if t.contains(needle) {
            return t;
        }
        assert!(
            start.elapsed() < limit,
            "no {needle:?} in {} after {limit:?}:\n{t}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
