//! `syncdiff-train --preflight`: the checks worth running inside an allocation before a long job.
//! Every rank places itself, brings up its gradient backend, opens the data set and reads one
//! training sample; rank 0 writes and deletes a probe file under the checkpoint URL. Each rank
//! reports one line; a failed check on any rank fails the command on every rank, without a hang.

use std::path::Path;

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::{Config, DistBackend};
use tch::Device;

use crate::data::{Batch, LoaderState, Sampler};
use crate::dist::{MpiGradSync, NcclGradSync, Placement, Runtime};

/// One rank's report.
#[derive(Debug, Clone)]
pub struct RankReport {
    /// The line printed for this rank.
    pub line: String,
    /// Failed checks, as `check: reason`.
    pub failures: Vec<String>,
}

fn gradient_backend(rt: &Runtime, p: &Placement) -> Result<String, String> {
    use crate::dist::GradSync;
    // Four gradients of one and the stop slot.
    let probe = tch::Tensor::ones([5], (tch::Kind::Float, p.device));
    let _ = probe.narrow(0, 4, 1).fill_(0.0);
    let stop = match p.backend {
        DistBackend::Nccl => {
            let mut s = NcclGradSync::new(rt, p.device).map_err(|e| e.to_string())?;
            let stop = s
                .sync(&[probe.shallow_clone()], false)
                .map_err(|e| e.to_string())?;
            s.shutdown().map_err(|e| e.to_string())?;
            stop
        }
        _ => MpiGradSync::new(rt.comm())
            .sync(&[probe.shallow_clone()], false)
            .map_err(|e| e.to_string())?,
    };
    let mean =
        f64::try_from(probe.narrow(0, 0, 4).mean(tch::Kind::Float)).map_err(|e| e.to_string())?;
    if stop || (mean - 1.0).abs() > 1e-6 {
        return Err(format!("all-reduce of ones averaged to {mean}, expected 1"));
    }
    Ok(format!("{:?} all-reduce ok", p.backend).to_lowercase())
}

/// The NCCL the backend will load (file, version, one copy) and the CUDA versions.
fn gpu_libraries() -> Result<String, String> {
    let lib = crate::dist::nccl_library()?;
    if lib.copies > 1 {
        return Err(format!(
            "{} NCCL libraries are loaded ({:?}); libtorch and the backend must share one",
            lib.copies,
            crate::dist::nccl_copies()
        ));
    }
    let node = crate::dist::GpuNode::probe();
    Ok(format!(
        "NCCL {} from {}, CUDA driver {} (kernel module {}), runtime {} (torch {})",
        lib.version_string(),
        lib.path.display(),
        node.driver_cuda.as_deref().unwrap_or("unknown"),
        node.kernel_driver.as_deref().unwrap_or("unknown"),
        crate::dist::WHEEL_CUDA,
        option_env!("SYNCDIFF_TORCH_VERSION").unwrap_or("unknown"),
    ))
}

fn dataset(config: &Config, rt: &Runtime) -> Result<String, String> {
    let path = &config.data.dataset;
    if syncdiff_dataset::remote::is_remote(path) {
        // Read access only: filling the node cache is the run's first work, not a check's.
        let s = syncdiff_dataset::remote::CacheSettings::from_config(
            config,
            rt.local_rank() as usize,
            rt.local_size() as usize,
        );
        return syncdiff_dataset::remote::probe("data.dataset", path, &s)
            .map_err(|e| e.to_string());
    }
    let ds = Dataset::open(Path::new(path)).map_err(|e| format!("{path}: {e}"))?;
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let m = &config.model;
    let np = m.priors.needed_previous_frames();
    let sampler = Sampler::new(
        config.train.seed,
        config.train.epoch_unit,
        &frames,
        u64::from(np),
        u64::from(m.diffusion.timesteps),
        u64::from(config.train.global_batch),
    )
    .map_err(|e| format!("{path}: {e}"))?;
    let order = sampler.permutation(0);
    let world = rt.world_size() as u64;
    let first = sampler
        .step(LoaderState::default(), rt.rank() as u64, world, 1, &order)
        .into_iter()
        .next()
        .unwrap_or_default();
    Batch::read(&ds, &first, np, u64::from(m.audio_encoder.context_frames))
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "dataset ok ({} clips, {} steps/epoch)",
        frames.len(),
        sampler.steps_per_epoch()
    ))
}

fn checkpoint_url(config: &Config) -> Result<String, String> {
    let url = &config.checkpoint.url;
    if url.contains("://") && !url.starts_with("file://") {
        return Ok(format!(
            "checkpoint URL {url} not probed (object stores are checked by the checkpoint module)"
        ));
    }
    let dir = Path::new(url.strip_prefix("file://").unwrap_or(url));
    let probe = dir.join(format!(".preflight-{}", std::process::id()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&probe, b"preflight"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("checkpoint.url {}: cannot write: {e}", dir.display()))?;
    Ok(format!("checkpoint dir {} writable", dir.display()))
}

/// Checks failed somewhere in the job (each was printed by the rank that saw it).
#[derive(Debug, thiserror::Error)]
#[error("{prefix} preflight: {failed} check(s) failed across the job")]
pub struct PreflightFailed {
    /// The rank's log prefix.
    pub prefix: String,
    /// Failed checks over all ranks.
    pub failed: i32,
}

/// `--preflight` (a collective): every rank runs its checks and prints its line, in rank order,
/// and an `error:` line per failed check; rank 0 says when all passed. Fails on every rank when
/// any check failed on any rank.
pub fn run_job(
    config: &Config,
    rt: &Runtime,
    placement: Result<Placement, String>,
) -> Result<(), PreflightFailed> {
    let report = run(config, rt, placement);
    rt.in_rank_order(|| println!("{}", report.line));
    let mut failed = [0i32];
    rt.comm().all_reduce_into(
        &[report.failures.len() as i32][..],
        &mut failed[..],
        SystemOperation::sum(),
    );
    for f in &report.failures {
        crate::dist::error_line(&format!("{} preflight {f}", rt.prefix()));
    }
    if failed[0] > 0 {
        return Err(PreflightFailed {
            prefix: rt.prefix(),
            failed: failed[0],
        });
    }
    if rt.is_main() {
        let (p, n) = (rt.prefix(), rt.world_size());
        println!("{p} preflight passed on all {n} ranks");
    }
    Ok(())
}

/// Runs every check on this rank (a collective: all ranks call it).
pub fn run(config: &Config, rt: &Runtime, placement: Result<Placement, String>) -> RankReport {
    let mut parts = vec![format!("{} host {}", rt.prefix(), rt.host())];
    let mut failures = Vec::new();
    let mut check = |name: &str, r: Result<String, String>| match r {
        Ok(s) => parts.push(s),
        Err(e) => {
            parts.push(format!("{name} FAILED"));
            failures.push(format!("{name}: {e}"));
        }
    };
    // Ranks agree whether every rank placed itself before any enters a backend collective.
    let mut all = [0i32];
    rt.comm().all_reduce_into(
        &[i32::from(placement.is_ok())][..],
        &mut all[..],
        SystemOperation::min(),
    );
    match placement {
        Ok(p) => {
            let dev = match p.device {
                Device::Cuda(i) => format!("device cuda:{i}"),
                _ => format!("device cpu ({} threads)", p.cpu_threads),
            };
            check("device", Ok(dev));
            match p.device {
                Device::Cuda(_) => check("gpu libraries", gpu_libraries()),
                _ => check(
                    "gpu libraries",
                    Ok("no GPU on this node (MPI all-reduce on CPU)".into()),
                ),
            }
            if all[0] == 1 {
                check("backend", gradient_backend(rt, &p));
            } else {
                check(
                    "backend",
                    Ok("backend skipped (another rank has no device)".into()),
                );
            }
        }
        Err(e) => check("device", Err(e)),
    }
    check("dataset", dataset(config, rt));
    if rt.is_main() {
        check("checkpoint", checkpoint_url(config));
    }
    RankReport {
        line: parts.join(" "),
        failures,
    }
}
