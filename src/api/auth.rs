//! Bearer tokens: compared as SHA-256 digests in constant time, so neither timing nor logs reveal them.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use super::ApiError;

/// The hex SHA-256 of a token: what the store keeps instead of the token.
pub fn hash_token(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing `Authorization: Bearer <token>` header".into()))?;
    let value =
        value.to_str().map_err(|_| ApiError::Unauthorized("the Authorization header is not valid text".into()))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(ApiError::Unauthorized("expected `Authorization: Bearer <token>`".into())),
    }
}

/// Whether `given` equals `expected`, taking the same time wherever they differ.
pub fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the operator token. With none configured, the operator API is closed to everyone.
pub fn require_operator(headers: &HeaderMap, configured: Option<&str>) -> Result<(), ApiError> {
    let given = bearer(headers)?;
    match configured {
        None => Err(ApiError::Unauthorized(
            "no operator token is configured on this server ([api] operator_token or FORGEFLEET_API_OPERATOR_TOKEN)"
                .into(),
        )),
        Some(expected) if same_token(given, expected) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized("the operator token is not valid".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(axum::http::header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn only_the_configured_operator_token_passes() {
        assert!(require_operator(&headers("Bearer s3cret"), Some("s3cret")).is_ok());
        assert!(require_operator(&headers("bearer s3cret"), Some("s3cret")).is_ok());
        assert!(require_operator(&headers("Bearer wrong"), Some("s3cret")).is_err());
        assert!(require_operator(&headers("Basic s3cret"), Some("s3cret")).is_err());
        assert!(require_operator(&headers("Bearer s3cret"), None).is_err());
        assert!(require_operator(&HeaderMap::new(), Some("s3cret")).is_err());
    }

    #[test]
    fn token_hashes_are_hex_sha256() {
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
