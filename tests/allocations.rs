//! A decode step allocates only the logits it returns: the forward pass takes every buffer
//! from the KV cache's scratch arena, products reuse their quantized activations and
//! attention its weights from call to call. Counted with a counting global allocator, so
//! this test has its process alone.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use pupil::generate::Runtime;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Both families: Gemma 3's extra norms (per head, after attention and the MLP) and its
/// two RoPE tables run in place like the rest.
#[test]
fn a_decode_step_allocates_per_call_not_per_layer() {
    for name in [SMOLLM2, GEMMA3] {
        let Some(path) = model(name) else { return };
        let rt = Runtime::load_path(&path, 2).unwrap();
        let mut cache = rt.model.new_cache(128).unwrap();
        let prompt: Vec<u32> = (100..164).collect();
        rt.pool.install(|| rt.model.forward(&prompt, &mut cache)).unwrap();
        let step = |cache: &mut pupil::model::KvCache| {
            let hidden = rt.pool.install(|| rt.model.forward(&[42], cache)).unwrap();
            rt.pool.install(|| rt.model.logits(hidden)).unwrap()
        };
        step(&mut cache); // the first step sizes the reusable buffers
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        step(&mut cache);
        let per_step = ALLOCATIONS.load(Ordering::Relaxed) - before;
        let layers = rt.model.cfg.n_layer;
        eprintln!("{name}: one decode step: {per_step} allocations ({layers} layers)");
        // The step's one allocation is the logits it returns.
        assert!(per_step <= 1, "{name}: {per_step} allocations for one token: something allocates per call");
    }
}
