//! RS256 JSON Web Tokens: the signing key (generated on first start), JWKS,
//! issuing, and strict verification.
//!
//! The parser is our own (a few dozen lines) so every rule is visible here
//! and fuzzable: the algorithm is pinned to RS256 (no `none`, no HS256
//! confusion), keys come only from the local key set (a `jku`, `x5u`, `jwk`
//! or `x5c` header is refused, never fetched), tokens over 8 KiB are refused
//! before decoding.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::secrets::{SecretsError, write_private};

/// Largest token accepted (robustness A6).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock leeway for `exp`, `nbf` and `iat` (robustness T1: ≤ 60 s).
pub const LEEWAY_SECS: i64 = 60;

/// Why a token was refused. Every variant maps to 401; the text is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token too large")]
    TooLarge,
    /// Not three base64url parts of JSON objects.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Any `alg` but RS256, including `none`.
    #[error("algorithm not allowed")]
    Algorithm,
    /// A key-location header (`jku`, `x5u`, `jwk`, `x5c`) or `crit`.
    #[error("forbidden header parameter")]
    ForbiddenHeader,
    /// No local key has this `kid`.
    #[error("unknown key id")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is missing.
    #[error("token has no exp")]
    MissingExp,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` differs.
    #[error("wrong issuer")]
    Issuer,
    /// Neither `aud` nor `client_id` is an accepted audience.
    #[error("wrong audience")]
    Audience,
    /// `token_use` is not one the caller accepts.
    #[error("wrong token use")]
    TokenUse,
    /// The token's user was removed or changed its password since.
    #[error("token revoked")]
    Revoked,
}

/// One public key of the set, as published in the JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicJwk {
    /// Key id.
    pub kid: String,
    /// Modulus, big-endian.
    pub n: Vec<u8>,
    /// Exponent, big-endian.
    pub e: Vec<u8>,
}

impl PublicJwk {
    /// The JWK JSON object.
    pub fn to_json(&self) -> Value {
        json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n), "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }
}

/// The RS256 signing key.
pub struct SigningKey {
    key: KeyPair,
    public: PublicJwk,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh 2048-bit key.
    pub fn generate() -> Result<Self, SecretsError> {
        let key = KeyPair::generate(KeySize::Rsa2048).map_err(|_| SecretsError::Crypto)?;
        Ok(Self::from_key(key))
    }

    /// Loads `path` (PKCS#8 DER), or generates a key there (0600) when it
    /// does not exist. Returns whether it was generated.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), SecretsError> {
        match std::fs::read(path) {
            Ok(der) => {
                let key = KeyPair::from_pkcs8(&der).map_err(|_| SecretsError::Corrupt {
                    path: path.to_path_buf(),
                })?;
                Ok((Self::from_key(key), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                use aws_lc_rs::encoding::AsDer as _;
                let der = key.key.as_der().map_err(|_| SecretsError::Crypto)?;
                write_private(path, der.as_ref())?;
                Ok((key, true))
            }
            Err(e) => Err(SecretsError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    fn from_key(key: KeyPair) -> Self {
        let public = key.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        // A stable kid: the first bytes of SHA-256 over the modulus.
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(&n)[..12]);
        Self {
            key,
            public: PublicJwk { kid, n, e },
        }
    }

    /// Its public half.
    pub fn public(&self) -> &PublicJwk {
        &self.public
    }

    /// Signs `claims` as an RS256 JWT with this key's `kid`.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, SecretsError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.public.kid});
        let mut input = URL_SAFE_NO_PAD.encode(header.to_string());
        input.push('.');
        input.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()));
        let mut sig = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| SecretsError::Crypto)?;
        input.push('.');
        input.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(input)
    }
}

/// What a verified token must satisfy.
#[derive(Debug, Clone, Default)]
pub struct Rules<'a> {
    /// Required `iss`.
    pub issuer: &'a str,
    /// Accepted audiences (`aud` or `client_id`); empty accepts any.
    pub audiences: &'a [String],
    /// Accepted `token_use` values; empty accepts any (or none).
    pub token_use: &'a [&'a str],
}

/// A decoded, unverified token: header, claims, signing input, signature.
pub type Decoded<'a> = (Map<String, Value>, Map<String, Value>, &'a str, Vec<u8>);

/// Splits and decodes a token without checking anything but its shape.
pub fn decode_unverified(token: &str) -> Result<Decoded<'_>, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three parts"));
    };
    let object = |part: &str| -> Result<Map<String, Value>, JwtError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed("bad base64url"))?;
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(JwtError::Malformed("not a json object")),
        }
    };
    let header = object(h)?;
    let claims = object(p)?;
    if s.is_empty() {
        return Err(JwtError::Algorithm);
    }
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("bad base64url"))?;
    let input = &token[..h.len() + 1 + p.len()];
    Ok((header, claims, input, sig))
}

/// Verifies `token` against the local `keys` and `rules` at `now` (Unix
/// seconds). Returns the claims.
pub fn verify(
    token: &str,
    keys: &[PublicJwk],
    rules: &Rules<'_>,
    now: i64,
) -> Result<Map<String, Value>, JwtError> {
    let (header, claims, input, sig) = decode_unverified(token)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(JwtError::Algorithm);
    }
    if ["jku", "x5u", "jwk", "x5c", "crit"]
        .iter()
        .any(|k| header.contains_key(*k))
    {
        return Err(JwtError::ForbiddenHeader);
    }
    let kid = header.get("kid").and_then(Value::as_str);
    let key = keys
        .iter()
        .find(|k| Some(k.kid.as_str()) == kid)
        .ok_or(JwtError::UnknownKey)?;
    PublicKeyComponents {
        n: key.n.as_slice(),
        e: key.e.as_slice(),
    }
    .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig)
    .map_err(|_| JwtError::BadSignature)?;

    let number = |name: &str| {
        claims
            .get(name)
            .map(|v| v.as_i64().ok_or(JwtError::Malformed("time claim")))
    };
    let exp = number("exp").ok_or(JwtError::MissingExp)??;
    if now > exp.saturating_add(LEEWAY_SECS) {
        return Err(JwtError::Expired);
    }
    for name in ["nbf", "iat"] {
        if let Some(t) = number(name)
            && t? > now.saturating_add(LEEWAY_SECS)
        {
            return Err(JwtError::NotYetValid);
        }
    }
    if claims.get("iss").and_then(Value::as_str) != Some(rules.issuer) {
        return Err(JwtError::Issuer);
    }
    if !rules.audiences.is_empty() {
        let mut found = Vec::new();
        match claims.get("aud") {
            Some(Value::String(a)) => found.push(a.as_str()),
            Some(Value::Array(list)) => found.extend(list.iter().filter_map(Value::as_str)),
            _ => {}
        }
        if let Some(Value::String(c)) = claims.get("client_id") {
            found.push(c);
        }
        if !found.iter().any(|a| rules.audiences.iter().any(|r| r == a)) {
            return Err(JwtError::Audience);
        }
    }
    if !rules.token_use.is_empty() {
        let used = claims.get("token_use").and_then(Value::as_str);
        if !used.is_some_and(|u| rules.token_use.contains(&u)) {
            return Err(JwtError::TokenUse);
        }
    }
    Ok(claims)
}

/// The scopes a token carries (`scope` space-separated, or `scp`).
pub fn scopes(claims: &Map<String, Value>) -> Vec<String> {
    match claims.get("scope").or_else(|| claims.get("scp")) {
        Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// `Bearer <jwt>` or `<jwt>` → `<jwt>`.
pub fn strip_bearer(value: &str) -> &str {
    let v = value.trim();
    match v.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => v[7..].trim_start(),
        _ => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn key() -> &'static SigningKey {
        static KEY: OnceLock<SigningKey> = OnceLock::new();
        KEY.get_or_init(|| SigningKey::generate().unwrap())
    }

    const NOW: i64 = 1_700_000_000;
    const ISS: &str = "https://esb.local";

    fn claims(extra: Value) -> Map<String, Value> {
        let mut m = json!({"iss": ISS, "aud": "app", "exp": NOW + 3600, "iat": NOW, "token_use": "id", "sub": "u1"});
        if let (Value::Object(base), Value::Object(extra)) = (&mut m, extra) {
            base.extend(extra);
        }
        match m {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn check(token: &str) -> Result<Map<String, Value>, JwtError> {
        let aud = vec!["app".to_string()];
        verify(
            token,
            std::slice::from_ref(key().public()),
            &Rules {
                issuer: ISS,
                audiences: &aud,
                token_use: &["id"],
            },
            NOW,
        )
    }

    fn forge(header: Value, claims: &Map<String, Value>, sig: &str) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()),
            sig
        )
    }

    #[test]
    fn issued_token_verifies() {
        let t = key().sign(&claims(json!({}))).unwrap();
        assert_eq!(check(&t).unwrap()["sub"], "u1");
    }

    #[test]
    fn a1_alg_none_and_missing_signature_rejected() {
        let c = claims(json!({}));
        let kid = &key().public().kid;
        assert_eq!(
            check(&forge(json!({"alg": "none", "kid": kid}), &c, "")),
            Err(JwtError::Algorithm)
        );
        assert_eq!(
            check(&forge(json!({"alg": "RS256", "kid": kid}), &c, "")),
            Err(JwtError::Algorithm)
        );
        assert_eq!(
            check(&forge(json!({"alg": "None"}), &c, "")),
            Err(JwtError::Algorithm)
        );
    }

    #[test]
    fn a2_hs256_confusion_rejected() {
        // The classic attack: HMAC over the input with the public key as secret.
        use hmac_like::hs256;
        let c = claims(json!({}));
        let kid = &key().public().kid;
        let head = json!({"alg": "HS256", "kid": kid});
        let unsigned = forge(head.clone(), &c, "x");
        let input = unsigned.rsplit_once('.').unwrap().0;
        let sig = hs256(&key().public().n, input.as_bytes());
        let t = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
        assert_eq!(check(&t), Err(JwtError::Algorithm));
        // RS256 header with a signature from another key.
        let other = SigningKey::generate().unwrap();
        let t = other.sign(&c).unwrap();
        assert_eq!(check(&t), Err(JwtError::UnknownKey));
        let (_, rest) = t.split_once('.').unwrap();
        let t = format!(
            "{}.{rest}",
            URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "kid": kid}).to_string())
        );
        assert_eq!(check(&t), Err(JwtError::BadSignature));
    }

    mod hmac_like {
        // A tiny HMAC-SHA256 so the test needs no extra dependency.
        use sha2::{Digest, Sha256};
        pub fn hs256(key: &[u8], msg: &[u8]) -> Vec<u8> {
            let mut k = if key.len() > 64 {
                Sha256::digest(key).to_vec()
            } else {
                key.to_vec()
            };
            k.resize(64, 0);
            let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
            let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
            let inner = Sha256::digest([ipad.as_slice(), msg].concat());
            Sha256::digest([opad.as_slice(), inner.as_slice()].concat()).to_vec()
        }
    }

    #[test]
    fn a3_time_claims() {
        let s = |c| key().sign(&c).unwrap();
        assert_eq!(
            check(&s(claims(json!({"exp": NOW - 61})))),
            Err(JwtError::Expired)
        );
        check(&s(claims(json!({"exp": NOW - 30})))).unwrap(); // within leeway
        assert_eq!(
            check(&s(claims(json!({"nbf": NOW + 120})))),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            check(&s(claims(json!({"iat": NOW + 120})))),
            Err(JwtError::NotYetValid)
        );
        let mut no_exp = claims(json!({}));
        no_exp.remove("exp");
        assert_eq!(check(&s(no_exp)), Err(JwtError::MissingExp));
        assert!(matches!(
            check(&s(claims(json!({"exp": "tomorrow"})))),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn a4_issuer_audience_token_use() {
        let s = |c| key().sign(&c).unwrap();
        assert_eq!(
            check(&s(claims(json!({"iss": "https://evil"})))),
            Err(JwtError::Issuer)
        );
        assert_eq!(
            check(&s(claims(json!({"aud": "other"})))),
            Err(JwtError::Audience)
        );
        check(&s(claims(json!({"aud": ["x", "app"]})))).unwrap();
        assert_eq!(
            check(&s(claims(json!({"token_use": "refresh"})))),
            Err(JwtError::TokenUse)
        );
    }

    #[test]
    fn a5_key_location_headers_refused() {
        let c = claims(json!({}));
        let kid = &key().public().kid;
        for h in ["jku", "x5u", "jwk", "x5c"] {
            let t = forge(
                json!({"alg": "RS256", "kid": kid, h: "https://evil/jwks"}),
                &c,
                "AAAA",
            );
            assert_eq!(check(&t), Err(JwtError::ForbiddenHeader));
        }
        let t = forge(json!({"alg": "RS256", "kid": "nope"}), &c, "AAAA");
        assert_eq!(check(&t), Err(JwtError::UnknownKey));
    }

    #[test]
    fn a6_garbage_and_oversized() {
        for t in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d",
            "!!!.???.***",
            "eyJ.eyJ.x",
            "e30.e30.e30",
        ] {
            assert!(check(t).is_err(), "{t:?}");
        }
        let big = format!(
            "{}.{}.{}",
            "a".repeat(4000),
            "b".repeat(4000),
            "c".repeat(300)
        );
        assert_eq!(check(&big), Err(JwtError::TooLarge));
        // Claims that are not an object.
        let t = format!(
            "{}.{}.AAAA",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode("[1,2]")
        );
        assert!(matches!(check(&t), Err(JwtError::Malformed(_))));
    }

    #[test]
    fn key_persists_across_restarts() {
        let dir = std::env::temp_dir().join(format!("esb-jwt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jwt.der");
        let (a, generated) = SigningKey::load_or_generate(&path).unwrap();
        assert!(generated);
        let (b, generated) = SigningKey::load_or_generate(&path).unwrap();
        assert!(!generated);
        assert_eq!(a.public(), b.public());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bearer_prefix() {
        assert_eq!(strip_bearer("Bearer abc"), "abc");
        assert_eq!(strip_bearer("bearer   abc"), "abc");
        assert_eq!(strip_bearer("abc"), "abc");
        assert_eq!(strip_bearer("Bé"), "Bé");
    }
}
