//! A loaded student: its mapped file, weights, tokenizer, chat template and thread pool.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::catalog::CatalogError;
use crate::gguf::{GgufError, GgufFile};
use crate::model::{Device, Model, ModelError};
use crate::tokenizer::{ChatTemplate, TemplateError, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("tokenizer has {tokenizer} tokens but the model's output has {model} rows")]
    VocabMismatch { tokenizer: usize, model: usize },
}

pub struct Runtime {
    pub file: GgufFile,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: ChatTemplate,
    pub pool: crate::threads::Pool,
    /// Wall time from opening the file to a ready model.
    pub load_time: Duration,
}

impl Runtime {
    /// Loads `model` (a GGUF path or a catalog name, pulled if missing) with `threads`
    /// workers (0: one per core).
    pub fn load(model: &str, threads: usize, progress: bool) -> Result<Self, LoadError> {
        Self::load_on(model, threads, Device::Cpu, progress)
    }

    /// [`Runtime::load`] on `device`.
    pub fn load_on(model: &str, threads: usize, device: Device, progress: bool) -> Result<Self, LoadError> {
        // Refuse a backend this build lacks before any download.
        device.check_built().map_err(ModelError::from)?;
        let path = crate::catalog::resolve(model, progress)?;
        Self::load_path_on(&path, threads, device)
    }

    pub fn load_path(path: &Path, threads: usize) -> Result<Self, LoadError> {
        Self::load_path_on(path, threads, Device::Cpu)
    }

    pub fn load_path_on(path: &Path, threads: usize, device: Device) -> Result<Self, LoadError> {
        let start = Instant::now();
        let file = GgufFile::open(path)?;
        let pool = crate::threads::Pool::new(threads);
        // In the pool: re-laying weights for the CPU kernels is shared out over its threads.
        let model = pool.install(|| Model::load_on(&file, device))?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        if tokenizer.n_vocab() != model.cfg.n_vocab {
            return Err(LoadError::VocabMismatch { tokenizer: tokenizer.n_vocab(), model: model.cfg.n_vocab });
        }
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or("").to_string();
        let template = ChatTemplate::new(
            tokenizer.chat_template(),
            &model.cfg.architecture,
            &text(tokenizer.bos()),
            &text(tokenizer.eos()),
        )?;
        // Building the tokenizer churns through temporary strings; hand that heap back.
        crate::threads::release_free_heap();
        Ok(Self { file, model, tokenizer, template, pool, load_time: start.elapsed() })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}
