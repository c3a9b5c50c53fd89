//! Options renamed to the one naming rule (qualifiers last: `sessions_per_core_max`, not
//! `max_sessions_per_core`): their old names stay accepted everywhere an option can be given —
//! TOML key, flag and `PUSHER_*` variable — so that no deployment breaks.
//!
//! A source that gives both names of one option is refused (which would win is not obvious);
//! across sources the usual order holds (defaults < file < variables and flags).

use figment::value::{Dict, Map};
use figment::{Error, Metadata, Profile, Provider};

/// (old name, current name) of every renamed option.
pub const RENAMED_OPTIONS: [(&str, &str); 5] = [
    ("max_sessions_per_core", "sessions_per_core_max"),
    ("max_message_bytes", "message_bytes_max"),
    ("max_request_header_bytes", "request_header_bytes_max"),
    ("payload_blocks_max_per_core", "payload_blocks_per_core_max"),
    ("spill_max_bytes", "spill_bytes_max"),
];

/// A provider whose old option names are read as the current ones.
pub struct Renamed<P>(pub P);

impl<P: Provider> Provider for Renamed<P> {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut data = self.0.data()?;
        for dict in data.values_mut() {
            rename_keys(dict).map_err(|message| Error::from(message).with_metadata(&self.0))?;
        }
        Ok(data)
    }

    fn profile(&self) -> Option<Profile> {
        self.0.profile()
    }
}

trait WithMetadata {
    fn with_metadata<P: Provider>(self, provider: &P) -> Self;
}

impl WithMetadata for Error {
    fn with_metadata<P: Provider>(mut self, provider: &P) -> Error {
        self.metadata = Some(provider.metadata());
        self
    }
}

/// Moves each old key of `dict` to its current name; an error when both are present.
fn rename_keys(dict: &mut Dict) -> Result<(), String> {
    for (old, new) in RENAMED_OPTIONS {
        let Some(value) = dict.remove(old) else {
            continue;
        };
        if dict.contains_key(new) {
            return Err(format!(
                "`{old}` is the old name of `{new}`: give one of them, not both"
            ));
        }
        dict.insert(new.to_string(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::Figment;
    use figment::providers::{Format, Toml};

    #[test]
    fn an_old_key_is_read_under_its_current_name() {
        let figment = Figment::from(Renamed(Toml::string("max_message_bytes = 4096")));
        let value: u64 = figment.extract_inner("message_bytes_max").unwrap();
        assert_eq!(value, 4096);
        assert!(figment.find_value("max_message_bytes").is_err());
    }

    #[test]
    fn both_names_in_one_source_are_refused() {
        let both = "spill_max_bytes = 1\nspill_bytes_max = 2";
        let error = Figment::from(Renamed(Toml::string(both)))
            .extract_inner::<u64>("spill_bytes_max")
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("`spill_max_bytes` is the old name of `spill_bytes_max`"),
            "{error}"
        );
    }

    #[test]
    fn every_renamed_option_is_an_option_today() {
        let defaults = serde_json::to_value(super::super::Config::default()).unwrap();
        let keys = defaults.as_object().unwrap();
        for (old, new) in RENAMED_OPTIONS {
            assert!(keys.contains_key(new), "{new} is not an option");
            assert!(!keys.contains_key(old), "{old} is still an option");
        }
    }
}
