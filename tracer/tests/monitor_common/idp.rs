//! A test identity provider: an Ed25519 key whose public half is a JWKS file, tokens signed
//! with it, and the `[api.auth]` section that trusts it (plus one static token).

use std::process::Command;

use sha2::{Digest, Sha256};

use super::{S, now_ns};

pub const ISSUER: &str = "https://idp.example.test/realms/shop";
pub const AUDIENCE: &str = "order-tracer";
pub const ROLE: &str = "incident-responder";
pub const STATIC_TOKEN: &str = "ci-static-token-0123456789";

pub fn openssl(args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .status()
        .expect("the openssl command is needed to make test keys (apt-get install openssl)");
    assert!(status.success(), "openssl {args:?} failed");
}

pub struct Idp {
    key: jsonwebtoken::EncodingKey,
}

impl Idp {
    /// A fresh Ed25519 key; its public half written as a JWKS file.
    pub fn new(dir: &std::path::Path) -> (Self, std::path::PathBuf) {
        let key = dir.join("idp.pem");
        let public = dir.join("idp.der");
        openssl(&[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ]);
        openssl(&[
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            public.to_str().unwrap(),
        ]);
        let der = std::fs::read(&public).unwrap();
        use base64::Engine;
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der[der.len() - 32..]);
        let jwks = dir.join("jwks.json");
        std::fs::write(
            &jwks,
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA", "use": "sig"}]})
                .to_string(),
        )
        .unwrap();
        let pem = std::fs::read(&key).unwrap();
        (
            Self {
                key: jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap(),
            },
            jwks,
        )
    }

    pub fn token(&self, audience: &str, roles: &[&str], expires_in: i64) -> String {
        let now = (now_ns() / S) as i64;
        self.sign(serde_json::json!({
            "iss": ISSUER, "aud": audience, "sub": "alice", "iat": now,
            "exp": now + expires_in, "roles": roles,
        }))
    }

    /// Signs any claims.
    pub fn sign(&self, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

pub fn auth_toml(jwks: &std::path::Path) -> String {
    format!(
        "[api.auth]\nstatic_tokens = [{{ name = \"ci\", sha256 = \"{}\" }}]\n[api.auth.oidc]\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_file = {:?}\nrequired_role = \"{ROLE}\"\nleeway_secs = 0\n",
        hex::encode(Sha256::digest(STATIC_TOKEN.as_bytes())),
        jwks.display().to_string()
    )
}
