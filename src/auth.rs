//! Authentication: HS256 JWTs minted by the main backend with the shared `JWT_SECRET`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, Code};
use crate::protocol::UserId;

use crate::protocol::MAX_NAME_CHARS;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    exp: u64,
}

/// Who a verified token speaks for, and until when.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub name: Option<String>,
    /// Seconds since the Unix epoch.
    pub expires_at: u64,
}

impl Identity {
    /// Time left before the token expires (zero if it already has).
    pub fn remaining(&self) -> Duration {
        let now = now_secs();
        Duration::from_secs(self.expires_at.saturating_sub(now))
    }
}

/// Verifies and mints tokens with one secret. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // The backend and pgchat share a clock source in practice; a token is expired when it
        // says so, which keeps the 1008 close on expiry and the 401 on connect consistent.
        validation.leeway = 0;
        Authenticator {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    /// Checks signature, algorithm, expiry and the claims' shapes.
    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let unauthorized = |why: String| ApiError::new(Code::Unauthorized, why);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                let why = match e.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired: get a new one",
                    ErrorKind::InvalidSignature => "the token's signature does not match",
                    ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a sub or exp claim",
                    _ => "the token is malformed",
                };
                unauthorized(why.to_string())
            })?;
        let claims = data.claims;
        let user = UserId::parse(&claims.sub).map_err(|e| unauthorized(format!("sub: {e}")))?;
        if let Some(name) = &claims.name {
            if name.chars().count() > MAX_NAME_CHARS || name.contains('\0') {
                return Err(unauthorized(format!(
                    "name: at most {MAX_NAME_CHARS} characters, without NUL"
                )));
            }
        }
        Ok(Identity {
            user,
            name: claims.name,
            expires_at: claims.exp,
        })
    }

    /// Mints a token for `user`, valid for `ttl` (for `pgchat token` and tests).
    pub fn mint(&self, user: &UserId, name: Option<&str>, ttl: Duration) -> String {
        let claims = Claims {
            sub: user.as_str().to_string(),
            name: name.map(str::to_string),
            exp: now_secs() + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_verifies_and_a_forged_one_does_not() {
        let auth = Authenticator::new("s1");
        let alice = UserId::parse("alice").unwrap();
        let t = auth.mint(&alice, Some("Alice"), Duration::from_secs(60));
        let id = auth.verify(&t).unwrap();
        assert_eq!(id.user, alice);
        assert_eq!(id.name.as_deref(), Some("Alice"));
        let other = Authenticator::new("s2");
        assert_eq!(other.verify(&t).unwrap_err().code, Code::Unauthorized);
        assert_eq!(
            auth.verify("nonsense").unwrap_err().code,
            Code::Unauthorized
        );
    }
}
