//! What every binary's command line shares (feature `cli`): the `--config` / `--set` /
//! `--print-config` arguments, and usage errors as one line with exit code 2.

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

/// Parses the command line as `T::parse()` does, except that a usage error (an unknown flag, a
/// value its parser rejects) is one line on stderr, clap's message with its hints joined, and
/// exit code 2, like every other user error of the project's binaries. `--help` and `--version`
/// print as usual.
pub fn parse_args<T: clap::Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| {
        use clap::error::ErrorKind;
        if matches!(
            e.kind(),
            ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
        ) {
            e.exit()
        }
        eprintln!("{}", one_line(&e.render().to_string()));
        std::process::exit(2)
    })
}

/// clap's multi-line message as one line: blank lines, `Usage:` and the `--help` hint dropped.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[arg(long, value_parser = ["a", "b"])]
        mode: String,
    }

    #[test]
    fn a_usage_error_becomes_one_line_with_its_hints() {
        let e = Cli::try_parse_from(["x", "--mode", "c"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("error: invalid value 'c' for '--mode <MODE>'"),
            "{line}"
        );
        assert!(line.contains("[possible values: a, b]"), "{line}");
        assert!(!line.contains("--help"), "{line}");
    }
}
