//! Who may call the API: OIDC bearer tokens verified against the identity provider's keys
//! (JWKS from a URL or a file) with a required role claim, or static tokens kept as SHA-256
//! hashes. Anonymous access only when enabled for a local demo, only from loopback, and only
//! for requests addressed to a loopback name (a page elsewhere whose name was re-bound to
//! 127.0.0.1 — DNS rebinding — sends its own name in `Host`). What went wrong is logged, never
//! told to the caller: every refusal reads the same from outside.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub oidc: Option<OidcConfig>,
    /// Tokens for small setups and scrapers: give the SHA-256 (hex) of each token, never the
    /// token itself (`printf %s "$TOKEN" | sha256sum`).
    pub static_tokens: Vec<StaticToken>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Who the token stands for, as written to the audit log.
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// The identity provider's JWKS endpoint; fetched at start and refreshed.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// A JWKS file instead of a URL (air-gapped setups, tests).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Claim holding the caller's roles: a string or a list; dots descend into objects
    /// (`realm_access.roles`).
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// The role an incident responder has; tokens without it are refused (403).
    pub required_role: String,
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    #[serde(default = "default_refresh")]
    pub refresh_secs: u64,
}

fn default_role_claim() -> String {
    "roles".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    600
}

impl AuthConfig {
    pub fn validate(&self) -> Result<(), String> {
        for token in &self.static_tokens {
            if token.name.is_empty() {
                return Err("[api.auth] static_tokens: give each token a name".into());
            }
            if token.sha256.len() != 64 || hex::decode(&token.sha256).is_err() {
                return Err(format!(
                    "[api.auth] static token {}: sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                    token.name
                ));
            }
        }
        if let Some(oidc) = &self.oidc {
            if oidc.issuer.is_empty() || oidc.audience.is_empty() || oidc.required_role.is_empty() {
                return Err("[api.auth.oidc] give issuer, audience and required_role".into());
            }
            if oidc.jwks_url.is_some() == oidc.jwks_file.is_some() {
                return Err("[api.auth.oidc] give exactly one of jwks_url and jwks_file".into());
            }
        }
        Ok(())
    }

    pub fn is_configured(&self) -> bool {
        self.oidc.is_some() || !self.static_tokens.is_empty()
    }
}

/// Who made a request, as the audit log names them.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal(pub String);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token lacks the required role")]
    Forbidden,
    #[error("anonymous request addressed to {0:?}, not to a loopback name")]
    ForeignHost(String),
}

impl AuthError {
    /// What the client is told: 401 `unauthorized` or 403 `forbidden`, nothing more.
    pub fn public(&self) -> (u16, &'static str) {
        match self {
            Self::Missing | Self::Invalid(_) => (401, "unauthorized"),
            Self::Forbidden | Self::ForeignHost(_) => (403, "forbidden"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("cannot read JWKS file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("JWKS from {origin} is not a JSON Web Key Set: {source}")]
    Parse {
        origin: String,
        source: serde_json::Error,
    },
    #[error("cannot fetch JWKS from {url}: {source} (check [api.auth.oidc] jwks_url)")]
    Fetch { url: String, source: reqwest::Error },
}

/// Algorithms accepted from an identity provider: asymmetric only, so a leaked JWKS (which
/// is public anyway) cannot mint tokens.
const ALGORITHMS: [Algorithm; 7] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Unknown key ids trigger a JWKS refetch at most this often (key rotation, not a DoS lever).
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(60);

struct Oidc {
    config: OidcConfig,
    keys: RwLock<JwkSet>,
    last_fetch: Mutex<Option<Instant>>,
    client: reqwest::Client,
}

pub struct Auth {
    static_tokens: Vec<(String, [u8; 32])>,
    oidc: Option<Oidc>,
    anonymous_loopback: bool,
}

impl Auth {
    /// Loads the keys (a JWKS URL is fetched now: a monitor that cannot verify tokens should
    /// say so at start, not at the first incident).
    pub async fn new(
        config: &AuthConfig,
        anonymous_loopback: bool,
    ) -> Result<Self, AuthSetupError> {
        let static_tokens = config
            .static_tokens
            .iter()
            .filter_map(|t| {
                let bytes: [u8; 32] = hex::decode(&t.sha256).ok()?.try_into().ok()?;
                Some((t.name.clone(), bytes))
            })
            .collect();
        let oidc = match &config.oidc {
            None => None,
            Some(oidc) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|source| AuthSetupError::Fetch {
                        url: oidc.jwks_url.clone().unwrap_or_default(),
                        source,
                    })?;
                let keys = load_jwks(oidc, &client).await?;
                Some(Oidc {
                    config: oidc.clone(),
                    keys: RwLock::new(keys),
                    last_fetch: Mutex::new(Some(Instant::now())),
                    client,
                })
            }
        };
        Ok(Self {
            static_tokens,
            oidc,
            anonymous_loopback,
        })
    }

    /// Checks a request's `Authorization` header (or its absence) from `peer`, addressed to
    /// `host` (its `Host` header or URI authority).
    pub async fn check(
        &self,
        authorization: Option<&str>,
        peer: SocketAddr,
        host: Option<&str>,
    ) -> Result<Principal, AuthError> {
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let token = authorization.and_then(|h| {
            let (scheme, token) = h.trim_start().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            if authorization.is_none() && self.anonymous_loopback && peer.ip().is_loopback() {
                let host = host.unwrap_or("");
                if !crate::transport::is_loopback_host(host) {
                    return Err(AuthError::ForeignHost(host.chars().take(100).collect()));
                }
                return Ok(Principal(format!("anonymous@{}", peer.ip())));
            }
            return Err(if authorization.is_some() {
                AuthError::Invalid("use `Authorization: Bearer <token>`".into())
            } else {
                AuthError::Missing
            });
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        for (name, hash) in &self.static_tokens {
            if constant_time_eq(&digest, hash) {
                return Ok(Principal(format!("token:{name}")));
            }
        }
        match &self.oidc {
            Some(oidc) => oidc.verify(token).await,
            None => Err(AuthError::Invalid("unknown token".into())),
        }
    }

    /// Refetches the JWKS on the configured period (rotation).
    pub async fn refresh_periodically(&self) {
        let Some(oidc) = &self.oidc else { return };
        if oidc.config.jwks_url.is_none() {
            return;
        }
        let period = Duration::from_secs(oidc.config.refresh_secs.max(10));
        loop {
            tokio::time::sleep(period).await;
            oidc.refetch().await;
        }
    }
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn load_jwks(oidc: &OidcConfig, client: &reqwest::Client) -> Result<JwkSet, AuthSetupError> {
    if let Some(path) = &oidc.jwks_file {
        let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::Read {
            path: path.display().to_string(),
            source,
        })?;
        return serde_json::from_str(&text).map_err(|source| AuthSetupError::Parse {
            origin: path.display().to_string(),
            source,
        });
    }
    let url = oidc.jwks_url.clone().unwrap_or_default();
    let fetch = |source| AuthSetupError::Fetch {
        url: url.clone(),
        source,
    };
    let body = client
        .get(&url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(fetch)?
        .text()
        .await
        .map_err(fetch)?;
    serde_json::from_str(&body).map_err(|source| AuthSetupError::Parse {
        origin: url.clone(),
        source,
    })
}

impl Oidc {
    async fn refetch(&self) {
        match load_jwks(&self.config, &self.client).await {
            Ok(keys) => {
                if let Ok(mut current) = self.keys.write() {
                    *current = keys;
                }
            }
            Err(err) => tracing::warn!("keeping the previous identity provider keys: {err}"),
        }
    }

    async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let key = match self.key_for(header.kid.as_deref()) {
            Some(key) => key,
            None => {
                let due = self
                    .last_fetch
                    .lock()
                    .map(|mut last| {
                        let due = last.is_none_or(|t| t.elapsed() >= REFETCH_AT_MOST_EVERY);
                        if due {
                            *last = Some(Instant::now());
                        }
                        due
                    })
                    .unwrap_or(false);
                if due && self.config.jwks_url.is_some() {
                    self.refetch().await;
                }
                self.key_for(header.kid.as_deref())
                    .ok_or_else(|| AuthError::Invalid("signing key not in the JWKS".into()))?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway_secs;
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if !has_role(
            &data.claims,
            &self.config.role_claim,
            &self.config.required_role,
        ) {
            return Err(AuthError::Forbidden);
        }
        let subject = data
            .claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or("unknown");
        Ok(Principal(format!("oidc:{subject}")))
    }

    fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.read().ok()?;
        let jwk = match kid {
            Some(kid) => keys.find(kid)?,
            // Without a kid, only a single-key set is unambiguous.
            None if keys.keys.len() == 1 => &keys.keys[0],
            None => return None,
        };
        DecodingKey::from_jwk(jwk).ok()
    }
}

fn has_role(claims: &serde_json::Value, claim: &str, role: &str) -> bool {
    let mut value = claims;
    for part in claim.split('.') {
        match value.get(part) {
            Some(v) => value = v,
            None => return false,
        }
    }
    match value {
        serde_json::Value::String(s) => s.split_whitespace().any(|r| r == role),
        serde_json::Value::Array(items) => items.iter().any(|v| v.as_str() == Some(role)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(ip: &str) -> SocketAddr {
        format!("{ip}:40000").parse().unwrap()
    }

    #[tokio::test]
    async fn static_tokens_are_compared_by_hash_and_anonymous_needs_loopback() {
        let config = AuthConfig {
            oidc: None,
            static_tokens: vec![StaticToken {
                name: "ops".into(),
                sha256: hex::encode(Sha256::digest(b"s3cret")),
            }],
        };
        config.validate().unwrap();
        let auth = Auth::new(&config, true).await.unwrap();
        let local = peer("127.0.0.1");
        let host = Some("localhost:8480");
        for header in ["Bearer s3cret", "bearer s3cret", "BEARER  s3cret "] {
            assert_eq!(
                auth.check(Some(header), local, host).await,
                Ok(Principal("token:ops".into())),
                "{header}"
            );
        }
        assert!(matches!(
            auth.check(Some("Bearer wrong"), local, host).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            auth.check(Some("Basic czNjcmV0"), local, host).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(auth.check(None, local, host).await.is_ok());
        assert!(matches!(
            auth.check(None, local, Some("attacker.example:8480")).await,
            Err(AuthError::ForeignHost(_))
        ));
        assert!(matches!(
            auth.check(None, local, None).await,
            Err(AuthError::ForeignHost(_))
        ));
        assert_eq!(
            auth.check(None, peer("10.1.2.3"), host).await,
            Err(AuthError::Missing)
        );
        let closed = Auth::new(&config, false).await.unwrap();
        assert_eq!(
            closed.check(None, local, host).await,
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn roles_are_found_in_strings_lists_and_nested_claims() {
        let claims = serde_json::json!({
            "roles": ["viewer", "incident-responder"],
            "scope": "openid incident-responder",
            "realm_access": {"roles": ["incident-responder"]}
        });
        assert!(has_role(&claims, "roles", "incident-responder"));
        assert!(has_role(&claims, "scope", "incident-responder"));
        assert!(has_role(
            &claims,
            "realm_access.roles",
            "incident-responder"
        ));
        assert!(!has_role(&claims, "roles", "admin"));
        assert!(!has_role(&claims, "groups", "incident-responder"));
    }

    #[test]
    fn bad_auth_config_says_what_to_fix() {
        let config = AuthConfig {
            oidc: None,
            static_tokens: vec![StaticToken {
                name: "ops".into(),
                sha256: "plain-token".into(),
            }],
        };
        assert!(config.validate().unwrap_err().contains("64 hex"));
    }
}
