//! From prompt to text: a loaded model ([`Runtime`]), sampling ([`Sampler`]) and the
//! generation loop with its KV-cache lifetime, streaming and stop rules ([`Session`]).

pub mod draft;
pub mod runtime;
pub mod sampler;
pub mod session;

pub use crate::rng::Rng;
pub use runtime::{LoadError, Runtime, WeightLayout};
pub use sampler::{Sampler, SamplerConfig, TokenLogprob};
pub use session::{Generation, GenerationError, Session, StopReason, Timings};
