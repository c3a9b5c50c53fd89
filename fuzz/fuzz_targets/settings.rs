//! The per-user settings parsers on arbitrary input: the settings file (TOML) and one user's
//! settings over HTTP (JSON) never panic, and what they accept keeps the settings' bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pusher::settings::{SettingsFile, UserSettings};

fuzz_target!(|data: &[u8]| {
    if let Ok(settings) = UserSettings::from_json(data) {
        assert!(settings.apps.len() <= pusher::settings::APPS_MAX);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(file) = SettingsFile::parse(text)
    {
        let _ = file.may_encrypt();
        let _ = file.lookup("fuzz-user");
    }
});
