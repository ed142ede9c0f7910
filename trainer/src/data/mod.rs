//! Data loading: which samples each rank trains on at each step (`sampler`), deterministic in
//! (seed, epoch, global sample index) and independent of the world size.

mod batch;
mod sampler;

pub use batch::Batch;

pub use sampler::{gaussian, LoaderState, SampleSpec, Sampler, SamplerError};
