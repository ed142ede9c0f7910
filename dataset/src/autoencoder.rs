//! The autoencoder that defines a data set's latents: ingest encodes frames with it, training's
//! validation and generation decode with it, and the data set records the sha256 of its weights.

use std::path::{Path, PathBuf};

use syncdiff_model::config::{AutoencoderKind, Config};
use syncdiff_model::vq::Autoencoder;
use syncdiff_model::weights::WeightsError;
use tch::nn::VarStore;
use tch::Device;

/// Why the configured autoencoder cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AutoencoderError {
    /// `vq_f4` without `model.autoencoder.weights`.
    #[error("model.autoencoder.weights: vq_f4 needs weights (syncdiff convert vq-f4 makes them)")]
    NoWeights,
    /// The weights file cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The weights file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The weights do not fit the network.
    #[error(transparent)]
    Weights(#[from] WeightsError),
}

/// The configured autoencoder on `device`, frozen, and the sha256 of its weights ("none" for
/// `resample`, which has none).
pub fn load_autoencoder(
    cfg: &Config,
    device: Device,
) -> Result<(VarStore, Autoencoder, String), AutoencoderError> {
    let mut vs = VarStore::new(device);
    let ae = Autoencoder::new(vs.root(), &cfg.model.autoencoder);
    let sha = match (cfg.model.autoencoder.kind, &cfg.model.autoencoder.weights) {
        (AutoencoderKind::Resample, _) => "none".to_string(),
        (AutoencoderKind::VqF4, Some(w)) => {
            let path = Path::new(w);
            syncdiff_model::weights::load(&vs, path)?;
            syncdiff_runtime::hash::sha256_file(path)
                .map(|(_, sha)| sha)
                .map_err(|e| AutoencoderError::Io {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
        }
        (AutoencoderKind::VqF4, None) => return Err(AutoencoderError::NoWeights),
    };
    vs.freeze();
    Ok((vs, ae, sha))
}
