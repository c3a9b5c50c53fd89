//! The object store named by `--store` (docs/downstream.md §2).
//!
//! | URL | store | credentials |
//! |---|---|---|
//! | `file:///abs/dir` (default `file://<data_dir>/cloud`) | local directory, created if missing, fsync on every put | none |
//! | `s3://bucket/prefix` | S3 or an S3-compatible server | `AWS_*` (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, …) |
//! | `gs://bucket/prefix` | Google Cloud Storage | `GOOGLE_*` (`GOOGLE_SERVICE_ACCOUNT`, …) or the metadata server |
//! | `az://container/prefix` | Azure Blob Storage | `AZURE_*` (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY`, …) |
//!
//! The prefix (if any) is put before every object key. Credentials never come from the URL.
//!
//! object_store retries inside one call too; its retries are bounded here by
//! [`INNER_RETRIES_MAX`] and by the per-attempt timeout, so that pusher's own retry loop (forever,
//! with its backoff and health metric) is what a failing store meets.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::config::Config;
use crate::config::store_location::StoreLocation;

/// Retries object_store makes inside one upload attempt (its default is 10 over 3 minutes).
pub const INNER_RETRIES_MAX: usize = 3;
/// The cloud builders [`open`] starts from: normally [`CloudBuilders::from_env`]; tests pass
/// builders configured by hand instead of changing the process environment.
pub struct CloudBuilders {
    /// For `s3://` URLs.
    pub s3: AmazonS3Builder,
    /// For `gs://` URLs.
    pub gcs: GoogleCloudStorageBuilder,
    /// For `az://` URLs.
    pub azure: MicrosoftAzureBuilder,
}

impl CloudBuilders {
    /// Each cloud's builder configured from its SDK's environment variables; for GCS, Omi's
    /// `SERVICE_ACCOUNT_JSON` when no `GOOGLE_*` credential is set. Also says where the GCS
    /// credentials come from.
    pub fn from_env() -> Result<(CloudBuilders, &'static str), String> {
        let env = |name: &str| std::env::var(name).ok();
        let (key, gcs_source) = crate::config::omi::gcs_credentials(&env)?;
        let mut gcs = GoogleCloudStorageBuilder::from_env();
        if let Some(key) = key {
            gcs = gcs.with_service_account_key(key);
        }
        let builders = CloudBuilders {
            s3: AmazonS3Builder::from_env(),
            gcs,
            azure: MicrosoftAzureBuilder::from_env(),
        };
        Ok((builders, gcs_source))
    }
}

/// An opened store, and whether it keeps object attributes such as the content type (the
/// local filesystem store refuses puts that carry them).
#[derive(Clone)]
pub struct Store {
    /// The store, with the URL's prefix before every key.
    pub objects: Arc<dyn ObjectStore>,
    /// False for `file://` stores: puts carry no content type.
    pub keeps_attributes: bool,
}

/// What [`open_configured`] opened, for the start-up log.
pub struct Opened {
    /// The opened store.
    pub store: Store,
    /// The parsed `--store` URL it was opened from.
    pub location: StoreLocation,
    /// Where its credentials come from (never a secret).
    pub credentials: &'static str,
}

/// The store of `config` (`--store`, default `<data_dir>/cloud`), credentials from the environment.
pub fn open_configured(config: &Config) -> Result<Opened, String> {
    let location = StoreLocation::from_config(config)?;
    let (builders, gcs_source) = CloudBuilders::from_env()?;
    let credentials = match location {
        StoreLocation::Local(_) => "none (local files)",
        StoreLocation::S3 { .. } => "AWS_* variables, else the instance or pod identity",
        StoreLocation::Gcs { .. } => gcs_source,
        StoreLocation::Azure { .. } => "AZURE_* variables, else the managed identity",
    };
    let objects = open(
        &location,
        builders,
        Duration::from_millis(config.upload_timeout_ms),
    )?;
    Ok(Opened {
        store: Store {
            objects,
            keeps_attributes: !matches!(location, StoreLocation::Local(_)),
        },
        location,
        credentials,
    })
}

/// Builds the store of `location`; `attempt_timeout` bounds object_store's own retries.
pub fn open(
    location: &StoreLocation,
    builders: CloudBuilders,
    attempt_timeout: Duration,
) -> Result<Arc<dyn ObjectStore>, String> {
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: INNER_RETRIES_MAX,
        retry_timeout: attempt_timeout,
    };
    let fail = |e: object_store::Error| format!("store {location}: {e}");
    match location {
        StoreLocation::Local(dir) => open_local(dir).map_err(|e| format!("store {location}: {e}")),
        StoreLocation::S3 { bucket, prefix } => {
            let store = builders
                .s3
                .with_bucket_name(bucket)
                .with_retry(retry)
                .build()
                .map_err(fail)?;
            Ok(with_prefix(store, prefix))
        }
        StoreLocation::Gcs { bucket, prefix } => {
            let store = builders
                .gcs
                .with_bucket_name(bucket)
                .with_retry(retry)
                .build()
                .map_err(fail)?;
            Ok(with_prefix(store, prefix))
        }
        StoreLocation::Azure { container, prefix } => {
            let store = builders
                .azure
                .with_container_name(container)
                .with_retry(retry)
                .build()
                .map_err(fail)?;
            Ok(with_prefix(store, prefix))
        }
    }
}

fn open_local(dir: &FsPath) -> Result<Arc<dyn ObjectStore>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // fsync: a put is confirmed only once durable, as remote stores promise, because the batch
    // then leaves the spill log.
    let store = LocalFileSystem::new_with_prefix(dir)
        .map_err(|e| e.to_string())?
        .with_fsync(true);
    Ok(Arc::new(store))
}

fn with_prefix<T: ObjectStore>(store: T, prefix: &Path) -> Arc<dyn ObjectStore> {
    if prefix.is_root() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;
    use object_store::aws::AmazonS3ConfigKey;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn none() -> CloudBuilders {
        CloudBuilders {
            s3: AmazonS3Builder::new(),
            gcs: GoogleCloudStorageBuilder::new(),
            azure: MicrosoftAzureBuilder::new(),
        }
    }

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            StoreLocation::parse("file:///var/lib/pusher/cloud").unwrap(),
            StoreLocation::Local(PathBuf::from("/var/lib/pusher/cloud"))
        );
        assert_eq!(
            StoreLocation::parse("s3://bucket/a/b/").unwrap(),
            StoreLocation::S3 {
                bucket: "bucket".into(),
                prefix: Path::from("a/b"),
            }
        );
        assert_eq!(
            StoreLocation::parse("gs://my_bucket").unwrap(),
            StoreLocation::Gcs {
                bucket: "my_bucket".into(),
                prefix: Path::ROOT,
            }
        );
        assert_eq!(
            StoreLocation::parse("az://container/p").unwrap(),
            StoreLocation::Azure {
                container: "container".into(),
                prefix: Path::from("p"),
            }
        );
        let s3 = StoreLocation::parse("s3://b/p/q").unwrap();
        assert_eq!(s3.to_string(), "s3://b/p/q");
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        for (url, reason) in [
            ("", "expected file:///abs/dir"),
            ("/abs/dir", "expected file:///abs/dir"),
            ("http://example.com/x", "scheme \"http\" is not supported"),
            ("ftp://host/x", "not supported"),
            ("file://relative/dir", "absolute path"),
            ("s3:///prefix", "bucket or container name is missing"),
            ("s3://key:secret@bucket/p", "credentials in the URL"),
            ("s3://bucket/p?region=x", "query"),
            ("s3://bucket:9000/p", "port"),
            ("s3://bucket/a//b", "bad prefix"),
            ("gs://bucket/a%20b", "percent-encoded"),
        ] {
            let err = StoreLocation::parse(url).unwrap_err();
            assert!(err.contains(reason), "{url}: {err}");
        }
    }

    #[test]
    fn default_is_data_dir_cloud() {
        let config = Config {
            data_dir: PathBuf::from("/tmp/x"),
            ..Config::default()
        };
        assert_eq!(
            StoreLocation::from_config(&config).unwrap(),
            StoreLocation::Local(PathBuf::from("/tmp/x/cloud"))
        );
    }

    #[test]
    fn file_store_creates_its_directory_and_stores_under_it() {
        let dir = std::env::temp_dir().join(format!("pusher-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let root = dir.join("nested/cloud");
        let url = format!("file://{}", root.display());
        let location = StoreLocation::parse(&url).unwrap();
        let store = open(&location, none(), Duration::from_secs(5)).unwrap();
        let key = Path::parse("chunks/u/c/1.000.bin").unwrap();
        runtime().block_on(async {
            store.put(&key, b"audio".to_vec().into()).await.unwrap();
            let got = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], b"audio");
        });
        assert_eq!(
            std::fs::read(root.join("chunks/u/c/1.000.bin")).unwrap(),
            b"audio"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A `moto_server` child, killed when dropped.
    struct Moto {
        child: Child,
        addr: SocketAddr,
    }

    impl Moto {
        fn start() -> Moto {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run moto_server ({e}): this test needs the S3 emulator; install \
                         it with `pip install 'moto[server]'` (tests/python/requirements.txt)"
                    )
                });
            let mut moto = Moto {
                child,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(moto.addr).is_err() {
                if let Some(status) = moto.child.try_wait().unwrap() {
                    panic!("moto_server exited at start: {status}");
                }
                assert!(
                    Instant::now() < deadline,
                    "moto_server did not listen in 30 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            moto
        }
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn s3_store_against_a_local_s3_server() {
        let moto = Moto::start();
        let endpoint = format!("http://{}", moto.addr);
        let mut s3 = AmazonS3Builder::new();
        // The same keys `AmazonS3Builder::from_env` reads from AWS_* variables.
        for (name, value) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT", endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ] {
            let key: AmazonS3ConfigKey = name.to_ascii_lowercase().parse().unwrap();
            s3 = s3.with_config(key, value);
        }
        let bucket_root = CloudBuilders {
            s3: s3.clone(),
            ..none()
        };
        let builders = CloudBuilders { s3, ..none() };
        let location = StoreLocation::parse("s3://pusher-test/audio/v1").unwrap();
        let store = open(&location, builders, Duration::from_secs(10)).unwrap();
        let root = StoreLocation::parse("s3://pusher-test").unwrap();
        let root = open(&root, bucket_root, Duration::from_secs(10)).unwrap();
        let key = Path::parse("chunks/user-1/conv-1/1700000000.123.bin").unwrap();
        runtime().block_on(async {
            let client = reqwest::Client::new();
            let created = client
                .put(format!("{endpoint}/pusher-test"))
                .send()
                .await
                .unwrap();
            assert!(created.status().is_success(), "{}", created.status());

            store.put(&key, b"pcm audio".to_vec().into()).await.unwrap();
            let got = store.get(&key).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], b"pcm audio");

            // The prefix is applied: the object sits at audio/v1/chunks/... in the bucket.
            let full = Path::parse(format!("audio/v1/{key}")).unwrap();
            let got = root.get(&full).await.unwrap().bytes().await.unwrap();
            assert_eq!(&got[..], b"pcm audio");
        });
    }
}
