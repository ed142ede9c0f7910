//! One writer per checkpoint URL: a second job on the URL of a running one refuses in seconds,
//! naming it; `--take-lease` takes it over and the old holder stops saving with an error; a
//! killed holder's lease is taken over (at once on its own host, after expiry from another); a
//! clean exit gives it back. The same lease on S3 (moto's conditional writes).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{text, MotoServer};
use syncdiff_checkpoint::{Holder, Lease, Retry, Store, Takeover, LEASE};

/// `syncdiff-train` on the debug configuration with a short lease (renewed every 1 s, expiring
/// after 6 s; collectives time out after 5 s).
fn train(ds: &Path, dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_syncdiff-train"));
    c.current_dir(common::repo())
        .args(["--config", "configs/debug.yaml", "--resume", "auto"])
        .args(["--set", &format!("data.dataset={}", ds.display())])
        .args([
            "--set",
            &format!("checkpoint.url={}", dir.join("ckpt").display()),
        ])
        .args(["--set", &format!("log.dir={}", dir.join("runs").display())])
        .args(["--set", "dist.collective_timeout_s=5"])
        .args(["--set", "checkpoint.lease.expire_s=6"])
        .args(["--set", "checkpoint.lease.renew_s=1"])
        .args(extra);
    c
}

/// Starts `cmd` with its stdout read line by line into a channel.
fn spawn(cmd: &mut Command) -> (Child, mpsc::Receiver<String>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (up to 120 s) for a line containing `want`; returns the lines seen.
fn wait_for(rx: &mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let t0 = Instant::now();
    let mut seen = Vec::new();
    while t0.elapsed() < Duration::from_secs(120) {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let done = line.contains(want);
            seen.push(line);
            if done {
                return seen;
            }
        }
    }
    panic!("no line with `{want}` in:\n{}", seen.join("\n"));
}

fn holder(dir: &Path) -> Holder {
    serde_json::from_slice(&std::fs::read(dir.join("ckpt").join(LEASE)).unwrap()).unwrap()
}

/// The newest step saved under `dir/ckpt` (a directory with a manifest).
fn newest_saved(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("ckpt"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let step = syncdiff_checkpoint::parse_step_dir(p.file_name()?.to_str()?)?;
            p.join("manifest.json").exists().then_some(step)
        })
        .max()
        .unwrap()
}

fn stderr_of(mut child: Child) -> (Option<i32>, String) {
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (child.wait().unwrap().code(), err)
}

#[test]
fn a_second_job_refuses_a_takeover_stops_the_first_and_a_killed_holder_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ds = common::dataset();
    let long = [
        "--set",
        "train.steps=100000",
        "--set",
        "checkpoint.interval=5",
    ];

    // Job A runs; job B, started on the same URL (before: it resumed A's run and both wrote),
    // refuses within seconds, naming A.
    let (a, a_out) = spawn(&mut train(ds, d, &long));
    wait_for(&a_out, "step 3/");
    let t0 = Instant::now();
    let o = train(ds, d, &long).output().unwrap();
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(
        err.contains("lease.json: another job holds the writer lease (run ")
            && err.contains(&format!("pid {}", a.id()))
            && err.contains("last renewed"),
        "{err}"
    );
    assert_eq!(holder(d).pid, a.id());

    // Job C takes the lease with --take-lease: A finds it lost, saves nothing more and stops
    // with an error saying so; C trains on.
    let (c, c_out) = spawn(&mut train(ds, d, &[&long[..], &["--take-lease"]].concat()));
    let seen = wait_for(&c_out, "took over the writer lease");
    assert!(
        seen.last().unwrap().contains("(--take-lease) from run "),
        "{seen:?}"
    );
    let (code, err) = stderr_of(a);
    assert_ne!(code, Some(0), "{err}");
    assert!(
        err.contains("this job lost the writer lease; it is held by run ")
            && err.contains(&format!("pid {}", c.id())),
        "{err}"
    );
    wait_for(&c_out, "checkpoint step");
    assert_eq!(holder(d).pid, c.id());

    // C is killed: its lease stays. On this host a dead holder is replaced at once.
    let c_pid = c.id();
    assert!(common::signal(c_pid, "-KILL"));
    let _ = stderr_of(c);
    assert_eq!(holder(d).pid, c_pid);
    let steps = |more: u64| format!("train.steps={}", newest_saved(d) + more);
    let o = train(ds, d, &["--set", &steps(2)]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("took over the writer lease")
            && out.contains("its process on this host is gone"),
        "{out}"
    );
    // A clean exit gives the lease back.
    assert!(!d.join("ckpt").join(LEASE).exists());

    // A holder on another node: refused while it renews; with checkpoint.lease.wait_s the
    // start waits for its expiry and takes over.
    let other = |renewed_ago: u64, expire_s: u64| {
        let now = syncdiff_checkpoint::now_unix();
        let h = Holder {
            token: "other".into(),
            run: Some("run-of-node-b".into()),
            host: "node-b".into(),
            pid: 1,
            job: Some("4242".into()),
            started_unix: now - renewed_ago,
            renewed_unix: now - renewed_ago,
            expire_s,
        };
        std::fs::write(d.join("ckpt").join(LEASE), serde_json::to_vec(&h).unwrap()).unwrap();
    };
    other(0, 600);
    let o = train(ds, d, &["--set", &steps(2)]).output().unwrap();
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("run run-of-node-b, host node-b, pid 1, job 4242"),
        "{err}"
    );
    other(0, 3);
    let t0 = Instant::now();
    let o = train(
        ds,
        d,
        &["--set", &steps(2), "--set", "checkpoint.lease.wait_s=30"],
    )
    .output()
    .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("waiting up to 30 s for the writer lease")
            && out.contains("took over the writer lease")
            && out.contains("(expired) from run run-of-node-b"),
        "{out}"
    );
    assert!(t0.elapsed() >= Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[test]
fn the_lease_on_s3_uses_the_stores_conditional_writes() {
    let moto = MotoServer::start();
    moto.create_bucket("runs");
    let open = || {
        std::sync::Arc::new(
            Store::open_with_options(
                "s3://runs/leased",
                Retry {
                    attempts: 2,
                    backoff: Duration::from_millis(100),
                },
                &moto.options(),
            )
            .unwrap(),
        )
    };
    let cfg = syncdiff_model::config::LeaseConfig {
        expire_s: 600,
        renew_s: 1,
        wait_s: 0,
    };
    let quiet = |_: &str| {};
    let first = Lease::acquire(open(), &cfg, Takeover::Never, &quiet).unwrap();
    first.set_run("run-1").unwrap();
    first.check().unwrap();
    // If-None-Match: a second holder is refused, naming the first.
    let e = Lease::acquire(open(), &cfg, Takeover::Never, &quiet)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "s3://runs/leased/lease.json: another job holds the writer lease (run run-1,"
        ),
        "{e}"
    );
    // Heartbeats go through (If-Match on the version just written).
    std::thread::sleep(Duration::from_millis(2500));
    first.check().unwrap();
    // A takeover (If-Match on the version read): the first holder is fenced off.
    let said = std::sync::Mutex::new(String::new());
    let say = |l: &str| *said.lock().unwrap() = l.to_string();
    let second = Lease::acquire(open(), &cfg, Takeover::Now, &say).unwrap();
    assert!(said
        .lock()
        .unwrap()
        .contains("(--take-lease) from run run-1"));
    let e = first.check().unwrap_err().to_string();
    assert!(e.contains("this job lost the writer lease"), "{e}");
    second.check().unwrap();
    // The first one's release leaves the second's lease alone; the second's removes it.
    first.release().unwrap();
    second.check().unwrap();
    second.release().unwrap();
    assert!(open().get_versioned(LEASE).unwrap().is_none());
}
