//! Which inline stores (a URL and a Secret named in the object itself) the operator opens for a
//! namespace. An inline store must never reach what the namespace was not given: the operator's
//! own files (`file://`), its own identity (instance roles, web-identity tokens, managed
//! identities, metadata endpoints) or its own network neighbourhood (loopback, link-local). So,
//! by the operator's `--inline-stores` policy, an inline store is refused outright (`Deny`),
//! opened only with explicit credentials from its Secret (`WithCredentials`, the chart's default:
//! without them the object-store client would fall back to the operator's ambient identity), or
//! opened as it is (`Allow`, for single-team clusters). Whatever the policy, options that point
//! the client at the operator's identity and link-local endpoints are refused; `file://`,
//! `memory://` and loopback endpoints only pass with `--allow-local-stores` (the demo and e2e).

use crate::engine::StoreConfig;
use object_store::aws::AmazonS3ConfigKey as S3;
use object_store::azure::AzureConfigKey as Azure;
use object_store::gcp::GoogleConfigKey as Gcs;
use object_store::ClientConfigKey as Client;
use std::net::IpAddr;
use std::str::FromStr;

/// The `--inline-stores` policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InlineStores {
    Deny,
    #[default]
    WithCredentials,
    Allow,
}

/// What the operator lets inline stores reach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StorePolicy {
    pub inline: InlineStores,
    /// `file://`, `memory://` and loopback endpoints (for the demo and the tests).
    pub allow_local: bool,
}

/// How an option of an inline store is treated.
enum Role {
    /// Points the client at the operator's own identity or files.
    Identity,
    /// An explicit credential.
    Credential,
    /// An endpoint URL, checked for loopback and link-local hosts.
    Endpoint,
    /// Reaches the operator's loopback (the Azure storage emulator).
    Loopback,
    Other,
}

fn s3_role(key: &S3) -> Role {
    match key {
        S3::WebIdentityTokenFile
        | S3::RoleArn
        | S3::RoleSessionName
        | S3::ContainerCredentialsRelativeUri
        | S3::ContainerCredentialsFullUri
        | S3::ContainerAuthorizationTokenFile
        | S3::MetadataEndpoint
        | S3::ImdsV1Fallback => Role::Identity,
        S3::AccessKeyId | S3::SecretAccessKey | S3::SkipSignature => Role::Credential,
        S3::Endpoint | S3::S3Endpoint | S3::StsEndpoint => Role::Endpoint,
        S3::Client(client) => client_role(client),
        _ => Role::Other,
    }
}

fn gcs_role(key: &Gcs) -> Role {
    match key {
        Gcs::ServiceAccount | Gcs::ApplicationCredentials => Role::Identity,
        Gcs::ServiceAccountKey | Gcs::BearerToken | Gcs::SkipSignature => Role::Credential,
        Gcs::BaseUrl => Role::Endpoint,
        Gcs::Client(client) => client_role(client),
        _ => Role::Other,
    }
}

fn azure_role(key: &Azure) -> Role {
    match key {
        Azure::MsiEndpoint
        | Azure::ObjectId
        | Azure::MsiResourceId
        | Azure::FederatedTokenFile
        | Azure::UseAzureCli
        | Azure::FabricWorkloadHost
        | Azure::FabricSessionToken => Role::Identity,
        Azure::AccessKey
        | Azure::SasKey
        | Azure::Token
        | Azure::ClientSecret
        | Azure::SkipSignature => Role::Credential,
        Azure::Endpoint | Azure::AuthorityHost => Role::Endpoint,
        Azure::UseEmulator => Role::Loopback,
        Azure::Client(client) => client_role(client),
        _ => Role::Other,
    }
}

fn client_role(key: &Client) -> Role {
    match key {
        Client::ProxyUrl => Role::Endpoint,
        _ => Role::Other,
    }
}

/// The role of option `key` of a store with URL scheme `scheme`, `None` for a key the backend
/// does not know (the store itself refuses those).
fn role(scheme: &str, key: &str) -> Option<Role> {
    let key = key.to_ascii_lowercase();
    match scheme {
        "s3" | "s3a" => S3::from_str(&key).ok().map(|k| s3_role(&k)),
        "gs" => Gcs::from_str(&key).ok().map(|k| gcs_role(&k)),
        "az" | "adl" | "azure" | "abfs" | "abfss" => {
            Azure::from_str(&key).ok().map(|k| azure_role(&k))
        }
        _ => None,
    }
}

/// Whether `endpoint`'s host is loopback (`Some(false)`), link-local or a cloud metadata name
/// (`Some(true)`: never allowed), or neither (`None`).
fn local_host(endpoint: &str) -> Option<bool> {
    let url = url::Url::parse(endpoint).ok()?;
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let metadata_names = ["metadata.google.internal", "metadata", "instance-data"];
    if metadata_names.contains(&host.to_ascii_lowercase().as_str()) {
        return Some(true);
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Some(false);
    }
    match host.parse::<IpAddr>().ok()? {
        IpAddr::V4(ip) if ip.is_link_local() => Some(true),
        IpAddr::V6(ip) if (ip.segments()[0] & 0xffc0) == 0xfe80 => Some(true),
        ip if ip.is_loopback() => Some(false),
        _ => None,
    }
}

/// What the options of a store amount to.
struct Options {
    /// An option naming explicit credentials is present.
    credentials: bool,
    /// The first option that points the client at the operator's own identity or files.
    identity: Option<String>,
}

fn scheme_of(url: &str) -> &str {
    url.split_once("://").map_or("", |(scheme, _)| scheme)
}

/// The option that makes a backend send unsigned requests: an object store client without
/// credentials otherwise asks the machine's metadata service for the operator's identity.
fn anonymous_option(scheme: &str) -> Option<&'static str> {
    match scheme {
        "s3" | "s3a" => Some("aws_skip_signature"),
        "gs" => Some("google_skip_signature"),
        "az" | "adl" | "azure" | "abfs" | "abfss" => Some("azure_skip_signature"),
        _ => None,
    }
}

/// The `gcs_base_url` of a GCS service-account key (JSON), if it names one.
fn embedded_base_url(key: &str) -> Option<String> {
    let parsed: serde_json::Value = serde_json::from_str(key).ok()?;
    parsed.get("gcs_base_url")?.as_str().map(String::from)
}

impl StorePolicy {
    /// `file://` and `memory://` URLs, and endpoint options: link-local and metadata addresses
    /// never pass, loopback only with `--allow-local-stores` or when `loopback_trusted` (a store
    /// an administrator made). Returns what the options amount to.
    fn check_reach(&self, config: &StoreConfig, loopback_trusted: bool) -> Result<Options, String> {
        let urls = std::iter::once(&config.url).chain(config.wal_url.as_ref());
        for url in urls {
            let scheme = scheme_of(url);
            if matches!(scheme, "file" | "memory") && !self.allow_local {
                return Err(format!(
                    "{url}: {scheme}:// stores reach the operator's own filesystem or memory and \
                     are allowed only when the operator runs with --allow-local-stores"
                ));
            }
        }
        let scheme = scheme_of(&config.url);
        let loopback_allowed = self.allow_local || loopback_trusted;
        let mut found = Options {
            credentials: matches!(scheme, "file" | "memory"),
            identity: None,
        };
        for (key, value) in &config.options {
            // A GCS service-account key may carry its own base URL: an endpoint like any other.
            let embedded = match role(scheme, key) {
                Some(Role::Credential) if scheme == "gs" => embedded_base_url(value),
                _ => None,
            };
            if let Some(url) = embedded {
                self.check_endpoint(&format!("{key}.gcs_base_url"), &url, loopback_allowed)?;
            }
            match role(scheme, key) {
                Some(Role::Identity) => {
                    found.identity.get_or_insert_with(|| key.clone());
                }
                Some(Role::Credential) => found.credentials = true,
                Some(Role::Endpoint) => self.check_endpoint(key, value, loopback_allowed)?,
                Some(Role::Loopback) if !loopback_allowed => {
                    return Err(format!(
                        "option {key} points at the operator's own loopback, allowed only when the \
                         operator runs with --allow-local-stores"
                    ))
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// Link-local and metadata addresses never pass; loopback only when allowed.
    fn check_endpoint(&self, key: &str, value: &str, loopback_allowed: bool) -> Result<(), String> {
        match local_host(value) {
            Some(true) => Err(format!(
                "option {key} points at a link-local or metadata address ({value}), which no \
                 store may use"
            )),
            Some(false) if !loopback_allowed => Err(format!(
                "option {key} points at the operator's own loopback ({value}), allowed only when \
                 the operator runs with --allow-local-stores"
            )),
            _ => Ok(()),
        }
    }

    /// The inline store `config` as it may be opened, or why it may not, in words naming the
    /// rule and the fix. Under `Allow`, a store without credentials is opened anonymous: it
    /// never falls back to the operator's identity.
    pub fn admit_inline(&self, mut config: StoreConfig) -> Result<StoreConfig, String> {
        if self.inline == InlineStores::Deny {
            return Err(
                "inline stores are turned off on this cluster (--inline-stores=Deny); use a \
                 DatabaseStore an administrator made for this namespace (store: {ref: NAME})"
                    .into(),
            );
        }
        let found = self.check_reach(&config, false)?;
        if let Some(key) = found.identity {
            return Err(format!(
                "option {key} points the operator at its own identity or files; an inline store \
                 must bring its own credentials"
            ));
        }
        if found.credentials {
            return Ok(config);
        }
        let scheme = scheme_of(&config.url).to_string();
        if self.inline == InlineStores::WithCredentials {
            return Err(format!(
                "an inline {scheme}:// store needs explicit credentials in the Secret its \
                 secretRef names (for S3 AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY); without \
                 them the operator would use its own identity (--inline-stores=WithCredentials)"
            ));
        }
        if let Some(option) = anonymous_option(&scheme) {
            config.options.insert(option.into(), "true".into());
        }
        Ok(config)
    }

    /// Why the store an administrator made (a DatabaseStore) may not be opened as `config`, in
    /// words naming the rule and the fix; `None` when it may. Loopback endpoints are the
    /// administrator's choice; the operator's own identity only with `ambient`.
    pub fn refuse_database_store(&self, config: &StoreConfig) -> Option<String> {
        let found = match self.check_reach(config, true) {
            Ok(found) => found,
            Err(message) => return Some(message),
        };
        if config.ambient {
            return None;
        }
        if let Some(key) = found.identity {
            return Some(format!(
                "option {key} points the operator at its own identity or files; set \
                 credentials.ambient: true to let this store use the operator's identity"
            ));
        }
        (!found.credentials).then(|| {
            "the credentials Secret holds no credentials (for S3 AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY); add them, or set credentials.ambient: true to use the \
             operator's own identity"
                .into()
        })
    }

    /// The first of `options` (a DatabaseStore's `spec.options`) that holds a credential or
    /// points at an identity: those belong in the credentials Secret or behind `ambient`.
    pub fn secret_option_in_spec<'a>(
        scheme: &str,
        options: impl IntoIterator<Item = &'a String>,
    ) -> Option<&'a String> {
        options.into_iter().find(|key| {
            matches!(
                role(scheme, key),
                Some(Role::Credential) | Some(Role::Identity)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str, options: &[(&str, &str)]) -> StoreConfig {
        StoreConfig::with_options(url, options)
    }

    fn refused(policy: &StorePolicy, config: &StoreConfig) -> Option<String> {
        policy.admit_inline(config.clone()).err()
    }

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
    ];

    #[test]
    fn with_credentials_needs_them_and_never_an_identity_option() {
        let policy = StorePolicy::default();
        assert_eq!(refused(&policy, &config("s3://b/p", &KEYS)), None);
        let none = refused(&policy, &config("s3://b/p", &[])).unwrap();
        assert!(none.contains("explicit credentials"), "{none}");
        for identity in [
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "aws_role_arn",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "aws_metadata_endpoint",
            "AWS_IMDSV1_FALLBACK",
        ] {
            let mut options = KEYS.to_vec();
            options.push((identity, "x"));
            let refused = refused(&policy, &config("s3://b/p", &options)).unwrap();
            assert!(refused.contains(identity), "{refused}");
        }
        for (url, key) in [
            ("gs://b", "GOOGLE_APPLICATION_CREDENTIALS"),
            ("gs://b", "google_service_account"),
            ("az://c", "AZURE_FEDERATED_TOKEN_FILE"),
            ("az://c", "azure_msi_endpoint"),
            ("az://c", "azure_use_azure_cli"),
        ] {
            let refused = refused(&policy, &config(url, &[(key, "x")])).unwrap();
            assert!(refused.contains(key), "{refused}");
        }
        let gcs = config("gs://b", &[("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")]);
        assert_eq!(refused(&policy, &gcs), None);
    }

    #[test]
    fn local_stores_and_local_endpoints_need_the_flag_and_link_local_never_passes() {
        let strict = StorePolicy::default();
        let local = StorePolicy {
            allow_local: true,
            ..Default::default()
        };
        let file = config("file:///data", &[]);
        assert!(refused(&strict, &file)
            .unwrap()
            .contains("--allow-local-stores"));
        assert_eq!(refused(&local, &file), None);
        for endpoint in [
            "http://127.0.0.1:9000",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            let mut options = KEYS.to_vec();
            options.push(("AWS_ENDPOINT", endpoint));
            let s3 = config("s3://b", &options);
            assert!(
                refused(&strict, &s3).unwrap().contains("loopback"),
                "{endpoint}"
            );
            assert_eq!(refused(&local, &s3), None, "{endpoint}");
        }
        for endpoint in [
            "http://169.254.169.254",
            "http://[fe80::1]/",
            "http://metadata.google.internal",
        ] {
            let mut options = KEYS.to_vec();
            options.push(("AWS_ENDPOINT", endpoint));
            let refused = refused(&local, &config("s3://b", &options)).unwrap();
            assert!(refused.contains("link-local"), "{endpoint}: {refused}");
        }
        let mut proxied = KEYS.to_vec();
        proxied.push(("aws_proxy_url", "http://169.254.170.2"));
        assert!(refused(&local, &config("s3://b", &proxied)).is_some());
        // A base URL inside a GCS service-account key is checked like the option.
        let key = |url: &str| {
            serde_json::json!({"private_key": "k", "private_key_id": "i", "client_email": "e",
                "gcs_base_url": url, "disable_oauth": true})
            .to_string()
        };
        let metadata = key("http://169.254.169.254");
        let gs = config(
            "gs://b",
            &[("GOOGLE_SERVICE_ACCOUNT_KEY", metadata.as_str())],
        );
        assert!(refused(&local, &gs).unwrap().contains("gcs_base_url"));
        let loopback = key("http://127.0.0.1:4443");
        let gs = config(
            "gs://b",
            &[("GOOGLE_SERVICE_ACCOUNT_KEY", loopback.as_str())],
        );
        assert!(refused(&strict, &gs).unwrap().contains("loopback"));
        assert_eq!(refused(&local, &gs), None);
        let emulator = config(
            "az://c",
            &[
                ("AZURE_STORAGE_USE_EMULATOR", "true"),
                ("AZURE_STORAGE_ACCOUNT_KEY", "k"),
            ],
        );
        assert!(refused(&strict, &emulator).is_some());
        assert_eq!(refused(&local, &emulator), None);
    }

    #[test]
    fn allow_opens_what_passes_the_identity_checks_and_deny_nothing() {
        let allow = StorePolicy {
            inline: InlineStores::Allow,
            allow_local: false,
        };
        assert_eq!(refused(&allow, &config("s3://b", &[])), None);
        assert!(refused(
            &allow,
            &config("s3://b", &[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")])
        )
        .is_some());
        let deny = StorePolicy {
            inline: InlineStores::Deny,
            allow_local: true,
        };
        assert!(refused(&deny, &config("s3://b", &KEYS))
            .unwrap()
            .contains("Deny"));
    }

    #[test]
    fn allow_opens_a_store_without_credentials_unsigned_never_with_the_operators_identity() {
        let allow = StorePolicy {
            inline: InlineStores::Allow,
            allow_local: false,
        };
        for (url, option) in [
            ("s3://b", "aws_skip_signature"),
            ("gs://b", "google_skip_signature"),
            ("az://c", "azure_skip_signature"),
        ] {
            let admitted = allow.admit_inline(config(url, &[])).unwrap();
            assert_eq!(
                admitted.options.get(option).map(String::as_str),
                Some("true")
            );
            assert!(!admitted.ambient);
        }
        let signed = allow.admit_inline(config("s3://b", &KEYS)).unwrap();
        assert!(!signed.options.contains_key("aws_skip_signature"));
    }

    #[test]
    fn a_database_store_needs_credentials_or_ambient_and_may_use_loopback() {
        let policy = StorePolicy::default();
        let mut keys = KEYS.to_vec();
        keys.push(("AWS_ENDPOINT", "http://127.0.0.1:9000"));
        assert_eq!(policy.refuse_database_store(&config("s3://b", &keys)), None);
        let bare = config("s3://b", &[("AWS_REGION", "eu-west-1")]);
        let refused = policy.refuse_database_store(&bare).unwrap();
        assert!(refused.contains("ambient: true"), "{refused}");
        let ambient = StoreConfig {
            ambient: true,
            ..bare.clone()
        };
        assert_eq!(policy.refuse_database_store(&ambient), None);
        let token_file = config("s3://b", &[("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]);
        assert!(policy
            .refuse_database_store(&token_file)
            .unwrap()
            .contains("AWS_WEB_IDENTITY_TOKEN_FILE"));
        let link_local = StoreConfig {
            ambient: true,
            ..config("s3://b", &[("AWS_ENDPOINT", "http://169.254.169.254")])
        };
        assert!(policy
            .refuse_database_store(&link_local)
            .unwrap()
            .contains("link-local"));
        assert!(policy
            .refuse_database_store(&config("file:///data", &[]))
            .unwrap()
            .contains("--allow-local-stores"));
        let options = [
            "AWS_REGION".to_string(),
            "aws_secret_access_key".to_string(),
        ];
        assert_eq!(
            StorePolicy::secret_option_in_spec("s3", &options),
            Some(&options[1])
        );
    }
}
