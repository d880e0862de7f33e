//! What this CPU can run: the one place that asks it. Every kernel choice reads
//! [`active`], which is the detected set unless the calling thread narrowed it with
//! [`limited_to`] — how tests run the same code on the portable kernels to compare them
//! with the SIMD ones. A set can only be narrowed, never widened past what was detected,
//! so no override can select an instruction the CPU lacks.

use std::cell::Cell;
use std::sync::OnceLock;

/// The instruction-set extensions pupil's kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// x86-64 AVX2 with FMA and F16C (the three arrive together on every CPU that has one).
    pub avx2: bool,
    /// x86-64 AVX-512 F, BW, VL and VNNI: `vpdpbusd` on 256- and 512-bit registers (every
    /// CPU with AVX-512 VNNI has the other three).
    pub vnni: bool,
    /// aarch64 dot-product extension (`sdot`, Armv8.2); NEON itself is part of aarch64.
    pub dotprod: bool,
    /// aarch64 8-bit integer matrix multiply (`smmla`, Armv8.6), used with `sdot` (every
    /// core with it has both): a set has it only where it has `dotprod`.
    pub i8mm: bool,
}

impl Features {
    /// Nothing beyond the base instruction set: the portable kernels everywhere.
    pub const PORTABLE: Features = Features { avx2: false, vnni: false, dotprod: false, i8mm: false };

    /// The set this CPU has, detected once per process.
    pub fn detected() -> Features {
        static DETECTED: OnceLock<Features> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// Both sets' common features; the VNNI kernels are AVX2 code, so a set without AVX2
    /// has no VNNI either, and the `smmla` kernels are `sdot` code likewise.
    pub fn and(self, other: Features) -> Features {
        let (avx2, dotprod) = (self.avx2 && other.avx2, self.dotprod && other.dotprod);
        Features { avx2, vnni: avx2 && self.vnni && other.vnni, dotprod, i8mm: dotprod && self.i8mm && other.i8mm }
    }

    /// The quantized-dot path this set selects, for `--verbose` and benchmark rows.
    pub fn kernel_name(self) -> &'static str {
        if cfg!(target_arch = "aarch64") {
            return match (self.dotprod, self.i8mm) {
                (true, true) => "neon+i8mm",
                (true, false) => "neon+dotprod",
                _ => "neon",
            };
        }
        match (self.avx2, self.vnni) {
            (true, true) => "avx2+vnni",
            (true, false) => "avx2",
            _ => "scalar",
        }
    }
}

fn detect() -> Features {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let raw = Features {
            avx2: has!("avx2") && has!("fma") && has!("f16c"),
            vnni: has!("avx512vnni") && has!("avx512vl") && has!("avx512bw") && has!("avx512f"),
            dotprod: false,
            i8mm: false,
        };
        raw.and(raw)
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        let raw = Features { dotprod: has!("dotprod"), i8mm: has!("i8mm"), ..Features::PORTABLE };
        raw.and(raw)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Features::PORTABLE
    }
}

thread_local! {
    /// A narrower set this thread runs under (see [`limited_to`]).
    static LIMIT: Cell<Option<Features>> = const { Cell::new(None) };
}

/// The set kernels may use on this thread now.
#[inline]
pub fn active() -> Features {
    let detected = Features::detected();
    LIMIT.with(Cell::get).map_or(detected, |limit| detected.and(limit))
}

/// Runs `f` with this thread's kernels limited to `limit` (and to what the CPU has).
/// Parallel regions inside `f` run their items on other threads at full speed, so callers
/// that compare kernel paths run `f` without a thread pool.
pub fn limited_to<R>(limit: Features, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Features>);
    impl Drop for Restore {
        fn drop(&mut self) {
            LIMIT.with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LIMIT.with(|l| l.replace(Some(limit))));
    f()
}

/// Every extension the CPU reports that matters to LLM kernels (a superset of what
/// pupil uses), for benchmark rows and reports.
pub fn names() -> Vec<&'static str> {
    // `has!` is the architecture's detection macro, imported under that name below.
    #[allow(unused_macros)]
    macro_rules! present {
        ($($f:tt),*) => { [$(($f, has!($f))),*].into_iter().filter(|&(_, on)| on).map(|(f, _)| f).collect() };
    }
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        present!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vnni", "avxvnni")
    }
    #[cfg(target_arch = "aarch64")]
    {
        use std::arch::is_aarch64_feature_detected as has;
        present!("neon", "dotprod", "i8mm", "fp16")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_narrows_and_never_widens() {
        let all = Features { avx2: true, vnni: true, dotprod: true, i8mm: true };
        assert_eq!(limited_to(all, active), Features::detected(), "a limit cannot add features");
        assert_eq!(limited_to(Features::PORTABLE, active), Features::PORTABLE);
        assert_eq!(limited_to(Features::PORTABLE, || active().kernel_name()), {
            if cfg!(target_arch = "aarch64") {
                "neon"
            } else {
                "scalar"
            }
        });
        // The VNNI kernels are AVX2 code: without AVX2 they are off too.
        let no_avx2 = Features { avx2: false, ..all };
        assert_eq!(all.and(no_avx2), Features { dotprod: true, i8mm: true, ..Features::PORTABLE });
        // The `smmla` kernels are `sdot` code: without `dotprod` they are off too.
        let no_dotprod = Features { dotprod: false, ..all };
        assert_eq!(all.and(no_dotprod), Features { avx2: true, vnni: true, ..Features::PORTABLE });
        assert_eq!(active(), Features::detected(), "the limit ends with the call");
    }

    /// CI names the path each emulated CPU must select (`PUPIL_EXPECT_KERNELS`, set by
    /// `.ci/arm` per qemu CPU model), so a model that stopped reporting a feature could not
    /// leave that feature's kernels silently untested.
    #[test]
    fn the_expected_kernels_are_selected() {
        if let Ok(want) = std::env::var("PUPIL_EXPECT_KERNELS") {
            assert_eq!(Features::detected().kernel_name(), want, "features: {:?}", names());
        }
    }
}
