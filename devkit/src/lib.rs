//! What the workspace's tests and benchmarks share, and nothing a shipped binary needs: the
//! repository root, the project's Python (the reference side of parity tests and benchmarks),
//! numeric settings from the environment, and the statistics of side-by-side benchmarks.
//!
//! Only `[dev-dependencies]` name this crate.

pub mod slurm;
pub mod stats;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python interpreter of the project virtualenv (`ci/env.sh` sets `VIRTUAL_ENV`), else
/// `python3` from `PATH`.
pub fn python_path() -> PathBuf {
    std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"))
}

/// A command running [`python_path`].
pub fn python() -> Command {
    Command::new(python_path())
}

/// `name` from the environment as a number, else `default` (`BENCH_REPS=20`).
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A binary of another package of the workspace (`syncdiff` for the trainer's tests), beside the
/// running test or bench executable's `deps/` directory. Cargo sets `CARGO_BIN_EXE_*` only for
/// the package's own binaries, and builds another package's only in a workspace build:
/// `cargo test --workspace` (CI, `ci/test.sh`) does; after `cargo test -p PACKAGE`, build it
/// first (`cargo build --workspace --bins`), else this panics saying so.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("the test executable: {e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} has no target directory", exe.display()));
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build --workspace --bins` builds it (`cargo test --workspace` does)",
        bin.display()
    );
    bin
}

/// Runs `ffmpeg -v error -y ARGS` (the output file last among them), panicking with ffmpeg's
/// stderr when it fails: test inputs made with ffmpeg (a sideways phone video, a tone track).
pub fn ffmpeg(args: &[&str]) {
    let o = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg: {e}"));
    assert!(
        o.status.success(),
        "ffmpeg {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Serialises the tests that run libtorch in one test process (each crate has one test binary).
/// libtorch has one global random generator: a test that seeds it (`tch::manual_seed`, a
/// trainer's construction) and then draws from it must not interleave with another test that
/// draws from it (initialising a `VarStore` does). Every in-process libtorch test holds this
/// guard; tests that only start processes need not.
pub fn torch() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A real photograph that scikit-image ships in the project virtualenv (`astronaut.png`: a
/// 512x512 portrait with one face; `chelsea.png`: a cat, no face). Panics with the reason if the
/// virtualenv lacks it (`bash ci/setup.sh` installs scikit-image).
pub fn photo(name: &str) -> PathBuf {
    let out = python()
        .args([
            "-c",
            "import os, skimage; print(os.path.dirname(skimage.__file__))",
        ])
        .output()
        .expect("run the project Python");
    assert!(
        out.status.success(),
        "scikit-image is not importable: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let path = dir.join("data").join(name);
    assert!(path.is_file(), "{} does not exist", path.display());
    path
}

/// dlib's CNN face detector model as `bash ci/setup.sh` installs it
/// (`$SYNCDIFF_MODELS`, default `~/.cache/syncdiff/models`).
pub fn cnn_face_model() -> PathBuf {
    let dir = std::env::var("SYNCDIFF_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/syncdiff/models")
        });
    let path = dir.join("mmod_human_face_detector.dat");
    assert!(
        path.is_file(),
        "{} does not exist: `bash ci/setup.sh` installs it",
        path.display()
    );
    path
}

/// Every file under `root` (its path relative to `root` -> its bytes), for tests that compare
/// two directory trees file for file.
pub fn tree(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, root, out);
            } else if let (Ok(rel), Ok(bytes)) = (p.strip_prefix(root), std::fs::read(&p)) {
                out.insert(rel.display().to_string(), bytes);
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(root, root, &mut out);
    out
}
