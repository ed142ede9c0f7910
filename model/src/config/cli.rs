//! The `--config` / `--set` / `--print-config` arguments every binary shares (feature `cli`).

use std::path::PathBuf;

use super::{Config, ConfigError, Override};

/// Configuration arguments, flattened into each binary's clap parser.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file (see docs/configuration.md).
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: PathBuf,
    /// Override one key, e.g. `--set train.global_batch=96` (repeatable; YAML values).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    pub set: Vec<String>,
    /// Print the resolved configuration as YAML and exit.
    #[arg(long)]
    pub print_config: bool,
}

impl ConfigArgs {
    /// Loads the file, applies the overrides and validates.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let overrides = self
            .set
            .iter()
            .map(|s| Override::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Config::load(&self.config, &overrides)
    }
}
