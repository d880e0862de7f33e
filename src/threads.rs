//! The worker pool the forward pass runs on: built once per session, reused for every
//! op (no per-op thread spawns).

/// A pool of `n` threads (0: one per available core).
pub fn pool(n: usize) -> rayon::ThreadPool {
    let n = if n == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { n };
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("pupil-worker-{i}"))
        .build()
        .expect("spawning worker threads")
}
