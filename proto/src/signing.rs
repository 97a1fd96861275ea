//! HMAC-SHA256 signatures of the Pusher protocol (§6.2, §10.1, §12, §13).
//!
//! Every comparison of a received signature is constant-time, and every signature is
//! computed over the exact bytes received: `channel_data` and `user_data` are never
//! re-serialized before they are checked.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use thiserror::Error;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex HMAC-SHA256 of `message` keyed with `secret`.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, message))
}

fn hmac_sha256(secret: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length, so `new_from_slice` cannot fail here.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    };
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Lowercase hex MD5, as the HTTP API's `body_md5`.
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// The string a channel subscription signs (§6.2).
pub fn channel_string_to_sign(
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
) -> String {
    match channel_data {
        Some(data) => format!("{socket_id}:{channel}:{data}"),
        None => format!("{socket_id}:{channel}"),
    }
}

/// The string a user sign-in signs (§10.1).
pub fn user_string_to_sign(socket_id: &str, user_data: &str) -> String {
    format!("{socket_id}::user::{user_data}")
}

/// `"{key}:{hex}"`, what an application's auth endpoint returns.
pub fn sign_auth(key: &str, secret: &str, string_to_sign: &str) -> String {
    format!(
        "{key}:{}",
        hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes())
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("auth is not of the form 'key:signature'")]
    Malformed,
    #[error("Invalid key in subscription auth data: '{0}'")]
    WrongKey(String),
    #[error("Invalid signature: expected HMAC SHA256 hex digest of '{0}'")]
    BadSignature(String),
}

/// Checks an `auth` field against the app's key and secret.
pub fn verify_auth(
    key: &str,
    secret: &str,
    auth: &str,
    string_to_sign: &str,
) -> Result<(), AuthError> {
    let (given_key, given_hex) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if given_key != key {
        return Err(AuthError::WrongKey(given_key.to_owned()));
    }
    let expected = hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes());
    if bool::from(expected.as_bytes().ct_eq(given_hex.as_bytes())) {
        Ok(())
    } else {
        Err(AuthError::BadSignature(string_to_sign.to_owned()))
    }
}

/// `X-Pusher-Signature` of a webhook body.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    hmac_sha256_hex(secret.as_bytes(), body)
}

/// Decodes `%XX` escapes and `+` of one query component. Invalid escapes stay as they are.
pub fn percent_decode(input: &str) -> String {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits a raw query string into percent-decoded key/value pairs, in their order.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Why an HTTP API request's signature was refused (all answered with 401).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestAuthError {
    #[error("Missing query parameter {0}")]
    Missing(&'static str),
    #[error("Unknown auth_key")]
    WrongKey,
    #[error("Unsupported auth_version {0:?}; only 1.0 is supported")]
    BadVersion(String),
    #[error("Invalid auth_timestamp {0:?}")]
    BadTimestamp(String),
    #[error("Timestamp expired: Given timestamp ({given}) not within {window_secs}s of server time ({now})")]
    TimestampExpired {
        given: u64,
        now: u64,
        window_secs: u64,
    },
    #[error("body_md5 is required for a request with a body")]
    BodyMd5Missing,
    #[error("body_md5 does not match the MD5 of the body")]
    BodyMd5Mismatch,
    #[error(
        "Invalid signature: you should have sent HmacSHA256Hex({string_to_sign:?}, your_secret)"
    )]
    BadSignature { string_to_sign: String },
}

/// The parts of an HTTP API request that its signature covers.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The request path without the query, as received.
    pub path: &'a str,
    /// The raw query string, without the leading `?`.
    pub raw_query: &'a str,
    pub body: &'a [u8],
}

/// Verifies an HTTP API request as protocol §12.2 describes.
pub fn verify_request(
    request: SignedRequest<'_>,
    key: &str,
    secret: &str,
    now_secs: u64,
    window_secs: u64,
) -> Result<(), RequestAuthError> {
    let mut params: Vec<(String, String)> = parse_query(request.raw_query)
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    let find = |name: &'static str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or(RequestAuthError::Missing(name))
    };
    let given_key = find("auth_key")?;
    let timestamp = find("auth_timestamp")?;
    let version = find("auth_version")?;
    let signature = find("auth_signature")?;
    if given_key != key {
        return Err(RequestAuthError::WrongKey);
    }
    if version != "1.0" {
        return Err(RequestAuthError::BadVersion(version));
    }
    let given: u64 = timestamp
        .parse()
        .map_err(|_| RequestAuthError::BadTimestamp(timestamp.clone()))?;
    if given.abs_diff(now_secs) > window_secs {
        return Err(RequestAuthError::TimestampExpired {
            given,
            now: now_secs,
            window_secs,
        });
    }
    if !request.body.is_empty() {
        let body_md5 = params
            .iter()
            .find(|(k, _)| k == "body_md5")
            .map(|(_, v)| v.as_str())
            .ok_or(RequestAuthError::BodyMd5Missing)?;
        if !bool::from(md5_hex(request.body).as_bytes().ct_eq(body_md5.as_bytes())) {
            return Err(RequestAuthError::BodyMd5Mismatch);
        }
    }
    params.retain(|(k, _)| k != "auth_signature");
    params.sort();
    let query = join_params(&params);
    let method = request.method.to_ascii_uppercase();
    let matches = |path: &str| {
        let string_to_sign = format!("{method}\n{path}\n{query}");
        let expected = hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes());
        (
            bool::from(expected.as_bytes().ct_eq(signature.as_bytes())),
            string_to_sign,
        )
    };
    let (ok, string_to_sign) = matches(request.path);
    if ok || (request.path.contains('%') && matches(&percent_decode(request.path)).0) {
        return Ok(());
    }
    Err(RequestAuthError::BadSignature { string_to_sign })
}

fn join_params(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Builds the signed query string of an HTTP API request, as pusher-http-node does (§12.1).
/// `extra` holds the caller's own parameters (e.g. `info`); values are not URL-encoded.
pub fn sign_request(
    key: &str,
    secret: &str,
    method: &str,
    path: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    timestamp: u64,
) -> String {
    let mut params: Vec<(String, String)> = vec![
        ("auth_key".into(), key.into()),
        ("auth_timestamp".into(), timestamp.to_string()),
        ("auth_version".into(), "1.0".into()),
    ];
    if !body.is_empty() {
        params.push(("body_md5".into(), md5_hex(body)));
    }
    params.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    params.sort();
    let query = join_params(&params);
    let string_to_sign = format!("{}\n{path}\n{query}", method.to_ascii_uppercase());
    let signature = hmac_sha256_hex(secret.as_bytes(), string_to_sign.as_bytes());
    format!("{query}&auth_signature={signature}")
}

#[cfg(test)]
mod tests {
    //! The test vectors of protocol §16, produced by the official `pusher` library.
    use super::*;

    const KEY: &str = "278d425bdf160c739803";
    const SECRET: &str = "7ad3773142a6692b25b8";
    const SOCKET: &str = "1234.1234";
    const NOW: u64 = 1353088179;

    fn auth(s: &str) -> String {
        sign_auth(KEY, SECRET, s)
    }

    #[test]
    fn private_channel_vector() {
        let s = channel_string_to_sign(SOCKET, "private-foobar", None);
        assert_eq!(s, "1234.1234:private-foobar");
        let a = auth(&s);
        assert_eq!(
            a,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert_eq!(verify_auth(KEY, SECRET, &a, &s), Ok(()));
    }

    #[test]
    fn presence_channel_vectors() {
        let data = r#"{"user_id":"10","user_info":{"name":"Mr. Channels"}}"#;
        let s = channel_string_to_sign(SOCKET, "presence-foobar", Some(data));
        assert_eq!(
            auth(&s),
            "278d425bdf160c739803:4c6d8fc42a207ba96a0779844171b0bb819d96ffceef9609f5cce596ab17a800"
        );
        let data = r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#;
        let s = channel_string_to_sign(SOCKET, "presence-foobar", Some(data));
        assert_eq!(
            auth(&s),
            "278d425bdf160c739803:31935e7d86dba64c2a90aed31fdc61869f9b22ba9d8863bba239c03ca481bc80"
        );
    }

    #[test]
    fn user_signin_vectors() {
        let cases = [
            (
                r#"{"id":"12345"}"#,
                "4708d583dada6a56435fb8bc611c77c359a31eebde13337c16ab43aa6de336ba",
            ),
            (
                r#"{"id":"10","user_info":{"name":"Mr. Channels"}}"#,
                "aaa4ab4b01d77a2114ba482448abfb2de8f75152d692e1524f86b0b2b04ad7c9",
            ),
            (
                r#"{"id":"10","user_info":{"name":"Mr. Channels"},"watchlist":["11","12"]}"#,
                "986dbe7473ca6468b3b4356cc4ad21d96e155cd985c649b51e14aa162355e49f",
            ),
        ];
        for (user_data, hex) in cases {
            let s = user_string_to_sign(SOCKET, user_data);
            assert_eq!(auth(&s), format!("{KEY}:{hex}"));
            assert_eq!(
                verify_auth(KEY, SECRET, &format!("{KEY}:{hex}"), &s),
                Ok(())
            );
        }
        assert_eq!(
            user_string_to_sign(SOCKET, r#"{"id":"12345"}"#),
            r#"1234.1234::user::{"id":"12345"}"#
        );
    }

    #[test]
    fn encrypted_channel_auth_vector() {
        let s = channel_string_to_sign(SOCKET, "private-encrypted-foobar", None);
        assert_eq!(
            auth(&s),
            "278d425bdf160c739803:e6a18892d037c5d5e76a2265df4f086ffc38631605530dfd214aa5bff495f533"
        );
    }

    #[test]
    fn auth_rejections() {
        let s = channel_string_to_sign(SOCKET, "private-foobar", None);
        assert_eq!(
            verify_auth(KEY, SECRET, "nocolon", &s),
            Err(AuthError::Malformed)
        );
        assert!(matches!(
            verify_auth(KEY, SECRET, "other:abc", &s),
            Err(AuthError::WrongKey(_))
        ));
        let forged = format!("{KEY}:{}", "0".repeat(64));
        assert!(matches!(
            verify_auth(KEY, SECRET, &forged, &s),
            Err(AuthError::BadSignature(_))
        ));
    }

    /// (path, method, body, extra params, expected query) of §16.5 (a)–(g).
    type HttpVector = (
        &'static str,
        &'static str,
        &'static str,
        Vec<(&'static str, &'static str)>,
        &'static str,
    );

    fn http_vectors() -> Vec<HttpVector> {
        vec![
            ("/apps/3/events", "POST", r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#, vec![],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=ec365a775a4cd0599faeb73354201b6f&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"),
            ("/apps/3/events", "POST", r#"{"name":"foo","data":"{\"some\":\"data\"}","channels":["project-3"]}"#, vec![],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=45ff0dd3fcd388e766ebeec554920e41&auth_signature=3afbfced4119aeb18b1b441f623f438db238170e007bb8dda50203ad09031632"),
            ("/apps/3/channels", "GET", "", vec![("filter_by_prefix", "presence-"), ("info", "user_count")],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&filter_by_prefix=presence-&info=user_count&auth_signature=16819168891cb5dfd72b5c7a5d3d602605b26c6ba1930033b5e2eeeb65010291"),
            ("/apps/3/channels/presence-foobar", "GET", "", vec![("info", "user_count,subscription_count")],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&info=user_count,subscription_count&auth_signature=377ee9260ea002a70c0d40cd887d55cb36db9f7f821297f5efacbcce66be356d"),
            ("/apps/3/batch_events", "POST", r#"{"batch":[{"channel":"project-3","name":"foo","data":"{\"some\":\"data\"}"}]}"#, vec![],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=39e691c1f6a83daf77df2397111bfd98&auth_signature=9df3472fb01f5d693bc9bd922118eb51e8268ac59841d3c6e3c37d488a837534"),
            ("/apps/3/events", "POST", r##"{"name":"my-event","data":"{\"hello\":\"world\"}","channels":["#server-to-user-10"]}"##, vec![],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=702a5900316b3f148120baf843df2621&auth_signature=a2bf3c1da986a01570c4879818cc32649a4a658521ff3119fd046c129559bc36"),
            ("/apps/3/users/10/terminate_connections", "POST", "{}", vec![],
             "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0&body_md5=99914b932bd37a50b983c5e7c90ae93b&auth_signature=932e2e5aa8afd512aca2216d13ea8040eae806ab3bee78b704cd1af8139da930"),
        ]
    }

    #[test]
    fn http_request_vectors_sign_and_verify() {
        for (path, method, body, extra, expected) in http_vectors() {
            let query = sign_request(KEY, SECRET, method, path, &extra, body.as_bytes(), NOW);
            assert_eq!(query, expected, "{method} {path}");
            let request = SignedRequest {
                method,
                path,
                raw_query: expected,
                body: body.as_bytes(),
            };
            assert_eq!(
                verify_request(request, KEY, SECRET, NOW, 600),
                Ok(()),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn http_request_rejections() {
        let (path, method, body, _, query) = http_vectors().remove(1);
        let req = |raw_query, body: &'static str| SignedRequest {
            method,
            path,
            raw_query,
            body: body.as_bytes(),
        };
        assert!(matches!(
            verify_request(req(query, body), KEY, SECRET, NOW + 601, 600),
            Err(RequestAuthError::TimestampExpired { .. })
        ));
        assert_eq!(
            verify_request(req(query, "{}"), KEY, SECRET, NOW, 600),
            Err(RequestAuthError::BodyMd5Mismatch)
        );
        assert_eq!(
            verify_request(req(query, body), "other", SECRET, NOW, 600),
            Err(RequestAuthError::WrongKey)
        );
        assert!(matches!(
            verify_request(req(query, body), KEY, "wrong-secret", NOW, 600),
            Err(RequestAuthError::BadSignature { .. })
        ));
        assert_eq!(
            verify_request(req("auth_key=x", body), KEY, SECRET, NOW, 600),
            Err(RequestAuthError::Missing("auth_timestamp"))
        );
    }

    #[test]
    fn percent_encoded_values_verify() {
        // A client that percent-encodes the comma still signs the unescaped value.
        let (path, method, body, _, query) = http_vectors().remove(3);
        let encoded = query.replace(
            "user_count,subscription_count",
            "user_count%2Csubscription_count",
        );
        let request = SignedRequest {
            method,
            path,
            raw_query: &encoded,
            body: body.as_bytes(),
        };
        assert_eq!(verify_request(request, KEY, SECRET, NOW, 600), Ok(()));
    }

    #[test]
    fn webhook_vector() {
        let body = r#"{"time_ms":1327078148132,"events":[{"name":"channel_occupied","channel":"test-channel"}]}"#;
        assert_eq!(
            webhook_signature(SECRET, body.as_bytes()),
            "5dd6562a9f744b72a688bcdfea41c14c2c56d12c44c99e32c08face4cc1e8aeb"
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Cb+c%zz%"), "a,b c%zz%");
        assert_eq!(
            parse_query("a=1&&b&c=%41"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "".into()),
                ("c".into(), "A".into())
            ]
        );
    }
}
