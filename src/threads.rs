//! The worker pool the forward pass runs on (built once per session, reused for every
//! op: no per-op thread spawns), and process-level memory hygiene.

/// A pool of `n` threads (0: one per available core).
pub fn pool(n: usize) -> rayon::ThreadPool {
    let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("pupil-worker-{i}"))
        .build()
        .expect("spawning worker threads")
}

/// Returns freed heap pages to the OS (glibc keeps them otherwise), so resident memory
/// after loading reflects what the model actually holds. A no-op elsewhere.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free memory; it is thread-safe in glibc.
        unsafe {
            malloc_trim(0);
        }
    }
}
