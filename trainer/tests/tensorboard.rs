//! Event files read back with PyPI tensorboard's EventAccumulator (run live).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

use syncdiff_trainer::log::EventWriter;

#[test]
fn tensorboard_reads_our_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = EventWriter::create(dir.path()).unwrap();
    for step in 0..5 {
        w.scalar("train/loss", 1.0 / (step + 1) as f32, step)
            .unwrap();
        w.scalar("train/lr", 1e-4, step).unwrap();
    }
    w.flush().unwrap();
    let py = std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"));
    let script = "import sys\nfrom tensorboard.backend.event_processing.event_accumulator import EventAccumulator\nacc = EventAccumulator(sys.argv[1]); acc.Reload()\nfor tag in sorted(acc.Tags()['scalars']):\n    print(tag, ' '.join(f'{e.step}:{e.value:.6g}' for e in acc.Scalars(tag)))\n";
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("train/loss 0:1 1:0.5 2:0.333333 3:0.25 4:0.2"),
        "{out}"
    );
    assert!(
        out.contains("train/lr 0:0.0001 1:0.0001 2:0.0001 3:0.0001 4:0.0001"),
        "{out}"
    );
}
