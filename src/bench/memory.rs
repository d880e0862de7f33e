//! Resident memory of this process, split the way that shows zero-copy loading: pages of
//! the mapped model file (`RssFile`, shared with the page cache and free to drop) versus
//! anonymous memory the process allocated itself (`RssAnon`).

/// Memory figures in bytes, from `/proc/self/status` (Linux only).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct MemoryStatus {
    pub rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    /// Peak resident set size.
    pub rss_peak: u64,
}

/// This process's memory now, or `None` where `/proc` is unavailable.
pub fn memory_status() -> Option<MemoryStatus> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some(MemoryStatus {
        rss: field("VmRSS:")?,
        rss_anon: field("RssAnon:")?,
        rss_file: field("RssFile:")?,
        rss_peak: field("VmHWM:")?,
    })
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Resets the kernel's peak-RSS counter (`VmHWM`) so the next peak is this phase's own
/// (Linux ≥ 4.0; silently does nothing elsewhere).
pub fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
