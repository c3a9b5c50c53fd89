//! Identifiers that become parts of object keys and file names: user ids and conversation ids.
//!
//! Invariant: an [`Id`] always holds 1..=[`ID_BYTES_MAX`] bytes of `[A-Za-z0-9._:@-]` and is never
//! `.` or `..` (docs/protocol.md §1). It is stored inline, so holding one never allocates.

use std::fmt;

/// Longest id accepted, in bytes (docs/protocol.md §1).
pub const ID_BYTES_MAX: usize = 128;

/// Why a candidate id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdError {
    /// No bytes.
    Empty,
    /// More than [`ID_BYTES_MAX`] bytes.
    TooLong,
    /// A byte outside `[A-Za-z0-9._:@-]`.
    BadCharacter,
    /// Exactly `.` or `..` (a path component).
    DotPath,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdError::Empty => "id is empty",
            IdError::TooLong => "id is longer than 128 bytes",
            IdError::BadCharacter => "id has a character outside [A-Za-z0-9._:@-]",
            IdError::DotPath => "id must not be '.' or '..'",
        })
    }
}

/// A validated id, stored inline; bytes past `len` are always zero (equality and hashing may
/// look at the whole array).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Id {
    len: u8,
    bytes: [u8; ID_BYTES_MAX],
}

impl std::hash::Hash for Id {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl Id {
    /// Validates `raw` against the rule of docs/protocol.md §1.
    pub fn parse(raw: &[u8]) -> Result<Id, IdError> {
        if raw.is_empty() {
            return Err(IdError::Empty);
        }
        if raw.len() > ID_BYTES_MAX {
            return Err(IdError::TooLong);
        }
        if !raw.iter().all(|&b| is_id_byte(b)) {
            return Err(IdError::BadCharacter);
        }
        if raw == b"." || raw == b".." {
            return Err(IdError::DotPath);
        }
        let mut bytes = [0u8; ID_BYTES_MAX];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Id {
            len: raw.len() as u8,
            bytes,
        })
    }

    /// The id as text (ASCII, 1–128 bytes).
    pub fn as_str(&self) -> &str {
        // Every byte was checked to be ASCII in `parse`.
        std::str::from_utf8(&self.bytes[..self.len as usize]).expect("id bytes are ASCII")
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-')
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.as_str())
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_full_charset() {
        let id = Id::parse(b"aZ09._:@-").unwrap();
        assert_eq!(id.as_str(), "aZ09._:@-");
    }

    #[test]
    fn refuses_each_bad_form() {
        assert_eq!(Id::parse(b""), Err(IdError::Empty));
        assert_eq!(Id::parse(&[b'a'; 129]), Err(IdError::TooLong));
        assert!(Id::parse(&[b'a'; 128]).is_ok());
        assert_eq!(Id::parse(b"a/b"), Err(IdError::BadCharacter));
        assert_eq!(Id::parse(b"a b"), Err(IdError::BadCharacter));
        assert_eq!(Id::parse("é".as_bytes()), Err(IdError::BadCharacter));
        assert_eq!(Id::parse(b"."), Err(IdError::DotPath));
        assert_eq!(Id::parse(b".."), Err(IdError::DotPath));
        assert!(Id::parse(b"...").is_ok());
    }
}
