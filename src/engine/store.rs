//! Object stores from a URL and a map of options (the keys of a Kubernetes Secret).

use super::error::EngineError;
use super::store_layers::{FaultPlan, InstrumentedStore, RetryingStore, StoreRetry, FAULTS_ENV};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreScheme};
use std::collections::BTreeMap;
use std::sync::Arc;
use url::Url;

/// Where a database's store is and how to reach it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StoreConfig {
    /// `file:///dir`, `s3://bucket[/prefix]`, `gs://bucket[/prefix]`, `az://container[/prefix]`, `memory:///`.
    pub url: String,
    /// Backend options such as `AWS_ACCESS_KEY_ID` or `AWS_ENDPOINT`; keys are case-insensitive.
    pub options: BTreeMap<String, String>,
    /// A separate store for the WAL, when the database keeps it apart.
    pub wal_url: Option<String>,
    /// Skip options the backend does not know instead of failing (for options gathered from the
    /// environment, which holds unrelated variables too).
    pub ignore_unknown_options: bool,
    /// Start from the backend's settings in this process's environment (`AWS_*`, `GOOGLE_*`,
    /// `AZURE_*`: the process's own identity, such as an instance role or a web-identity token)
    /// before applying `options`. Only a store an administrator marked `ambient` sets this.
    pub ambient: bool,
}

/// An opened store, rooted at the URL's path, so database paths are relative to it.
#[derive(Clone, Debug)]
pub struct Store {
    pub main: Arc<dyn ObjectStore>,
    pub wal: Option<Arc<dyn ObjectStore>>,
}

impl StoreConfig {
    /// A configuration of `url` with `options` (key, value).
    pub fn with_options(url: &str, options: &[(&str, &str)]) -> StoreConfig {
        StoreConfig {
            url: url.into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }
}

impl Store {
    /// Opens the store behind the layers every store gets: retries of transient failures over
    /// request counting (and the faults the [`FAULTS_ENV`] test hook asks for).
    pub fn open(config: &StoreConfig) -> Result<Store, EngineError> {
        let faults = FaultPlan::from_env()
            .map_err(|e| EngineError::StoreConfig(format!("{FAULTS_ENV}: {e}")))?;
        if let Some(plan) = &faults {
            tracing::warn!(?plan, "injecting object-store faults ({FAULTS_ENV} is set)");
        }
        let layered = |url: &str| -> Result<Arc<dyn ObjectStore>, EngineError> {
            let store = open_url(url, config)?;
            let counted = Arc::new(InstrumentedStore::new(store, faults.clone()));
            Ok(Arc::new(RetryingStore::new(counted, StoreRetry::default())))
        };
        let main = layered(&config.url)?;
        let wal = config.wal_url.as_deref().map(layered).transpose()?;
        Ok(Store { main, wal })
    }

    /// Whether the store answers and accepts its credentials: one listing of a prefix no database
    /// uses, in each of its stores, within `timeout`. Writes nothing.
    pub async fn probe(&self, timeout: std::time::Duration) -> Result<(), EngineError> {
        let prefix = Path::from(".slatedb-operator-probe");
        for store in std::iter::once(&self.main).chain(self.wal.as_ref()) {
            let operation = "probe the store";
            match tokio::time::timeout(timeout, store.list_with_delimiter(Some(&prefix))).await {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => return Err(EngineError::Store { operation, source }),
                Err(_) => {
                    return Err(EngineError::Timeout {
                        operation,
                        after: timeout,
                    })
                }
            }
        }
        Ok(())
    }

    /// The store holding WAL objects: the WAL store if there is one, else the main store.
    pub fn wal_or_main(&self) -> &Arc<dyn ObjectStore> {
        self.wal.as_ref().unwrap_or(&self.main)
    }
}

fn open_url(url: &str, config: &StoreConfig) -> Result<Arc<dyn ObjectStore>, EngineError> {
    let (options, lenient) = (&config.options, config.ignore_unknown_options);
    let invalid = |reason: String| EngineError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let parsed = Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    let (scheme, root) = ObjectStoreScheme::parse(&parsed).map_err(|e| invalid(e.to_string()))?;
    let config_error = |e: object_store::Error| EngineError::StoreConfig(e.to_string());
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::Local => {
            if !lenient {
                no_options(options, "file")?;
            }
            // The URL's path becomes the store's root below; the local store itself spans `/`.
            Arc::new(LocalFileSystem::new())
        }
        ObjectStoreScheme::Memory => {
            if !lenient {
                no_options(options, "memory")?;
            }
            Arc::new(InMemory::new())
        }
        ObjectStoreScheme::AmazonS3 => {
            let builder = match config.ambient {
                true => AmazonS3Builder::from_env(),
                false => AmazonS3Builder::new(),
            };
            let mut builder = builder.with_url(url);
            for (key, value) in parse_options::<AmazonS3ConfigKey>(options, lenient, "s3")? {
                builder = builder.with_config(key, value);
            }
            Arc::new(builder.build().map_err(config_error)?)
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            let builder = match config.ambient {
                true => GoogleCloudStorageBuilder::from_env(),
                false => GoogleCloudStorageBuilder::new(),
            };
            let mut builder = builder.with_url(url);
            for (key, value) in parse_options::<GoogleConfigKey>(options, lenient, "gcs")? {
                builder = builder.with_config(key, value);
            }
            Arc::new(builder.build().map_err(config_error)?)
        }
        ObjectStoreScheme::MicrosoftAzure => {
            let builder = match config.ambient {
                true => MicrosoftAzureBuilder::from_env(),
                false => MicrosoftAzureBuilder::new(),
            };
            let mut builder = builder.with_url(url);
            for (key, value) in parse_options::<AzureConfigKey>(options, lenient, "azure")? {
                builder = builder.with_config(key, value);
            }
            Arc::new(builder.build().map_err(config_error)?)
        }
        other => return Err(invalid(format!("unsupported scheme {other:?}"))),
    };
    Ok(rooted(store, root))
}

/// Parses option keys (case-insensitive) into a backend's configuration keys; an unknown key is an
/// error unless `lenient`, when it is skipped.
fn parse_options<K: std::str::FromStr>(
    options: &BTreeMap<String, String>,
    lenient: bool,
    scheme: &'static str,
) -> Result<Vec<(K, String)>, EngineError> {
    let mut parsed = Vec::new();
    for (key, value) in options {
        match key.to_ascii_lowercase().parse::<K>() {
            Ok(k) => parsed.push((k, value.clone())),
            Err(_) if lenient => {}
            Err(_) => return Err(unknown(key, scheme)),
        }
    }
    Ok(parsed)
}

fn rooted(store: Arc<dyn ObjectStore>, root: Path) -> Arc<dyn ObjectStore> {
    if root.as_ref().is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, root))
    }
}

fn unknown(key: &str, scheme: &'static str) -> EngineError {
    EngineError::UnknownOption {
        key: key.to_string(),
        scheme,
    }
}

fn no_options(options: &BTreeMap<String, String>, scheme: &'static str) -> Result<(), EngineError> {
    match options.keys().next() {
        Some(key) => Err(unknown(key, scheme)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn config(url: &str, options: &[(&str, &str)]) -> StoreConfig {
        StoreConfig::with_options(url, options)
    }

    #[test]
    fn bad_urls_and_options_are_typed_errors() {
        assert!(matches!(
            Store::open(&config("not a url", &[])),
            Err(EngineError::InvalidUrl { .. })
        ));
        assert!(matches!(
            Store::open(&config("ftp://host/x", &[])),
            Err(EngineError::InvalidUrl { .. })
        ));
        let err = Store::open(&config("s3://bucket", &[("AWS_NO_SUCH_THING", "x")])).unwrap_err();
        assert!(
            matches!(&err, EngineError::UnknownOption { key, .. } if key == "AWS_NO_SUCH_THING"),
            "{err}"
        );
        assert!(matches!(
            Store::open(&config("file:///tmp", &[("AWS_REGION", "x")])),
            Err(EngineError::UnknownOption { .. })
        ));
        // Options gathered from the environment may hold unrelated keys.
        let mut lenient = config(
            "s3://bucket",
            &[("AWS_PROFILE_NOT_AN_OPTION", "x"), ("HOME", "/root")],
        );
        lenient.ignore_unknown_options = true;
        assert!(Store::open(&lenient).is_ok());
    }

    #[test]
    fn s3_options_from_a_secret_are_accepted() {
        let store = Store::open(&config(
            "s3://bucket/prefix",
            &[
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "b"),
                ("AWS_ENDPOINT", "http://127.0.0.1:1"),
                ("AWS_ALLOW_HTTP", "true"),
                ("AWS_REGION", "us-east-1"),
            ],
        ));
        assert!(store.is_ok(), "{:?}", store.err());
    }

    /// The options a Secret gives to reach a GCS-protocol emulator (a base URL and a
    /// service-account key with `disable_oauth`, so no token or metadata server is asked) and an
    /// Azure one (an account, its key and a path-style endpoint), as the e2e test bed uses them.
    #[test]
    fn gcs_and_azure_emulator_options_from_a_secret_are_accepted() {
        let key = r#"{"private_key": "", "private_key_id": "", "client_email": "", "disable_oauth": true}"#;
        let gcs = Store::open(&config(
            "gs://bucket/prefix",
            &[
                ("GOOGLE_SERVICE_ACCOUNT_KEY", key),
                ("GOOGLE_BASE_URL", "http://127.0.0.1:1"),
                ("GOOGLE_ALLOW_HTTP", "true"),
            ],
        ));
        assert!(gcs.is_ok(), "{:?}", gcs.err());
        let azure = Store::open(&config(
            "az://container/prefix",
            &[
                ("AZURE_STORAGE_ACCOUNT_NAME", "devstoreaccount1"),
                ("azure_storage_access_key", "a2V5"),
                ("AZURE_ENDPOINT", "http://127.0.0.1:1/devstoreaccount1"),
                ("AZURE_ALLOW_HTTP", "true"),
            ],
        ));
        assert!(azure.is_ok(), "{:?}", azure.err());
        let emulator = Store::open(&config(
            "az://container",
            &[("AZURE_STORAGE_USE_EMULATOR", "true")],
        ));
        assert!(emulator.is_ok(), "{:?}", emulator.err());
    }

    #[tokio::test]
    async fn file_urls_are_rooted_at_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&config(&url, &[])).unwrap();
        store
            .main
            .put(&Path::from("db/x"), "hello".into())
            .await
            .unwrap();
        assert!(dir.path().join("db/x").exists());
    }
}
