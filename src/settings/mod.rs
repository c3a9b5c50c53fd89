//! Per-user settings (docs/downstream.md §5), loaded once per session before the upgrade completes,
//! from one of two sources ([`SettingsSource`]): a TOML file ([`SettingsFile`], the default) or an
//! HTTP endpoint ([`source::HttpSettings`], fetched by egress and cached with a TTL).
//!
//! Invariant: every user's settings from the file are resolved (the `[default]` table merged
//! under the user's overrides) when the file is loaded, so a lookup on the connection path is one
//! hash probe and an `Arc` clone: no parsing, no I/O. Every accepted `UserSettings` has at most
//! [`APPS_MAX`] apps.

pub mod source;

pub use source::{HttpSettings, SettingsSource};

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

/// How the user's private-cloud audio is stored (docs/downstream.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DataProtectionLevel {
    /// `standard`: stored as sent, a `.bin` object.
    Standard,
    /// `enhanced`: encrypted by pusher with the user's key, an `.enc` object (the default).
    #[default]
    Enhanced,
    /// `e2ee`: stored as sent, a `.bin` object (pusher does not encrypt it).
    E2ee,
}

/// What an app subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `transcript_processed`: the app gets transcript items.
    TranscriptProcessed,
    /// `audio_bytes`: the app gets app-audio items (about 4 s of audio each, docs/protocol.md §3).
    AudioBytes,
    /// Any other trigger name: accepted and ignored.
    #[serde(other)]
    Other,
}

/// One enabled app of the user (docs/downstream.md §1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct App {
    /// The app's id (the `app_id` of a relayed message).
    pub id: String,
    /// Where the app's items are POSTed (`?uid=` or `?sample_rate=&uid=` appended).
    pub webhook_url: String,
    /// What the app subscribes to; empty by default.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
}

/// The user's developer audio webhook (docs/protocol.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AudioBytesWebhook {
    /// Where webhook-audio items are POSTed.
    pub url: String,
    /// Seconds of audio per item (0: every 101); capped at `webhook_audio_delay_s_max` and 60.
    #[serde(default)]
    pub delay_seconds: u32,
}

/// One user's settings, as docs/downstream.md §5 shapes them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    /// Whether the user's audio is logged and uploaded (docs/downstream.md §2); default true.
    #[serde(default = "default_true")]
    pub private_cloud_sync_enabled: bool,
    /// How that audio is stored; default `enhanced`.
    #[serde(default)]
    pub data_protection_level: DataProtectionLevel,
    /// The user's transcript webhook: gets every transcript item.
    #[serde(default)]
    pub realtime_transcript_webhook: Option<String>,
    /// The user's audio webhook, if set.
    #[serde(default)]
    pub audio_bytes_webhook: Option<AudioBytesWebhook>,
    /// The user's enabled apps, at most [`APPS_MAX`].
    #[serde(default)]
    pub apps: Vec<App>,
}

fn default_true() -> bool {
    true
}

impl Default for UserSettings {
    fn default() -> Self {
        UserSettings {
            private_cloud_sync_enabled: true,
            data_protection_level: DataProtectionLevel::Enhanced,
            realtime_transcript_webhook: None,
            audio_bytes_webhook: None,
            apps: Vec::new(),
        }
    }
}

/// Most enabled apps one user's settings may list (each transcript or audio item is sent to
/// every one).
pub const APPS_MAX: usize = 32;

impl UserSettings {
    /// Parses one user's settings as the `http` source serves them (JSON).
    pub fn from_json(body: &[u8]) -> Result<UserSettings, String> {
        let settings: UserSettings = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        settings.check()?;
        Ok(settings)
    }

    fn check(&self) -> Result<(), String> {
        if self.apps.len() > APPS_MAX {
            return Err(format!(
                "{} apps listed; at most {APPS_MAX} are accepted",
                self.apps.len()
            ));
        }
        Ok(())
    }

    /// True when some app wants transcripts or the user has a realtime-transcript webhook.
    pub fn has_transcript_target(&self) -> bool {
        self.realtime_transcript_webhook.is_some()
            || self
                .apps
                .iter()
                .any(|app| app.triggers.contains(&Trigger::TranscriptProcessed))
    }

    /// True when some app has the `audio_bytes` trigger.
    pub fn has_audio_app(&self) -> bool {
        self.apps
            .iter()
            .any(|app| app.triggers.contains(&Trigger::AudioBytes))
    }
}

/// The `file` settings source: a `[default]` table and `[users."<uid>"]` overrides.
#[derive(Debug, Clone)]
pub struct SettingsFile {
    default: Arc<UserSettings>,
    users: HashMap<String, Arc<UserSettings>>,
}

impl SettingsFile {
    /// Settings for a deployment without a settings file: every user gets the defaults.
    pub fn defaults_only() -> SettingsFile {
        SettingsFile {
            default: Arc::new(UserSettings::default()),
            users: HashMap::new(),
        }
    }

    /// Reads and resolves the settings file at `path`; the error names the file.
    pub fn load(path: &Path) -> Result<SettingsFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read settings file {}: {e}", path.display()))?;
        SettingsFile::parse(&text).map_err(|e| format!("settings file {}: {e}", path.display()))
    }

    /// Parses a settings file's text and resolves every user (`[default]` merged under each user's
    /// table, key by key); an unknown top-level key, field or value, or too many apps, is an error.
    pub fn parse(text: &str) -> Result<SettingsFile, String> {
        let mut root: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
        let default_table = match root.remove("default") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err("`default` must be a table".into()),
            None => toml::Table::new(),
        };
        let users_table = match root.remove("users") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err("`users` must be a table".into()),
            None => toml::Table::new(),
        };
        if let Some(key) = root.keys().next() {
            return Err(format!(
                "unknown top-level key `{key}` (expected `default`, `users`)"
            ));
        }
        let default =
            resolve(&default_table, &toml::Table::new()).map_err(|e| format!("[default]: {e}"))?;
        let mut users = HashMap::with_capacity(users_table.len());
        for (uid, value) in users_table {
            let toml::Value::Table(overrides) = value else {
                return Err(format!("users.\"{uid}\" must be a table"));
            };
            let settings = resolve(&default_table, &overrides)
                .map_err(|e| format!("[users.\"{uid}\"]: {e}"))?;
            users.insert(uid, Arc::new(settings));
        }
        Ok(SettingsFile {
            default: Arc::new(default),
            users,
        })
    }

    /// True when some user (or the default) stores private-cloud audio at level `enhanced`,
    /// which needs the encryption secret.
    pub fn may_encrypt(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.users.values())
            .any(|s| {
                s.private_cloud_sync_enabled
                    && s.data_protection_level == DataProtectionLevel::Enhanced
            })
    }

    /// The settings of `uid`: its overrides merged over `[default]`.
    pub fn lookup(&self, uid: &str) -> Arc<UserSettings> {
        self.users
            .get(uid)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

fn resolve(default: &toml::Table, overrides: &toml::Table) -> Result<UserSettings, String> {
    let mut merged = default.clone();
    for (key, value) in overrides {
        merged.insert(key.clone(), value.clone());
    }
    let settings: UserSettings = toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    settings.check()?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_overrides_merge_over_default() {
        let file = SettingsFile::parse(
            r#"
            [default]
            private_cloud_sync_enabled = true
            data_protection_level = "enhanced"

            [users."u1"]
            data_protection_level = "standard"
            audio_bytes_webhook = { url = "http://127.0.0.1:9/a", delay_seconds = 5 }
            [[users."u1".apps]]
            id = "app-1"
            webhook_url = "http://127.0.0.1:9/app"
            triggers = ["transcript_processed", "audio_bytes"]
            "#,
        )
        .unwrap();
        let u1 = file.lookup("u1");
        assert_eq!(u1.data_protection_level, DataProtectionLevel::Standard);
        assert!(u1.private_cloud_sync_enabled);
        assert!(u1.has_audio_app());
        assert!(u1.has_transcript_target());
        assert_eq!(u1.audio_bytes_webhook.as_ref().unwrap().delay_seconds, 5);
        let other = file.lookup("someone-else");
        assert_eq!(other.data_protection_level, DataProtectionLevel::Enhanced);
        assert!(!other.has_audio_app());
        assert!(!other.has_transcript_target());
    }

    #[test]
    fn json_settings_parse_and_are_bounded() {
        let settings = UserSettings::from_json(
            br#"{"private_cloud_sync_enabled": false, "apps": [{"id": "a", "webhook_url": "http://h/x", "triggers": ["audio_bytes", "memory_created"]}]}"#,
        )
        .unwrap();
        assert!(!settings.private_cloud_sync_enabled);
        assert!(settings.has_audio_app() && !settings.has_transcript_target());
        assert!(UserSettings::from_json(b"{\"private_cloud\": true}").is_err());
        let apps: Vec<_> = (0..=APPS_MAX)
            .map(|i| format!(r#"{{"id":"a{i}","webhook_url":"http://h/{i}"}}"#))
            .collect();
        let err = UserSettings::from_json(format!(r#"{{"apps":[{}]}}"#, apps.join(",")).as_bytes())
            .unwrap_err();
        assert!(err.contains("apps"), "{err}");
    }

    #[test]
    fn unknown_fields_and_keys_are_errors() {
        assert!(SettingsFile::parse("[default]\nprivate_cloud = true\n").is_err());
        assert!(SettingsFile::parse("[defaults]\n").is_err());
        assert!(SettingsFile::parse("[default]\ndata_protection_level = \"max\"\n").is_err());
    }
}
