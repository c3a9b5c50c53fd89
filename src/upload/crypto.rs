//! The backend's encryption format for `enhanced` audio (docs/downstream.md §2), pure except for
//! the random nonce.
//!
//! - key = HKDF-SHA256(ikm = the secret's UTF-8 bytes, salt = uid as UTF-8,
//!   info = `user-data-encryption`, length 32);
//! - AES-256-GCM with a random 12-byte nonce and no associated data;
//! - blob = `u32 big-endian L` ‖ nonce ‖ ciphertext ‖ 16-byte tag, L = 12 + len(ciphertext) + 16.
//!
//! The secret comes from the environment only ([`SECRET_ENV`], else Omi's `ENCRYPTION_SECRET`,
//! read by [`EncryptionSecret::from_env`] and nowhere else), never from flags or the config
//! file.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;

/// The one variable the secret is read from.
pub const SECRET_ENV: &str = "PUSHER_ENCRYPTION_SECRET";
/// Shortest secret accepted, in bytes (docs/downstream.md §2).
pub const SECRET_BYTES_MIN: usize = 32;
/// Longest secret accepted, in bytes: a bound on what is held, far above any real key.
pub const SECRET_BYTES_MAX: usize = 4096;
/// HKDF `info` of the backend's scheme.
const HKDF_INFO: &[u8] = b"user-data-encryption";
/// Bytes of a user's AES-256 key (HKDF output length).
pub const KEY_BYTES: usize = 32;
/// Bytes of the random AES-GCM nonce in a blob.
pub const NONCE_BYTES: usize = 12;
/// Bytes of the AES-GCM tag at the end of a blob.
pub const TAG_BYTES: usize = 16;
const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes a blob adds to its plaintext: length prefix, nonce and tag.
pub const BLOB_OVERHEAD_BYTES: usize = LENGTH_PREFIX_BYTES + NONCE_BYTES + TAG_BYTES;
/// Largest plaintext [`encrypt_blob`] accepts: L = 12 + len + 16 must fit the u32 prefix.
/// (AES-GCM itself allows 2^36 - 32 bytes; batches are at most minutes of audio.)
pub const PLAINTEXT_BYTES_MAX: usize = u32::MAX as usize - NONCE_BYTES - TAG_BYTES;

/// The server-wide encryption secret, at least [`SECRET_BYTES_MIN`] bytes. Cheap to clone; its
/// `Debug` never shows the value.
#[derive(Clone)]
pub struct EncryptionSecret(Arc<str>);

/// The secret `make run` uses when none is set: public (it is in this repository), so anything
/// encrypted with it is readable by anyone; the server warns at start when it is in use.
pub const DEV_ONLY_SECRET: &str = "dev-only-insecure-secret-do-not-use-in-production";

impl EncryptionSecret {
    /// Accepts a secret of [`SECRET_BYTES_MIN`]..=[`SECRET_BYTES_MAX`] bytes; `name` is the
    /// variable it came from, for the error.
    pub fn new(secret: &str, name: &str) -> Result<EncryptionSecret, String> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(format!(
                "{name} is {} bytes; it must be at least {SECRET_BYTES_MIN} bytes",
                secret.len()
            ));
        }
        if secret.len() > SECRET_BYTES_MAX {
            return Err(format!(
                "{name} is {} bytes; it must be at most {SECRET_BYTES_MAX} bytes",
                secret.len()
            ));
        }
        Ok(EncryptionSecret(Arc::from(secret)))
    }

    /// True for [`DEV_ONLY_SECRET`].
    pub fn is_public_dev_secret(&self) -> bool {
        &*self.0 == DEV_ONLY_SECRET
    }

    /// Reads [`SECRET_ENV`], else Omi's `ENCRYPTION_SECRET`: the secret and the name it came
    /// from, `Ok(None)` when neither is set, an error when the one set is not UTF-8, too short
    /// or too long.
    pub fn from_env() -> Result<Option<(EncryptionSecret, &'static str)>, String> {
        for name in [SECRET_ENV, crate::config::omi::ENCRYPTION_SECRET] {
            match std::env::var(name) {
                Ok(value) => return EncryptionSecret::new(&value, name).map(|s| Some((s, name))),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("{name} is not UTF-8"));
                }
            }
        }
        Ok(None)
    }
}

impl fmt::Debug for EncryptionSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionSecret(<redacted>)")
    }
}

/// Why a blob could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaintextTooLarge {
    /// The plaintext's length, above [`PLAINTEXT_BYTES_MAX`].
    pub bytes: usize,
}

impl fmt::Display for PlaintextTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "plaintext of {} bytes exceeds the blob limit of {PLAINTEXT_BYTES_MAX}",
            self.bytes
        )
    }
}

/// The per-user AES-256 key.
pub fn derive_key(secret: &EncryptionSecret, uid: &str) -> [u8; KEY_BYTES] {
    let hkdf = Hkdf::<Sha256>::new(Some(uid.as_bytes()), secret.0.as_bytes());
    let mut key = [0u8; KEY_BYTES];
    hkdf.expand(HKDF_INFO, &mut key)
        .expect("32 bytes is within HKDF-SHA256's 8160-byte output limit");
    key
}

/// Bytes a blob has before its ciphertext: the length prefix and the nonce.
pub const BLOB_HEADER_BYTES: usize = LENGTH_PREFIX_BYTES + NONCE_BYTES;

/// Encrypts `plaintext` for `uid` into the backend's blob format, with a fresh random nonce.
pub fn encrypt_blob(
    secret: &EncryptionSecret,
    uid: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>, PlaintextTooLarge> {
    let mut blob = Vec::with_capacity(BLOB_OVERHEAD_BYTES + plaintext.len());
    blob.resize(BLOB_HEADER_BYTES, 0);
    blob.extend_from_slice(plaintext);
    seal_in_place(secret, uid, &mut blob)?;
    Ok(blob)
}

/// Turns `buf` — [`BLOB_HEADER_BYTES`] reserved bytes, then the plaintext — into the blob, in
/// place (no second copy of the batch), with a fresh random nonce.
pub fn seal_in_place(
    secret: &EncryptionSecret,
    uid: &str,
    buf: &mut Vec<u8>,
) -> Result<(), PlaintextTooLarge> {
    let mut nonce = [0u8; NONCE_BYTES];
    // ThreadRng is a CSPRNG seeded from the OS; GCM needs nonces that never repeat per key, and
    // 96 random bits make a repeat negligible at any number of batches a user can produce.
    rand::fill(&mut nonce);
    seal(&derive_key(secret, uid), &nonce, buf)
}

/// Seals `buf` in place for a given key and nonce (the deterministic core of [`seal_in_place`]).
fn seal(
    key: &[u8; KEY_BYTES],
    nonce: &[u8; NONCE_BYTES],
    buf: &mut Vec<u8>,
) -> Result<(), PlaintextTooLarge> {
    assert!(buf.len() >= BLOB_HEADER_BYTES, "room for the blob header");
    let plaintext_bytes = buf.len() - BLOB_HEADER_BYTES;
    if plaintext_bytes > PLAINTEXT_BYTES_MAX {
        return Err(PlaintextTooLarge {
            bytes: plaintext_bytes,
        });
    }
    let length = u32::try_from(NONCE_BYTES + plaintext_bytes + TAG_BYTES)
        .expect("bounded by PLAINTEXT_BYTES_MAX");
    buf[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    buf[LENGTH_PREFIX_BYTES..BLOB_HEADER_BYTES].copy_from_slice(nonce);
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key));
    let tag = cipher
        .encrypt_inout_detached(
            &Nonce::from(*nonce),
            b"",
            (&mut buf[BLOB_HEADER_BYTES..]).into(),
        )
        .expect("the plaintext is within AES-GCM's length limit");
    buf.extend_from_slice(&tag);
    Ok(())
}

/// Test-only inverse of [`encrypt_blob`] (the backend decrypts in production).
#[cfg(test)]
pub fn decrypt_blob(secret: &EncryptionSecret, uid: &str, blob: &[u8]) -> Result<Vec<u8>, String> {
    use aes_gcm::aead::Aead;
    let (prefix, rest) = blob
        .split_first_chunk::<LENGTH_PREFIX_BYTES>()
        .ok_or("blob shorter than its length prefix")?;
    if u32::from_be_bytes(*prefix) as usize != rest.len() || rest.len() < NONCE_BYTES + TAG_BYTES {
        return Err("length prefix does not match the blob".into());
    }
    let (nonce, sealed) = rest.split_first_chunk::<NONCE_BYTES>().expect("checked");
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(derive_key(secret, uid)));
    cipher
        .decrypt(&Nonce::from(*nonce), sealed)
        .map_err(|_| "authentication failed".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> EncryptionSecret {
        EncryptionSecret::new("0123456789abcdef0123456789abcdef", SECRET_ENV).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn make_run_uses_the_secret_the_server_warns_about() {
        let makefile = include_str!("../../Makefile");
        let line = makefile
            .lines()
            .find(|line| line.starts_with("DEV_ONLY_SECRET :="))
            .expect("the Makefile defines DEV_ONLY_SECRET");
        assert_eq!(
            line.trim_start_matches("DEV_ONLY_SECRET :=").trim(),
            DEV_ONLY_SECRET
        );
        assert!(
            EncryptionSecret::new(DEV_ONLY_SECRET, SECRET_ENV)
                .unwrap()
                .is_public_dev_secret()
        );
        assert!(!secret().is_public_dev_secret());
    }

    #[test]
    fn key_matches_an_independent_implementation() {
        // Computed once with Python's `cryptography` package:
        // HKDF(algorithm=SHA256(), length=32, salt=b"user-1", info=b"user-data-encryption")
        //     .derive(b"0123456789abcdef0123456789abcdef").hex()
        assert_eq!(
            hex(&derive_key(&secret(), "user-1")),
            "5ed9c51e47a27c33a199cc2cd079a685d1569bb8b6d45a32a2b81d9fd525aa66"
        );
    }

    #[test]
    fn round_trip() {
        for plaintext in [&b""[..], b"x", &[7u8; 100_000]] {
            let blob = encrypt_blob(&secret(), "user-1", plaintext).unwrap();
            assert_eq!(decrypt_blob(&secret(), "user-1", &blob).unwrap(), plaintext);
        }
    }

    #[test]
    fn layout_and_length_prefix() {
        let plaintext = b"sixteen bytes!!!and more";
        let key = derive_key(&secret(), "user-1");
        let nonce = [9u8; NONCE_BYTES];
        let mut blob = vec![0u8; BLOB_HEADER_BYTES];
        blob.extend_from_slice(plaintext);
        seal(&key, &nonce, &mut blob).unwrap();
        assert_eq!(blob.len(), BLOB_OVERHEAD_BYTES + plaintext.len());
        let length = u32::from_be_bytes(blob[..4].try_into().unwrap()) as usize;
        assert_eq!(length, NONCE_BYTES + plaintext.len() + TAG_BYTES);
        assert_eq!(length, blob.len() - 4);
        assert_eq!(&blob[4..16], &nonce);
        assert_ne!(&blob[16..16 + plaintext.len()], plaintext);
        // Fresh nonces: two blobs of the same plaintext differ.
        let a = encrypt_blob(&secret(), "user-1", plaintext).unwrap();
        let b = encrypt_blob(&secret(), "user-1", plaintext).unwrap();
        assert_ne!(a[4..16], b[4..16]);
    }

    #[test]
    fn wrong_uid_or_tampering_fails_to_decrypt() {
        let blob = encrypt_blob(&secret(), "user-1", b"audio").unwrap();
        assert!(decrypt_blob(&secret(), "user-2", &blob).is_err());
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(decrypt_blob(&secret(), "user-1", &tampered).is_err());
    }

    /// The backend's reader is Python: its `cryptography` package must decrypt what we write.
    #[test]
    fn python_cryptography_decrypts_the_blob() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        const SCRIPT: &str = r#"
import sys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
secret, uid = sys.argv[1].encode(), sys.argv[2].encode()
blob = bytes.fromhex(sys.stdin.read().strip())
length = int.from_bytes(blob[:4], "big")
assert length == len(blob) - 4, (length, len(blob))
key = HKDF(algorithm=hashes.SHA256(), length=32, salt=uid, info=b"user-data-encryption").derive(secret)
print(AESGCM(key).decrypt(blob[4:16], blob[16:], None).hex())
"#;
        let plaintext: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let blob = encrypt_blob(&secret(), "user-1", &plaintext).unwrap();
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT, "0123456789abcdef0123456789abcdef", "user-1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); this test needs it"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(hex(&blob).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "Python could not decrypt (needs the `cryptography` package from \
             tests/python/requirements.txt): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim(),
            hex(&plaintext)
        );
    }

    #[test]
    fn short_or_huge_secrets_are_refused() {
        let err = EncryptionSecret::new(&"a".repeat(31), SECRET_ENV).unwrap_err();
        assert!(
            err.contains(SECRET_ENV) && err.contains("at least 32"),
            "{err}"
        );
        assert!(EncryptionSecret::new(&"a".repeat(32), SECRET_ENV).is_ok());
        assert!(EncryptionSecret::new(&"a".repeat(SECRET_BYTES_MAX + 1), SECRET_ENV).is_err());
        assert_eq!(format!("{:?}", secret()), "EncryptionSecret(<redacted>)");
    }
}
