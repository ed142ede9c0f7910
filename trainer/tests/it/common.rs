//! Helpers shared by the trainer's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use syncdiff_dataprep::layout::Layout::Lrs2;

pub use syncdiff_devkit::{python, python_path, repo, torch};

/// The directory of this process's shared fixtures, removed when the process exits.
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        extern "C" fn remove() {
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("syncdiff-it-")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: `remove` is a plain function that only touches the file system.
        unsafe { libc::atexit(remove) };
        dir
    })
}

/// The synthetic clips (2 speakers x 4 clips of 1 s: 2 train and 1 val clip each), drawn once per
/// test process and shared: read them, never write into them.
pub fn synthetic() -> &'static Path {
    static CLIPS: OnceLock<PathBuf> = OnceLock::new();
    CLIPS.get_or_init(|| {
        let root = fixtures().join("lrs2");
        let opts = syncdiff_dataprep::synth::SynthOptions {
            out: root.clone(),
            speakers: 2,
            clips_per_speaker: 4,
            seconds: 1.0,
            seed: 4,
        };
        syncdiff_dataprep::synth::synth(&opts, |_, _| {}).unwrap();
        root
    })
}

/// The train split of [`synthetic`] prepared with the debug configuration, once per test process
/// and shared (read only).
pub fn dataset() -> &'static Path {
    static DS: OnceLock<PathBuf> = OnceLock::new();
    DS.get_or_init(|| prepared(fixtures(), "train", &[]))
}

/// The val split, as [`dataset`].
pub fn val_dataset() -> &'static Path {
    static DS: OnceLock<PathBuf> = OnceLock::new();
    DS.get_or_init(|| prepared(fixtures(), "val", &[]))
}

/// Split `split` of the [`synthetic`] clips prepared with the debug configuration plus `sets`
/// (`key=value` overrides, e.g. `data.clips_per_shard=1`), in `dir/ds-<split>`: for a test that
/// changes its data set; the others share [`dataset`].
pub fn prepared(dir: &Path, split: &str, sets: &[&str]) -> PathBuf {
    let root = synthetic();
    let sets: Vec<syncdiff_model::config::Override> = sets
        .iter()
        .map(|s| syncdiff_model::config::Override::parse(s).unwrap())
        .collect();
    let cfg =
        syncdiff_model::config::Config::load(&repo().join("configs/debug.yaml"), &sets).unwrap();
    let out = dir.join(format!("ds-{split}"));
    ingest(root, split, &out, &cfg);
    out
}

/// Ingests split `split` of the LRS2-layout tree `root` into `out` with `cfg` (one rank).
pub fn ingest(root: &Path, split: &str, out: &Path, cfg: &syncdiff_model::config::Config) {
    let opts = syncdiff_dataprep::ingest::IngestOptions {
        batch: 16,
        ..syncdiff_dataprep::ingest::IngestOptions::new(root, Lrs2, split, out)
    };
    syncdiff_dataprep::ingest::ingest(&opts, cfg, |_, _, _| {}).unwrap();
}

/// `mpirun -n N syncdiff-train ...`, allowed to run as root and to oversubscribe the 2 cores.
pub fn mpirun(n: u32) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(repo())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-n", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_syncdiff-train"));
    c
}

/// Runs `worker` (an ignored test of this test binary, e.g. `ddp::ddp_worker`) on `n` ranks under
/// `mpirun` with extra environment `env`; returns its stdout, or panics with both outputs when a
/// rank failed.
pub fn mpirun_worker(worker: &str, n: u32, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("mpirun");
    cmd.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-n", &n.to_string()])
        .arg(std::env::current_exe().unwrap())
        .args([
            worker,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{worker}:\n{out}\n{err}");
    out
}

/// (name, sha256) of every `.safetensors` file a checkpoint's `manifest.json` lists, in its order.
pub fn tensor_hashes(manifest: &[u8]) -> Vec<(String, String)> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"].as_str().unwrap().ends_with(".safetensors"))
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Makes a character device with /dev/full's numbers at `dev` (as root, with mknod) and a FIFO
/// at `fifo`: outputs that a command must refuse and leave alone.
pub fn special_files(dev: &Path, fifo: &Path) -> (PathBuf, PathBuf) {
    for (cmd, args) in [
        (
            "mknod",
            &[dev.as_os_str(), "c".as_ref(), "1".as_ref(), "7".as_ref()][..],
        ),
        ("mkfifo", &[fifo.as_os_str()][..]),
    ] {
        let ok = Command::new(cmd).args(args).status().unwrap().success();
        assert!(ok, "{cmd} {args:?}");
    }
    (dev.to_path_buf(), fifo.to_path_buf())
}

/// stdout and stderr of a finished command.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A real S3 server (PyPI moto) on 127.0.0.1, killed on drop. `env()` gives the variables that
/// point object_store at it.
pub struct MotoServer {
    child: std::process::Child,
    /// Its port.
    pub port: u16,
}

impl MotoServer {
    /// Starts `moto_server` on a free port and waits until it answers.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    /// Starts it on `port` (a restart of the same endpoint).
    pub fn start_on(port: u16) -> Self {
        let bin = python_path().with_file_name("moto_server");
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed().as_secs() < 30, "moto_server did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Self { child, port }
    }

    /// Creates a bucket (moto accepts an unsigned PUT).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }

    /// Environment for object_store's `from_env` (fake credentials; moto does not check them).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing-key-id".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret-9f8e7d".into()),
        ]
    }

    /// The same settings, given to a store explicitly (tests in one process cannot share the
    /// process environment).
    pub fn options(&self) -> syncdiff_checkpoint::StoreOptions {
        let key = |k: &str| {
            k.to_ascii_lowercase()
                .replace("aws_endpoint_url", "aws_endpoint")
        };
        syncdiff_checkpoint::StoreOptions(
            self.env().into_iter().map(|(k, v)| (key(k), v)).collect(),
        )
    }

    /// Stops the server (its data is lost, as with a restarted in-memory server).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (rank, pid) of every rank process `mpirun` started, the rank read from its environment.
pub fn rank_pids(mpirun_pid: u32) -> Vec<(u32, u32)> {
    let o = Command::new("pgrep")
        .args(["-P", &mpirun_pid.to_string(), "-f", "syncdiff-train"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(|p| {
            let pid: u32 = p.parse().unwrap();
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
            let rank = env
                .split(|&b| b == 0)
                .filter_map(|v| std::str::from_utf8(v).ok())
                .find_map(|v| v.strip_prefix("OMPI_COMM_WORLD_RANK="))
                .unwrap()
                .parse()
                .unwrap();
            (rank, pid)
        })
        .collect()
}

/// Sends `sig` (e.g. `-USR1`) to `pid`; whether `kill` succeeded.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a model-crate reference script (diffusers) into a temporary directory.
pub fn reference(script: &str, kind: &str, spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec).unwrap();
    let o = python()
        .arg(repo().join("model/tests/reference").join(script))
        .args([
            kind,
            spec_path.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir
}
