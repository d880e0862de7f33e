//! The machine's memory read bandwidth, measured the way decode reads weights: every
//! thread of a pool streams through its share of a buffer far larger than the caches,
//! once, in order. Decode's bytes per token over this rate is its speed limit (the
//! roofline `pupil bench --bandwidth` compares tg rows against).

use std::time::Instant;

use crate::threads::{for_each_index, Pool};

/// Bytes streamed per pass: far beyond any last-level cache of the machines pupil runs on.
const BUFFER_BYTES: usize = 1 << 30;
/// Bytes per task: a sequential run the size of decode's tasks at 1B–3B widths (a few
/// hundred rows of about a kilobyte), where both threads read near each other. 4 MiB
/// tasks measured 25–31 GB/s here and decode outran them (up to 112 %); 256 KiB tasks,
/// best of 20 passes, 31–35 GB/s.
const TASK_BYTES: usize = 256 << 10;

/// Read bandwidth in bytes per second with `threads` threads: the best of `passes` passes
/// over a 1 GiB buffer (the best, as for a peak: every disturbance only slows a pass, and
/// on a shared VM there are many).
pub fn read_bandwidth(threads: usize, passes: usize) -> f64 {
    let words = BUFFER_BYTES / 8;
    // Written first, so that every page is backed by memory, not the shared zero page.
    let buffer: Vec<u64> = (0..words as u64).collect();
    let per_task = TASK_BYTES / 8;
    let tasks = words.div_ceil(per_task);
    let pool = Pool::new(threads);
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let start = Instant::now();
        pool.install(|| {
            for_each_index(tasks, |t| {
                let chunk = &buffer[t * per_task..((t + 1) * per_task).min(words)];
                // Eight independent sums, so the adds vectorize and never wait on each other.
                let mut sums = [0u64; 8];
                for group in chunk.chunks_exact(8) {
                    for (s, &v) in sums.iter_mut().zip(group) {
                        *s = s.wrapping_add(v);
                    }
                }
                std::hint::black_box(sums);
            })
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    BUFFER_BYTES as f64 / best
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg_attr(miri, ignore = "streams a gibibyte")]
    fn bandwidth_is_a_plausible_rate() {
        // Between 100 MB/s and 10 TB/s: the measurement ran, and did not skip the reads.
        let bw = super::read_bandwidth(1, 1);
        assert!((1e8..1e13).contains(&bw), "{bw} bytes/s");
    }
}
