//! Helpers shared by dataprep's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The python of the project's virtualenv.
pub fn python() -> Command {
    let exe = std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"));
    Command::new(exe)
}
