//! On-device distillation: LoRA adapters trained on a frozen, memory-mapped quantized
//! student from cached teacher targets.
//!
//! [`frozen`] multiplies by the frozen weights (forward and backward), `tape` runs the
//! model's layer graph recording what each op's backward needs, [`student`] is the
//! trainable forward/backward pass over it, [`loss`] turns teacher targets into a loss and its
//! gradient, [`optim`] updates the adapters, [`checkpoint`] saves and resumes training,
//! and [`distill`] runs the loop.

pub mod baking;
pub mod checkpoint;
pub mod distill;
pub mod frozen;
pub mod loss;
pub mod optim;
pub mod student;
mod tape;

pub use student::{LoraParams, Student};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Device(#[from] crate::model::DeviceError),
}
