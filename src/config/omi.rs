//! The environment names of Omi's pusher deployment, read as fallbacks under pusher's own
//! names, so that its pod spec works unchanged:
//!
//! | Omi's name | pusher's own | used when |
//! |---|---|---|
//! | `ENCRYPTION_SECRET` | `PUSHER_ENCRYPTION_SECRET` | pusher's is unset |
//! | `BUCKET_PRIVATE_CLOUD_SYNC` (a bucket name, or `gs://bucket/prefix`) | `store` (`--store`, `PUSHER_STORE`, file) | no store is given |
//! | `SERVICE_ACCOUNT_JSON` (key JSON, plain or with its quotes backslash-escaped) | `GOOGLE_SERVICE_ACCOUNT_KEY` and the other `GOOGLE_*` credentials | no `GOOGLE_*` credential is set |
//! | `METRICS_SECRET` | `metrics_token` (`--metrics-token`, `PUSHER_METRICS_TOKEN`, file) | no token is given; it guards `/metrics` and `/debug/memory` |
//!
//! Every other variable (Omi's pods get a long tail of them) is ignored. Which name each value
//! came from is logged at start; a secret never is.
//!
//! Invariant: everything here reads the environment through a lookup function, so the rules
//! are tested without touching the process environment.

use super::Config;

/// Omi's name of the encryption secret.
pub const ENCRYPTION_SECRET: &str = "ENCRYPTION_SECRET";
/// Omi's GCS bucket of private-cloud audio.
pub const BUCKET_PRIVATE_CLOUD_SYNC: &str = "BUCKET_PRIVATE_CLOUD_SYNC";
/// Omi's service-account key (JSON text).
pub const SERVICE_ACCOUNT_JSON: &str = "SERVICE_ACCOUNT_JSON";
/// Omi's bearer secret for the metrics endpoints.
pub const METRICS_SECRET: &str = "METRICS_SECRET";

/// The GCS credential variables object_store reads itself (`GoogleCloudStorageBuilder::from_env`
/// and its default credential chain), in the order they are reported.
const GOOGLE_CREDENTIALS: [&str; 6] = [
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_SERVICE_ACCOUNT",
    "GOOGLE_SERVICE_ACCOUNT_PATH",
    "SERVICE_ACCOUNT",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GOOGLE_BEARER_TOKEN",
];

/// Where a setting's value came from, for the start-up log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Origin {
    /// Not set.
    #[default]
    Unset,
    /// pusher's own option (flag, `PUSHER_*` variable or config file).
    Option,
    /// An Omi variable of this name.
    Omi(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Unset => f.write_str("not set"),
            Origin::Option => f.write_str("pusher's option"),
            Origin::Omi(name) => f.write_str(name),
        }
    }
}

/// Where the settings that Omi's names can give came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Origins {
    /// Where `store` came from (pusher's option, `BUCKET_PRIVATE_CLOUD_SYNC`, or unset).
    pub store: Origin,
    /// Where `metrics_token` came from (pusher's option, `METRICS_SECRET`, or unset).
    pub metrics_token: Origin,
}

/// Fills `config.store` and `config.metrics_token` from Omi's names where pusher's are unset.
pub fn apply(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    config.origins.store = match (&config.store, env(BUCKET_PRIVATE_CLOUD_SYNC)) {
        (Some(_), _) => Origin::Option,
        (None, Some(bucket)) => {
            config.store = Some(bucket_url(&bucket)?);
            Origin::Omi(BUCKET_PRIVATE_CLOUD_SYNC)
        }
        (None, None) => Origin::Unset,
    };
    config.origins.metrics_token = match (&config.metrics_token, env(METRICS_SECRET)) {
        (Some(_), _) => Origin::Option,
        (None, Some(secret)) if secret.is_empty() => {
            return Err(format!("{METRICS_SECRET} is set but empty"));
        }
        (None, Some(secret)) => {
            config.metrics_token = Some(secret);
            Origin::Omi(METRICS_SECRET)
        }
        (None, None) => Origin::Unset,
    };
    Ok(())
}

/// `gs://<bucket>` for a plain bucket name; a `gs://` URL as it is.
fn bucket_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.starts_with("gs://") {
        return Ok(value.to_owned());
    }
    let valid = (3..=222).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !valid {
        return Err(format!(
            "{BUCKET_PRIVATE_CLOUD_SYNC} = {value:?} is not a GCS bucket name (3-222 of a-z 0-9 - _ .) \
             or a gs:// URL"
        ));
    }
    Ok(format!("gs://{value}"))
}

/// Where the GCS client's credentials come from, and the key to give it when that is Omi's
/// `SERVICE_ACCOUNT_JSON` (else object_store reads its own `GOOGLE_*` variables, or falls back
/// to application default credentials and the metadata server: Workload Identity).
pub fn gcs_credentials(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Option<String>, &'static str), String> {
    if let Some(name) = GOOGLE_CREDENTIALS
        .into_iter()
        .find(|name| env(name).is_some())
    {
        return Ok((None, name));
    }
    match env(SERVICE_ACCOUNT_JSON) {
        Some(raw) => Ok((Some(service_account_key(&raw)?), SERVICE_ACCOUNT_JSON)),
        None => Ok((
            None,
            "application default credentials or the metadata server (Workload Identity)",
        )),
    }
}

/// A service-account key as JSON object text: `raw` as it is, or with its quotes
/// backslash-escaped (`{\"type\": …}`), or the whole text as a JSON string literal. The error
/// never quotes the value (it holds a private key).
pub fn service_account_key(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let is_object = |text: &str| {
        serde_json::from_str::<serde_json::Value>(text).is_ok_and(|value| value.is_object())
    };
    if is_object(raw) {
        return Ok(raw.to_owned());
    }
    // Escaped once more as a whole (`\"` and `\\n`): the text of a JSON string.
    for literal in [raw.to_owned(), format!("\"{raw}\"")] {
        if let Ok(text) = serde_json::from_str::<String>(&literal)
            && is_object(&text)
        {
            return Ok(text);
        }
    }
    // Only the quotes escaped; `\n` in the private key is still JSON's own escape.
    let unquoted = raw.replace("\\\"", "\"");
    if is_object(&unquoted) {
        return Ok(unquoted);
    }
    Err(format!(
        "{SERVICE_ACCOUNT_JSON} is not a service-account key: not a JSON object, escaped or not \
         ({} bytes)",
        raw.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn omi_names_fill_only_what_pusher_was_not_given() {
        let omi = env(&[
            (BUCKET_PRIVATE_CLOUD_SYNC, "omi-private-cloud"),
            (METRICS_SECRET, "m-secret"),
            ("OPENAI_API_KEY", "ignored"),
        ]);
        let mut config = Config::default();
        apply(&mut config, &omi).unwrap();
        assert_eq!(config.store.as_deref(), Some("gs://omi-private-cloud"));
        assert_eq!(config.metrics_token.as_deref(), Some("m-secret"));
        assert_eq!(
            config.origins,
            Origins {
                store: Origin::Omi(BUCKET_PRIVATE_CLOUD_SYNC),
                metrics_token: Origin::Omi(METRICS_SECRET),
            }
        );
        let mut given = Config {
            store: Some("file:///srv/audio".into()),
            metrics_token: Some("own".into()),
            ..Config::default()
        };
        apply(&mut given, &omi).unwrap();
        assert_eq!(given.store.as_deref(), Some("file:///srv/audio"));
        assert_eq!(given.metrics_token.as_deref(), Some("own"));
        assert_eq!(given.origins.store, Origin::Option);
        let mut nothing = Config::default();
        apply(&mut nothing, &env(&[])).unwrap();
        assert_eq!((nothing.store, nothing.metrics_token), (None, None));
        assert_eq!(nothing.origins, Origins::default());
    }

    #[test]
    fn the_bucket_may_be_a_name_or_a_gs_url() {
        assert_eq!(bucket_url("a-b_c.d1").unwrap(), "gs://a-b_c.d1");
        assert_eq!(bucket_url("gs://b/prefix").unwrap(), "gs://b/prefix");
        for bad in ["", "ab", "Upper", "a/b", "s3://b", "b b"] {
            let err = bucket_url(bad).unwrap_err();
            assert!(err.contains(BUCKET_PRIVATE_CLOUD_SYNC), "{bad}: {err}");
        }
    }

    #[test]
    fn an_empty_metrics_secret_is_refused() {
        let err = apply(&mut Config::default(), &env(&[(METRICS_SECRET, "")])).unwrap_err();
        assert!(err.contains(METRICS_SECRET), "{err}");
    }

    const KEY: &str = r#"{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n", "client_email": "p@x.iam.gserviceaccount.com"}"#;

    #[test]
    fn a_service_account_key_is_read_plain_or_escaped() {
        let plain: serde_json::Value = serde_json::from_str(KEY).unwrap();
        let quotes_escaped = KEY.replace('"', "\\\"");
        let string_literal = serde_json::to_string(KEY).unwrap();
        let literal_inner = &string_literal[1..string_literal.len() - 1];
        for raw in [KEY, &quotes_escaped, &string_literal, literal_inner] {
            let key = service_account_key(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            let parsed: serde_json::Value = serde_json::from_str(&key).unwrap();
            assert_eq!(parsed, plain, "{raw}");
            assert!(parsed["private_key"].as_str().unwrap().contains("\nMIIE\n"));
        }
        let err = service_account_key(r#"{"type": "service_account", broken"#).unwrap_err();
        assert!(
            !err.contains("service_account\""),
            "the value is never quoted: {err}"
        );
    }

    #[test]
    fn googles_own_credentials_win_over_omis() {
        let both = env(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", "/var/key.json"),
            (SERVICE_ACCOUNT_JSON, KEY),
        ]);
        assert_eq!(
            gcs_credentials(&both).unwrap(),
            (None, "GOOGLE_APPLICATION_CREDENTIALS")
        );
        let (key, source) = gcs_credentials(&env(&[(SERVICE_ACCOUNT_JSON, KEY)])).unwrap();
        assert_eq!((key.as_deref(), source), (Some(KEY), SERVICE_ACCOUNT_JSON));
        let (key, source) = gcs_credentials(&env(&[])).unwrap();
        assert!(
            key.is_none() && source.contains("metadata server"),
            "{source}"
        );
        assert!(gcs_credentials(&env(&[(SERVICE_ACCOUNT_JSON, "nope")])).is_err());
    }
}
