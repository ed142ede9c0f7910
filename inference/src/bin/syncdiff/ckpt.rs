//! `syncdiff ckpt list|inspect|export`: what is under a checkpoint URL, one checkpoint in detail
//! (verified, with a config diff), and a self-contained inference bundle.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use syncdiff_model::config::{AutoencoderKind, Config, ConfigArgs};
use tch::Tensor;

use syncdiff_checkpoint::{self as ckpt, Retry, Store};

/// `syncdiff ckpt`: checkpoints under a URL.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the checkpoints under a URL (path, file://, s3://, gs://, az://), valid or not.
    List {
        /// Checkpoint URL (`checkpoint.url` of the run).
        url: String,
    },
    /// Download and verify one checkpoint; show its state and files, and with --config the
    /// configuration differences and whether that configuration can resume it.
    Inspect {
        /// `URL/step-NNNNNNNNN`.
        url: String,
        /// Compare with this configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides for --config.
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
    },
    /// Write an inference bundle (EMA weights, autoencoder weights, config without
    /// machine-specific paths) that `syncdiff generate` accepts.
    Export {
        /// `URL/step-NNNNNNNNN`.
        url: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The VQ-f4 weights, when the path in the checkpoint's config is not valid here.
        #[arg(long)]
        autoencoder: Option<PathBuf>,
    },
}

/// Runs one `ckpt` subcommand.
pub fn run(command: Command) -> anyhow::Result<String> {
    match command {
        Command::List { url } => list(&url),
        Command::Inspect { url, config, set } => {
            let config = match config {
                Some(config) => Some(crate::load(&ConfigArgs {
                    config,
                    set,
                    print_config: false,
                })?),
                None => None,
            };
            inspect(&url, config.as_ref())
        }
        Command::Export {
            url,
            out,
            autoencoder,
        } => export(&url, &out, autoencoder.as_deref()),
    }
}

fn retry() -> Retry {
    Retry {
        attempts: 3,
        backoff: std::time::Duration::from_secs(1),
    }
}

fn age(unix: u64) -> String {
    let s = ckpt::now_unix().saturating_sub(unix) as f64;
    match s {
        s if s < 120.0 => format!("{s:.0} s ago"),
        s if s < 7200.0 => format!("{:.0} min ago", s / 60.0),
        s if s < 172_800.0 => format!("{:.1} h ago", s / 3600.0),
        s => format!("{:.1} days ago", s / 86_400.0),
    }
}

/// `syncdiff ckpt list URL`: every checkpoint directory, valid or not (files not hashed).
fn list(url: &str) -> anyhow::Result<String> {
    let store = Store::open_read(url, retry())?;
    let listed = ckpt::list(&store)?;
    if listed.is_empty() {
        return Ok(format!("{url}: no checkpoints"));
    }
    let mut out = vec![format!(
        "{:<16} {:>10} {:<18} {:<29} status",
        "checkpoint", "MB", "saved", "run"
    )];
    for c in &listed {
        out.push(match &c.manifest {
            Some(m) => format!(
                "{:<16} {:>10.1} {:<18} {:<29} valid (sizes checked; `inspect` verifies hashes)",
                c.dir,
                m.bytes() as f64 / 1e6,
                age(m.saved_unix),
                m.run.as_deref().unwrap_or("(not recorded)")
            ),
            None => format!(
                "{:<16} {:>10} {:<18} {:<29} invisible: {}",
                c.dir,
                "-",
                "-",
                "-",
                c.problem.as_deref().unwrap_or("invalid")
            ),
        });
    }
    let newest = listed.iter().rev().find(|c| c.manifest.is_some());
    out.push(match newest {
        Some(c) => format!("--resume auto would use {}", store.display(&c.dir)),
        None => "--resume auto would start fresh".into(),
    });
    if store.list_dirs()?.iter().any(|d| d == ckpt::SET_ASIDE) {
        out.push(format!(
            "checkpoints moved aside by --move-aside are under {} (`ckpt list` that URL/<time>)",
            store.display(ckpt::SET_ASIDE)
        ));
    }
    Ok(out.join("\n"))
}

fn split(url: &str) -> anyhow::Result<(Store, String)> {
    let Some((base, dir)) = ckpt::split_url(url) else {
        bail!(
            "{url}: expected a checkpoint URL ending in /step-NNNNNNNNN (see `syncdiff ckpt list`)"
        );
    };
    Ok((Store::open_read(base, retry())?, dir.to_string()))
}

/// `syncdiff ckpt inspect URL/step-N [--config C]`: downloads and verifies the checkpoint, prints
/// its state, files and, given a configuration, the differences and whether it could resume.
fn inspect(url: &str, config: Option<&Config>) -> anyhow::Result<String> {
    let (store, dir) = split(url)?;
    let tmp = tempfile::tempdir()?;
    let chosen = ckpt::exact(&store, &dir, tmp.path())?;
    let r = ckpt::read(&chosen.local, &chosen.manifest)?;
    let s = &r.state;
    let mut out = vec![
        format!("{url}: valid (every file's size and sha256 verified)"),
        format!(
            "step {}, saved {} by {} ranks; loader at epoch {} sample {}; seed {}, global batch {}",
            s.step,
            age(s.saved_unix),
            s.world_size,
            s.epoch,
            s.consumed,
            s.seed,
            s.global_batch
        ),
        format!("data set manifest sha256 {}", s.dataset_sha256),
    ];
    for (k, v) in &s.external_weights {
        out.push(format!("external weights {k}: sha256 {v}"));
    }
    for f in &chosen.manifest.files {
        out.push(format!(
            "  {:<24} {:>12} bytes  sha256 {}",
            f.name, f.bytes, f.sha256
        ));
    }
    if let Some(now) = config {
        let saved = Config::from_yaml(&r.config_yaml, &format!("{url}/config.yaml"), &[])
            .with_context(|| format!("{url}/config.yaml"))?;
        let a = ckpt::flatten(&serde_json::to_value(&saved)?);
        let b = ckpt::flatten(&serde_json::to_value(now)?);
        let diffs: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "  {k}: {v} (checkpoint) -> {} (config)",
                    b.get(k).map_or("-", String::as_str)
                )
            })
            .collect();
        out.push(format!("config differences: {}", diffs.len()));
        out.extend(diffs);
        out.push(
            match ckpt::check_compatible(s, &saved, now, &s.dataset_sha256) {
                Ok(()) => {
                    "this configuration can resume it (data set hash not checked here)".into()
                }
                Err(e) => format!("this configuration cannot resume it: {e}"),
            },
        );
    }
    Ok(out.join("\n"))
}

/// `syncdiff ckpt export URL/step-N --out DIR`: an inference bundle: `weights.safetensors` (the
/// EMA weights of the trained parameters, the frozen ones as trained), the autoencoder weights
/// when the model has a VQ autoencoder, and `config.yaml` without machine-specific paths.
fn export(url: &str, out: &Path, autoencoder: Option<&Path>) -> anyhow::Result<String> {
    // Checked before the download: a file, device node, FIFO or socket is refused.
    syncdiff_dataprep::outpath::output_dir(out).map_err(|e| anyhow::anyhow!("--out {e}"))?;
    let (store, dir) = split(url)?;
    let tmp = tempfile::tempdir()?;
    let chosen = ckpt::exact(&store, &dir, tmp.path())?;
    let r = ckpt::read(&chosen.local, &chosen.manifest)?;
    let mut config = Config::from_yaml(&r.config_yaml, &format!("{url}/config.yaml"), &[])?;
    let (named, ema_note) = ema_weights(url, &r)?;
    std::fs::create_dir_all(out).with_context(|| out.display().to_string())?;
    syncdiff_model::weights::save(&named, &out.join("weights.safetensors"))?;
    let ae = &mut config.model.autoencoder;
    if ae.kind == AutoencoderKind::VqF4 {
        let src = autoencoder
            .map(Path::to_path_buf)
            .or_else(|| ae.weights.as_ref().map(Into::into));
        let Some(src) = src.filter(|p: &std::path::PathBuf| p.exists()) else {
            bail!(
                "the model's VQ-f4 weights ({}) are not on this machine; pass --autoencoder PATH",
                ae.weights.as_deref().unwrap_or("not configured")
            );
        };
        std::fs::copy(&src, out.join("autoencoder.safetensors"))
            .with_context(|| src.display().to_string())?;
        ae.weights = Some("autoencoder.safetensors".into());
    }
    // AV-HuBERT (frozen and trained layers) is inside weights.safetensors.
    config.model.audio_encoder.weights = None;
    config.data.dataset = "unused (inference bundle)".into();
    config.data.val_dataset = None;
    config.checkpoint.url = "unused".into();
    config.log.dir = "runs/generate".into();
    std::fs::write(out.join("config.yaml"), config.to_yaml())?;
    let mut files = vec!["weights.safetensors", "config.yaml"];
    if config.model.autoencoder.kind == AutoencoderKind::VqF4 {
        files.push("autoencoder.safetensors");
    }
    ckpt::BundleInfo {
        source: url.to_string(),
        step: r.state.step,
        weights: ema_note.to_string(),
        run: r.state.run.clone(),
        created_unix: ckpt::now_unix(),
        files: Vec::new(),
    }
    .write(out, &files)?;
    Ok(format!(
        "exported step {} of {url} to {} ({ema_note})",
        r.state.step,
        out.display()
    ))
}

/// The weights a bundle carries: the EMA of each trained parameter where the run kept one, the
/// model's own tensors otherwise; and which they are, in words.
fn ema_weights(
    url: &str,
    r: &ckpt::Restored,
) -> anyhow::Result<(Vec<(String, Tensor)>, &'static str)> {
    let mut weights: BTreeMap<String, Tensor> = r
        .model
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    let Some(ema) = &r.ema else {
        return Ok((
            weights.into_iter().collect(),
            "live weights (the run had no EMA)",
        ));
    };
    for (name, t) in ema.iter().filter(|(n, _)| *n != "ema_updates") {
        if !weights.contains_key(name) {
            bail!("{url}: EMA tensor {name} is not a model tensor");
        }
        weights.insert(name.clone(), t.shallow_clone());
    }
    Ok((weights.into_iter().collect(), "EMA weights"))
}
