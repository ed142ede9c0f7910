//! Logging on rank 0: TensorBoard event files (scalars, image grids) and the progress bar.

mod image;
mod tensorboard;

pub use image::{grid, png, Rgb};
pub use syncdiff_runtime::progress::Progress;
pub use tensorboard::EventWriter;
