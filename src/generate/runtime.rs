//! A loaded student: its mapped file, weights, tokenizer, chat template and thread pool.

use std::path::Path;
use std::sync::Arc;
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

/// How a CPU model holds its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightLayout {
    /// Re-laid once at load where the CPU's fastest kernel reads another layout (Q4_0,
    /// Q4_1, Q8_0 on AVX2: eight rows interleaved), the map's pages handed back as each
    /// matrix is copied: faster decode, the same resident total, but those weights become
    /// anonymous memory, which the OS cannot drop and re-read under memory pressure.
    /// llama.cpp's default too ("repack").
    #[default]
    Repacked,
    /// Every weight read in place from the memory map (zero copies; `--no-repack`).
    Mapped,
}

pub struct Runtime {
    pub file: GgufFile,
    pub model: Model,
    /// Shared so that a server's HTTP side tokenizes while the engine thread runs the model.
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    pub pool: crate::threads::Pool,
    /// Wall time from opening the file to a ready model.
    pub load_time: Duration,
}

impl Runtime {
    /// Loads `model` (a GGUF path or a catalog name, pulled if missing) with `threads`
    /// workers (0: one per core).
    pub fn load(model: &str, threads: usize, progress: bool) -> Result<Self, LoadError> {
        Self::load_on(model, threads, Device::Cpu, WeightLayout::default(), progress)
    }

    /// [`Runtime::load`] on `device`, the weights held as `layout` says.
    pub fn load_on(
        model: &str,
        threads: usize,
        device: Device,
        layout: WeightLayout,
        progress: bool,
    ) -> Result<Self, LoadError> {
        // Refuse a backend this build lacks before any download.
        device.check_built().map_err(ModelError::from)?;
        let path = crate::catalog::resolve(model, progress)?;
        Self::load_path_on(&path, threads, device, layout)
    }

    pub fn load_path(path: &Path, threads: usize) -> Result<Self, LoadError> {
        Self::load_path_on(path, threads, Device::Cpu, WeightLayout::default())
    }

    pub fn load_path_on(path: &Path, threads: usize, device: Device, layout: WeightLayout) -> Result<Self, LoadError> {
        let start = Instant::now();
        let file = GgufFile::open(path)?;
        let mut model = Model::load_on(&file, device)?;
        let pool = crate::threads::Pool::new(threads);
        if layout == WeightLayout::Repacked {
            // In the pool: the copying is shared out over its threads.
            pool.install(|| model.repack_for_cpu(&file));
        }
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
        Ok(Self {
            file,
            model,
            tokenizer: Arc::new(tokenizer),
            template: Arc::new(template),
            pool,
            load_time: start.elapsed(),
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }
}
