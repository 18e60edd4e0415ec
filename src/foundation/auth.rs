//! Authentication: HS256 JWTs minted by the main backend with the shared `JWT_SECRET`.
//!
//! jsonwebtoken checks the signature; the claims are checked here, because its own checks
//! read `exp` only as an integer (a backend that writes `1.7e9` or `1700000000.5`, both
//! valid JSON numbers and valid NumericDates, would be refused) and report every wrong
//! claim as one error. Every refusal is 401 `unauthorized` with one of the messages listed
//! in PROTOCOL.md.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::foundation::config::Config;
use crate::foundation::error::{ApiError, Code};
use crate::foundation::protocol::{UserId, MAX_NAME_CHARS};
use crate::foundation::secrets::SecretError;

#[derive(Debug, Serialize)]
struct MintedClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    iat: u64,
    exp: u64,
}

/// Who a verified token speaks for, and until when.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: UserId,
    pub name: Option<String>,
    /// When the token stops being accepted, in seconds since the Unix epoch: its `exp`
    /// plus the leeway, so that a socket is closed (1008) exactly when a reconnect with
    /// the same token would be refused.
    pub(crate) expires_at: u64,
}

impl Identity {
    /// Time left before the token expires (zero if it already has).
    pub(crate) fn remaining(&self) -> Duration {
        Duration::from_secs_f64((self.expires_at as f64 - now_secs()).max(0.0))
    }
}

/// What a token must satisfy besides its signature (`jwt_*` in the configuration).
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// When set, `aud` is required and must name it; when unset, `aud` is ignored.
    pub(crate) audience: Option<String>,
    /// Clock difference allowed on `exp` and `nbf`, in seconds.
    pub(crate) leeway_secs: u64,
    /// When set, `iat` is required and `exp - iat` may not exceed it, nor may the time
    /// left (`exp - now`), so that an `iat` in the future does not stretch a token.
    pub(crate) max_lifetime_secs: Option<u64>,
}

impl Rules {
    pub(crate) fn from_config(config: &Config) -> Rules {
        Rules {
            audience: config.jwt_audience.clone(),
            leeway_secs: config.jwt_leeway_secs,
            max_lifetime_secs: (config.jwt_max_lifetime_secs > 0)
                .then_some(config.jwt_max_lifetime_secs),
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules::from_config(&Config::default())
    }
}

/// Verifies and mints tokens with one secret. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    rules: Rules,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("secret", &"<redacted>")
            .field("rules", &self.rules)
            .finish()
    }
}

impl Authenticator {
    /// An authenticator with the default rules (tests and tools).
    pub fn new(secret: &str) -> Self {
        Self::with_rules(secret, Rules::default())
    }

    pub(crate) fn with_rules(secret: &str, rules: Rules) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Signature and algorithm only: the claims are checked in `check_claims`.
        validation.set_required_spec_claims::<&str>(&[]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        Authenticator {
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            validation,
            rules,
        }
    }

    /// The deployment's authenticator: its secret (`JWT_SECRET`, or the generated one in
    /// the data directory) and its `jwt_*` rules.
    pub(crate) fn from_config(config: &Config) -> Result<Self, SecretError> {
        let secret = crate::foundation::secrets::jwt_secret(config)?;
        Ok(Self::with_rules(&secret, Rules::from_config(config)))
    }

    /// Checks algorithm, signature, times, audience and the claims' shapes.
    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        self.verify_at(token, now_secs())
    }

    fn verify_at(&self, token: &str, now: f64) -> Result<Identity, ApiError> {
        check_algorithm(token)?;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &self.decoding, &self.validation)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind;
                    refuse(match e.kind() {
                        ErrorKind::InvalidSignature => "the token's signature does not match",
                        ErrorKind::InvalidAlgorithm => "the token must be signed with HS256",
                        _ => MALFORMED,
                    })
                })?;
        self.check_claims(&data.claims, now)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: f64) -> Result<Identity, ApiError> {
        let leeway = self.rules.leeway_secs as f64;
        let exp =
            numeric_date(claims, "exp")?.ok_or_else(|| refuse("the token lacks an exp claim"))?;
        if now >= exp + leeway {
            return Err(refuse("the token has expired: get a new one"));
        }
        if let Some(nbf) = numeric_date(claims, "nbf")? {
            if now + leeway < nbf {
                return Err(refuse("the token is not valid yet (nbf is in the future)"));
            }
        }
        let iat = numeric_date(claims, "iat")?;
        if let Some(max) = self.rules.max_lifetime_secs {
            let iat = iat.ok_or_else(|| {
                refuse("the token lacks an iat claim, required when jwt_max_lifetime_secs is set")
            })?;
            if exp - iat > max as f64 || exp - now > max as f64 + leeway {
                return Err(refuse(format!(
                    "the token's lifetime exceeds jwt_max_lifetime_secs ({max} s)"
                )));
            }
        }
        if let Some(expected) = &self.rules.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == expected,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(expected)),
                None | Some(Value::Null) => {
                    return Err(refuse(
                        "the token lacks an aud claim, required by jwt_audience",
                    ))
                }
                Some(_) => false,
            };
            if !ok {
                return Err(refuse(
                    "the token's audience (aud) does not name this server",
                ));
            }
        }
        let sub = match claims.get("sub") {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => return Err(refuse("the token lacks a sub claim")),
            Some(_) => return Err(refuse("sub: must be a string")),
        };
        let user = UserId::parse(sub).map_err(|e| refuse(format!("sub: {e}")))?;
        let name = match claims.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(n)) if n.chars().count() <= MAX_NAME_CHARS && !n.contains('\0') => {
                Some(n.clone())
            }
            Some(_) => {
                return Err(refuse(format!(
                    "name: a string of at most {MAX_NAME_CHARS} characters, without NUL"
                )))
            }
        };
        Ok(Identity {
            user,
            name,
            // Clamped: a float exp can be anything a double holds.
            expires_at: (exp + leeway).clamp(0.0, u64::MAX as f64) as u64,
        })
    }

    /// The longest a minted token may live, when `jwt_max_lifetime_secs` is set.
    pub(crate) fn max_ttl(&self) -> Option<Duration> {
        self.rules.max_lifetime_secs.map(Duration::from_secs)
    }

    /// Mints a token for `user`, valid for `ttl`, carrying the configured audience (for
    /// `pgchat token`, `pgchat bench` and tests).
    pub fn mint(&self, user: &UserId, name: Option<&str>, ttl: Duration) -> String {
        let iat = now_secs() as u64;
        let claims = MintedClaims {
            sub: user.as_str(),
            name,
            aud: self.rules.audience.as_deref(),
            iat,
            exp: iat + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 encoding cannot fail")
    }
}

const MALFORMED: &str = "the token is malformed: expected a JWT (three base64url parts)";

fn refuse(why: impl Into<String>) -> ApiError {
    ApiError::new(Code::Unauthorized, why)
}

/// Refuses any algorithm but HS256 by name, before the signature is looked at: jsonwebtoken
/// does not know `none` at all and would report it as a malformed header.
fn check_algorithm(token: &str) -> Result<(), ApiError> {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| refuse(MALFORMED))?;
    let header: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| refuse(MALFORMED))?;
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => Ok(()),
        Some(_) | None => Err(refuse("the token must be signed with HS256")),
    }
}

/// A NumericDate claim: any JSON number (integer or not, e.g. `1.7e9`), seconds since 1970.
fn numeric_date(claims: &Map<String, Value>, key: &str) -> Result<Option<f64>, ApiError> {
    match claims.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() => Ok(Some(t)),
            _ => Err(refuse(format!(
                "{key}: must be a number of seconds since 1970"
            ))),
        },
        Some(_) => Err(refuse(format!(
            "{key}: must be a number of seconds since 1970"
        ))),
    }
}

/// Seconds since the Unix epoch, with the fraction (token times may have one).
fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
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
