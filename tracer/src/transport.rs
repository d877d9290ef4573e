//! Where plain text may go: one rule for every URL the tracer sends to and every `Host` it
//! serves anonymously. Tokens, spans, alerts and audit records name orders and people, so
//! `http://` is for this host only, unless the configuration says the network is trusted.

/// `localhost`, `127.0.0.0/8`, `::1` (brackets and a port allowed, names case-insensitive).
pub fn is_loopback_host(host: &str) -> bool {
    let host = strip_port(host.trim());
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        // `[::1]:8480` or `name:8480`; a bare IPv6 address has colons but no brackets.
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (name.ends_with(']') || !name.contains(':')) =>
        {
            name
        }
        _ => host,
    }
}

/// Checks a URL the tracer will send to: `https://` anywhere, `http://` only to this host
/// unless `insecure`. `what` names the setting (`[api] alert_webhook`) and `insecure_key`
/// the switch that allows plain text (`[api] insecure = true`), for the message.
pub fn check_url(
    url: &str,
    what: &str,
    insecure: bool,
    insecure_key: &str,
) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("{what} {url:?} is not a URL: {e}"))?;
    // The URL parser lowercases the scheme: `HTTPS://` is `https`.
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if insecure || parsed.host_str().is_some_and(is_loopback_host) => Ok(parsed),
        "http" => Err(format!(
            "{what} {url:?} is plain http:// to another host: use https://, or set {insecure_key} if the network is trusted"
        )),
        other => Err(format!(
            "{what} {url:?}: scheme {other}:// is not supported; use https:// (or http:// on this host)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_with_or_without_ports() {
        for host in [
            "localhost",
            "LOCALHOST:8480",
            "127.0.0.1",
            "127.3.4.5:1",
            "[::1]",
            "[::1]:8480",
            "::1",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "attacker.example",
            "localhost.attacker.example:8480",
            "127.0.0.1.attacker.example",
            "10.0.0.1",
            "[::2]:80",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn plain_http_only_to_this_host_unless_insecure() {
        let key = "[api] insecure = true";
        assert!(check_url("https://idp.example/certs", "jwks_url", false, key).is_ok());
        assert!(check_url("HTTPS://idp.example/certs", "jwks_url", false, key).is_ok());
        assert!(check_url("http://127.0.0.1:9/x", "jwks_url", false, key).is_ok());
        assert!(check_url("http://localhost/x", "jwks_url", false, key).is_ok());
        let refused = check_url("http://idp.example/certs", "jwks_url", false, key).unwrap_err();
        assert!(
            refused.contains("jwks_url") && refused.contains(key),
            "{refused}"
        );
        assert!(check_url("HTTP://idp.example/certs", "jwks_url", false, key).is_err());
        assert!(check_url("http://idp.example/certs", "jwks_url", true, key).is_ok());
        assert!(check_url("ftp://idp.example/certs", "jwks_url", true, key).is_err());
        assert!(check_url("idp.example/certs", "jwks_url", true, key).is_err());
    }
}
