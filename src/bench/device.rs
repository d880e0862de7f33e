//! What machine and build produced a measurement, so results from different devices can
//! sit side by side in one report.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceInfo {
    /// CPU model name (`/proc/cpuinfo` on Linux, `sysctl` brand string on macOS).
    pub cpu: String,
    pub arch: &'static str,
    pub os: &'static str,
    /// Logical cores available to this process.
    pub cores: usize,
    /// SIMD features detected at run time that pupil's kernels can use.
    pub simd: Vec<&'static str>,
    /// Kernel path the quantized mat-mul uses.
    pub kernels: &'static str,
    pub pupil_version: &'static str,
    /// Cargo features this binary was built with.
    pub build_features: Vec<&'static str>,
}

impl DeviceInfo {
    pub fn detect() -> Self {
        Self {
            cpu: cpu_name(),
            arch: std::env::consts::ARCH,
            os: std::env::consts::OS,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            simd: crate::kernels::features::names(),
            kernels: crate::kernels::features::Features::detected().kernel_name(),
            pupil_version: env!("CARGO_PKG_VERSION"),
            build_features: build_features(),
        }
    }
}

fn cpu_name() -> String {
    if let Ok(text) = std::fs::read_to_string("/proc/cpuinfo") {
        for key in ["model name", "Hardware", "Processor"] {
            if let Some(line) = text.lines().find(|l| l.starts_with(key)) {
                if let Some((_, v)) = line.split_once(':') {
                    return v.trim().to_string();
                }
            }
        }
    }
    if let Ok(out) = std::process::Command::new("sysctl").args(["-n", "machdep.cpu.brand_string"]).output() {
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !s.is_empty() {
            return s;
        }
    }
    "unknown".into()
}

#[allow(clippy::vec_init_then_push, unused_mut)]
fn build_features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(debug_assertions)]
    f.push("debug");
    f
}
