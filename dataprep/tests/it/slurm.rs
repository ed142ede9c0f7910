//! `syncdiff-dataprep` as a SLURM job array under a real one-machine SLURM
//! (`syncdiff_devkit::slurm`): the array tasks split the shards like `mpirun` ranks and the
//! data set equals the one a single process writes, file for file.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use syncdiff_dataprep::synth::{synth, SynthOptions};
use syncdiff_devkit::{repo, slurm::cluster, tree as files};

#[test]
fn a_job_array_writes_the_data_set_one_process_writes() {
    let Some(slurm) = cluster() else { return };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lrs2");
    synth(
        &SynthOptions {
            out: root.clone(),
            speakers: 2,
            clips_per_speaker: 4,
            seconds: 1.0,
            seed: 5,
        },
        |_, _| {},
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "lrs2",
            "--root",
            root.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--config",
            "configs/debug.yaml",
            "--set",
            "data.clips_per_shard=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (one, arr) = (dir.path().join("one"), dir.path().join("arr"));
    let bin = env!("CARGO_BIN_EXE_syncdiff-dataprep");
    let o = Command::new(bin)
        .current_dir(repo())
        .env("OMP_NUM_THREADS", "1")
        .args(args(&one))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // 3 array tasks, 1 CPU each (the script sets OMP_NUM_THREADS from it), for 4 shards.
    let mut sb: Vec<String> = [
        "--wait",
        "--array=0-2",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    sb.push(format!("--output={}/dp-%a.out", dir.path().display()));
    sb.push("launch/slurm-array.sbatch".into());
    sb.push("syncdiff-dataprep".into());
    sb.extend(args(&arr));
    let bin_dir = Path::new(bin).parent().unwrap().display().to_string();
    slurm.sbatch(&sb, &[("SYNCDIFF_BIN", bin_dir)]);
    let logs: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(dir.path().join(format!("dp-{i}.out"))).unwrap())
        .collect();
    // Shard i goes to task i mod 3: task 0 builds shards 0 and 3, the others one each.
    assert!(
        logs[0].contains("rank 0/3: built 2 shard(s)"),
        "{}",
        logs[0]
    );
    assert!(
        logs[1].contains("rank 1/3: built 1 shard(s)"),
        "{}",
        logs[1]
    );
    assert!(
        logs[2].contains("rank 2/3: built 1 shard(s)"),
        "{}",
        logs[2]
    );
    let (a, b) = (files(&arr), files(&one));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "different files"
    );
    assert!(a.contains_key("manifest.json"), "{:?}", a.keys());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs from one process's");
    }
}
