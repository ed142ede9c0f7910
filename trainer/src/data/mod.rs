//! Data loading: which samples each rank trains on at each step (`sampler`), deterministic in
//! (seed, epoch, global sample index) and independent of the world size,
//! and read ahead in the background (`loader`).

mod batch;
mod loader;
mod sampler;

pub use batch::Batch;
pub use loader::{Loader, LoaderError, RankShare};

pub use sampler::{gaussian, keyed_noise, LoaderState, SampleSpec, Sampler, SamplerError};
