//! Where uploads go: the store URL of `--store` parsed and checked (docs/downstream.md §2), so
//! that a bad URL is a configuration error at start; `upload::store` opens it.

use std::fmt;
use std::path::PathBuf;

use object_store::path::Path;

use super::Config;

/// Longest store URL accepted, in bytes.
pub const STORE_URL_BYTES_MAX: usize = 4096;
/// Directory under `data_dir` of the default local store.
pub const DEFAULT_LOCAL_DIR: &str = "cloud";

/// Where uploads go, parsed from a store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A local directory (absolute, or relative to the working directory for the default).
    Local(PathBuf),
    /// `s3://bucket/prefix`: S3 or an S3-compatible server.
    S3 {
        /// The bucket's name.
        bucket: String,
        /// Put before every object key (may be empty).
        prefix: Path,
    },
    /// `gs://bucket/prefix`: Google Cloud Storage.
    Gcs {
        /// The bucket's name.
        bucket: String,
        /// Put before every object key (may be empty).
        prefix: Path,
    },
    /// `az://container/prefix`: Azure Blob Storage.
    Azure {
        /// The container's name.
        container: String,
        /// Put before every object key (may be empty).
        prefix: Path,
    },
}

impl StoreLocation {
    /// Parses `file:///abs/dir`, `s3://bucket/prefix`, `gs://bucket/prefix` or
    /// `az://container/prefix`; the error says what is wrong and what is accepted.
    pub fn parse(raw: &str) -> Result<StoreLocation, String> {
        let fail = |why: &str| Err(format!("store URL {raw:?}: {why}"));
        if raw.len() > STORE_URL_BYTES_MAX {
            return fail(&format!("longer than {STORE_URL_BYTES_MAX} bytes"));
        }
        let url = match url::Url::parse(raw) {
            Ok(url) => url,
            Err(e) => {
                return fail(&format!(
                    "{e}; expected file:///abs/dir, s3://bucket/prefix, gs://bucket/prefix or \
                     az://container/prefix"
                ));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return fail("credentials in the URL are not accepted; use the environment");
        }
        if url.query().is_some() || url.fragment().is_some() {
            return fail("a query or fragment is not accepted");
        }
        if url.scheme() == "file" {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return fail("a file URL needs an absolute path: file:///abs/dir");
            }
            return match url.to_file_path() {
                Ok(path) if path.is_absolute() => Ok(StoreLocation::Local(path)),
                _ => fail("a file URL needs an absolute path: file:///abs/dir"),
            };
        }
        let Some(name) = url.host_str().filter(|h| !h.is_empty()) else {
            return fail("the bucket or container name is missing");
        };
        if url.port().is_some() {
            return fail("a port is not accepted; set the endpoint in the environment");
        }
        let name = name.to_string();
        let path = url.path();
        if path.contains('%') {
            return fail("percent-encoded characters in the prefix are not supported");
        }
        let prefix = match Path::parse(path) {
            Ok(prefix) => prefix,
            Err(e) => return fail(&format!("bad prefix: {e}")),
        };
        match url.scheme() {
            "s3" => Ok(StoreLocation::S3 {
                bucket: name,
                prefix,
            }),
            "gs" => Ok(StoreLocation::Gcs {
                bucket: name,
                prefix,
            }),
            "az" => Ok(StoreLocation::Azure {
                container: name,
                prefix,
            }),
            other => fail(&format!(
                "scheme {other:?} is not supported; use file, s3, gs or az"
            )),
        }
    }

    /// `config.store`, or `<data_dir>/cloud` when unset.
    pub fn from_config(config: &Config) -> Result<StoreLocation, String> {
        match &config.store {
            Some(raw) => StoreLocation::parse(raw),
            None => Ok(StoreLocation::Local(
                config.data_dir.join(DEFAULT_LOCAL_DIR),
            )),
        }
    }
}

impl fmt::Display for StoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreLocation::Local(path) => write!(f, "file://{}", path.display()),
            StoreLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
            StoreLocation::Gcs { bucket, prefix } => write!(f, "gs://{bucket}/{prefix}"),
            StoreLocation::Azure { container, prefix } => write!(f, "az://{container}/{prefix}"),
        }
    }
}
