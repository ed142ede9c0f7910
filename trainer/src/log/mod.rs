//! Logging: TensorBoard event files (rank 0).

mod tensorboard;

pub use tensorboard::EventWriter;
