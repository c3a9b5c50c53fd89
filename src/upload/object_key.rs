//! Object keys of private-cloud audio (docs/downstream.md §2), pure.
//!
//! `chunks/{uid}/{conversation_id}/{timestamp}.{bin|enc}`, where `timestamp` is the batch's
//! first-frame timestamp with exactly 3 decimals (`1700000000.123`), and the extension is `enc`
//! iff the user's level is `enhanced` (the body is then encrypted, see [`super::crypto`]).
//!
//! Bound: ids are at most 128 bytes (`crate::id`) and `{:.3}` of any f64 is at most 314
//! characters (`-` + 309 integer digits + `.` + 3 decimals), so a key is at most
//! 7 + 128 + 1 + 128 + 1 + 314 + 4 = 583 bytes, under the 1024-byte key limit of S3, GCS and Azure.
//! Ids hold only `[A-Za-z0-9._:@-]` and are never `.` or `..`, so every segment is a valid
//! object_store path part and no key escapes `chunks/`.

use crate::id::Id;
use crate::settings::DataProtectionLevel;

/// Longest key [`object_key`] can return, in bytes (see the module doc).
pub const OBJECT_KEY_BYTES_MAX: usize = 583;
/// Added to the key of a batch with holes (records lost to damage in the spill log): the object
/// holds what survived, and no consumer of `.bin`/`.enc` keys takes it for a whole batch
/// (`docs/0005-durability-policy.md`).
pub const PARTIAL_SUFFIX: &str = ".partial";

/// The key of a batch with holes: [`object_key`] + [`PARTIAL_SUFFIX`].
pub fn partial_object_key(
    uid: &Id,
    conversation: &Id,
    timestamp: f64,
    level: DataProtectionLevel,
) -> String {
    object_key(uid, conversation, timestamp, level) + PARTIAL_SUFFIX
}

/// Whether bodies of this level are encrypted (and their keys end in `.enc`).
pub fn is_encrypted(level: DataProtectionLevel) -> bool {
    match level {
        DataProtectionLevel::Enhanced => true,
        // e2ee audio is stored as plain `.bin`, as the Python service did (docs/downstream.md §2).
        DataProtectionLevel::Standard | DataProtectionLevel::E2ee => false,
    }
}

/// The object key of a batch.
pub fn object_key(
    uid: &Id,
    conversation: &Id,
    timestamp: f64,
    level: DataProtectionLevel,
) -> String {
    let extension = if is_encrypted(level) { "enc" } else { "bin" };
    // `{:.3}` rounds the exact binary value to 3 decimals, as Python's `f"{t:.3f}"` does.
    format!("chunks/{uid}/{conversation}/{timestamp:.3}.{extension}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Id {
        Id::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn keys_have_three_decimals_and_the_level_extension() {
        let (uid, conv) = (id("user-1"), id("conv:a@b"));
        assert_eq!(
            object_key(
                &uid,
                &conv,
                1_700_000_000.123,
                DataProtectionLevel::Standard
            ),
            "chunks/user-1/conv:a@b/1700000000.123.bin"
        );
        assert_eq!(
            object_key(&uid, &conv, 1_700_000_000.0, DataProtectionLevel::Enhanced),
            "chunks/user-1/conv:a@b/1700000000.000.enc"
        );
        assert_eq!(
            object_key(&uid, &conv, 1_700_000_000.5, DataProtectionLevel::E2ee),
            "chunks/user-1/conv:a@b/1700000000.500.bin"
        );
    }

    #[test]
    fn rounding_follows_the_binary_value() {
        let (uid, conv) = (id("u"), id("c"));
        let key = |t: f64| object_key(&uid, &conv, t, DataProtectionLevel::Standard);
        // Values Python's `f"{t:.3f}"` gives (checked there): 1700000000.1225 is stored as
        // 1700000000.12249994..., so it rounds down; 1700000000.1245 as ...1245000036: up.
        assert_eq!(key(1_700_000_000.122_5), "chunks/u/c/1700000000.122.bin");
        assert_eq!(key(1_700_000_000.124_5), "chunks/u/c/1700000000.125.bin");
        assert_eq!(key(1.0005), "chunks/u/c/1.000.bin");
        assert_eq!(key(2.0005), "chunks/u/c/2.001.bin");
        // 1700000000.9996 rounds up into the next second.
        assert_eq!(key(1_700_000_000.999_6), "chunks/u/c/1700000001.000.bin");
        assert_eq!(key(0.0), "chunks/u/c/0.000.bin");
        assert_eq!(key(12.3456), "chunks/u/c/12.346.bin");
    }

    #[test]
    fn partial_keys_end_in_partial() {
        let key = partial_object_key(&id("u"), &id("c"), 1.5, DataProtectionLevel::Enhanced);
        assert_eq!(key, "chunks/u/c/1.500.enc.partial");
        assert!(object_store::path::Path::parse(&key).is_ok());
    }

    #[test]
    fn the_longest_key_is_within_the_bound_and_parses_as_a_path() {
        let long = "a".repeat(crate::id::ID_BYTES_MAX);
        let key = object_key(
            &id(&long),
            &id(&long),
            -f64::MAX,
            DataProtectionLevel::Enhanced,
        );
        assert_eq!(key.len(), OBJECT_KEY_BYTES_MAX);
        let path = object_store::path::Path::parse(&key).unwrap();
        assert_eq!(path.as_ref(), key);
        assert_eq!(path.parts().count(), 4);
    }
}
