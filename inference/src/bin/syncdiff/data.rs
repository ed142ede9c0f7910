//! `syncdiff data`: data sets on object storage (upload one, fill a node's cache before a job).

use std::path::PathBuf;

use clap::Subcommand;
use syncdiff_dataset::remote;
use syncdiff_model::config::ConfigArgs;
use syncdiff_runtime::ranks::Ranks;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Upload a prepared data set directory to s3://, gs:// or az://: the shards, then
    /// manifest.json last (a reader never sees a manifest whose shards are missing). Files
    /// already there with the same size are skipped, so an interrupted upload resumes.
    Upload {
        /// The data set directory (with manifest.json).
        dir: PathBuf,
        /// Where to: s3://bucket/prefix, gs://..., az://...
        url: String,
    },
    /// Fill this node's data cache (data.cache) with the configuration's object-store data sets
    /// (data.dataset, data.val_dataset), e.g. before a job or in a SLURM prolog; a local path
    /// is left alone.
    Fetch {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub fn run(c: Command) -> anyhow::Result<String> {
    match c {
        Command::Upload { dir, url } => {
            let u = remote::upload(&dir, &url)?;
            Ok(format!(
                "uploaded {} to {}: {} file(s), {:.1} MB sent, {} already there",
                dir.display(),
                syncdiff_checkpoint::safe_url(&url),
                u.files,
                u.bytes as f64 / 1e6,
                u.skipped
            ))
        }
        Command::Fetch { config } => {
            let config = crate::load(&config)?;
            let launch = Ranks::from_env()?;
            let mut lines = Vec::new();
            let sets = [
                ("data.dataset", Some(config.data.dataset.clone())),
                ("data.val_dataset", config.data.val_dataset.clone()),
            ];
            for (key, location) in sets {
                let Some(location) = location else { continue };
                if !remote::is_remote(&location) {
                    lines.push(format!("{key} {location}: a local path, nothing to fetch"));
                    continue;
                }
                let s = remote::CacheSettings::from_config(
                    &config,
                    launch.local_rank,
                    launch.local_size,
                );
                let filled = remote::fill(key, &location, &s)?;
                lines.push(format!(
                    "{key} {}: {filled}",
                    syncdiff_checkpoint::safe_url(&location)
                ));
            }
            Ok(lines.join("\n"))
        }
    }
}
