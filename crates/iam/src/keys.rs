//! Per-function credentials, derived from the box's secret:
//!
//! * access key id: `ASIA` + 16 base-32 characters of
//!   HMAC-SHA256(box secret, `"esb-iam access key id\0" + function name`)
//!   (`ASIA` as AWS's temporary role credentials; the box's own key starts
//!   with `AKIA`, so the two never collide);
//! * secret access key: 40 characters (A–Z a–z 0–9 `+` `/`) of
//!   HMAC-SHA256(box secret, `"esb-iam secret access key\0" + name`).
//!
//! The same data directory (same `credentials.json`) gives a function the
//! same credentials at every start; a new box secret changes them all.
//! Knowing one function's pair tells nothing about another's or about the
//! box secret (HMAC is one-way).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A function's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct FunctionCredentials {
    /// `AWS_ACCESS_KEY_ID`.
    pub access_key_id: String,
    /// `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: String,
}

impl std::fmt::Debug for FunctionCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

fn mac(secret: &str, label: &str, function: &str) -> [u8; 32] {
    #[allow(clippy::expect_used)]
    let mut m =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    m.update(label.as_bytes());
    m.update(&[0]);
    m.update(function.as_bytes());
    m.finalize().into_bytes().into()
}

/// The credentials of `function` under the box secret `box_secret`.
pub fn derive(box_secret: &str, function: &str) -> FunctionCredentials {
    const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let id = mac(box_secret, "esb-iam access key id", function);
    // 16 characters × 5 bits = 80 bits = the first 10 bytes.
    let mut bits: u128 = 0;
    for b in &id[..10] {
        bits = (bits << 8) | u128::from(*b);
    }
    let mut access_key_id = String::from("ASIA");
    for i in (0..16).rev() {
        access_key_id.push(char::from(BASE32[((bits >> (i * 5)) & 31) as usize]));
    }
    let secret = mac(box_secret, "esb-iam secret access key", function);
    // 40 characters × 6 bits = 240 bits = 30 bytes.
    let mut secret_access_key = String::with_capacity(40);
    for chunk in secret[..30].chunks(3) {
        let n = (u32::from(chunk[0]) << 16) | (u32::from(chunk[1]) << 8) | u32::from(chunk[2]);
        for shift in [18, 12, 6, 0] {
            secret_access_key.push(char::from(BASE64[((n >> shift) & 63) as usize]));
        }
    }
    FunctionCredentials {
        access_key_id,
        secret_access_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_distinct_and_shaped_like_aws_keys() {
        let a = derive("box-secret", "Reader");
        assert_eq!(a, derive("box-secret", "Reader"), "stable");
        let b = derive("box-secret", "Writer");
        assert_ne!(a.access_key_id, b.access_key_id);
        assert_ne!(a.secret_access_key, b.secret_access_key);
        let c = derive("other-box", "Reader");
        assert_ne!(
            a.access_key_id, c.access_key_id,
            "another box secret, other keys"
        );
        assert!(a.access_key_id.starts_with("ASIA") && a.access_key_id.len() == 20);
        assert!(
            a.access_key_id
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_eq!(a.secret_access_key.len(), 40);
        assert!(!a.secret_access_key.contains("box-secret"));
        assert!(!format!("{a:?}").contains(&a.secret_access_key));
    }
}
