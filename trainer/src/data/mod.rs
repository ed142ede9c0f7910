//! Data loading: which samples each rank trains on at each step (`sampler`), deterministic in
//! (seed, epoch, global sample index) and independent of the world size,
//! and read ahead in the background (`loader`).

mod batch;
mod loader;
mod sampler;

pub use batch::Batch;
pub use loader::{Loader, LoaderError, RankShare};

pub use sampler::{LoaderState, SampleSpec, Sampler, SamplerError};

/// Checks that the data set at `path` (named by its configuration key `key`) was prepared with
/// the settings of `config` (resolution, latent shape, autoencoder, mask, filterbank, frame
/// and sample rates); the message names every difference.
pub fn check_dataset_settings(
    key: &str,
    path: &str,
    meta: &syncdiff_dataset::shards::StoreMeta,
    config: &syncdiff_model::config::Config,
) -> Result<(), String> {
    let d = syncdiff_dataset::shards::differences_from_config(meta, config);
    if d.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{key} {path} was prepared with other settings than this configuration ({}; prepared -> \
         configured): train with the settings it was prepared with, or prepare it again \
         (`syncdiff-dataprep lrs2 ... --config` this configuration)",
        d.join(", ")
    ))
}
