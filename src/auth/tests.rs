//! The bad-token table, real RSA and EC keys (made with `openssl` for each run), and the two
//! decisions.

use super::*;

const SECRET: &[u8] = b"test-secret";
const LEEWAY: Duration = Duration::from_secs(5);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        username: sub.into(),
        roles: vec!["user".into()],
        permissions: Vec::new(),
        tenant_id: None,
        iss: DEFAULT_ISSUER.into(),
        aud: DEFAULT_AUDIENCE.into(),
        exp: now() + 3600,
        iat: now(),
        nbf: None,
    }
}

fn sign(claims: &Claims, algorithm: Algorithm, key: &EncodingKey) -> String {
    jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
}

fn hs(claims: &Claims) -> String {
    sign(claims, Algorithm::HS256, &EncodingKey::from_secret(SECRET))
}

fn verifier() -> Verifier {
    Verifier::hs256(SECRET, DEFAULT_ISSUER, DEFAULT_AUDIENCE, LEEWAY)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key pair from `openssl`: (private PEM, public PEM).
fn openssl_key_pair(kind: &str) -> (Vec<u8>, Vec<u8>) {
    // Tests run in parallel: each pair gets a directory of its own.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "notify-auth-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let generate = match kind {
        "rsa" => vec![
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        _ => vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ],
    };
    let status = std::process::Command::new("openssl")
        .args(&generate)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl is installed");
    assert!(status.success());
    let status = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(status.success());
    let pair = (
        std::fs::read(&private).unwrap(),
        std::fs::read(&public).unwrap(),
    );
    let _ = std::fs::remove_dir_all(&dir);
    pair
}

#[test]
fn a_platform_token_becomes_its_principal() {
    let mut c = claims("u1");
    c.roles = vec!["admin".into()];
    c.permissions = vec![PUBLISH_PERMISSION.into()];
    let principal = verifier().verify(&hs(&c)).unwrap();
    assert_eq!(principal.user_id, "u1");
    assert!(principal.roles.contains("admin"));
    assert!(principal.permissions.contains(PUBLISH_PERMISSION));
    // Accepted until `exp` plus the leeway, so a stream lasts exactly as long.
    assert_eq!(
        principal.expires_at,
        UNIX_EPOCH + Duration::from_secs(c.exp) + LEEWAY
    );
}

#[test]
fn every_kind_of_bad_token_is_refused_with_its_reason() {
    let mut expired = claims("u1");
    expired.exp = now() - 3600;
    let mut early = claims("u1");
    early.nbf = Some(now() + 3600);
    let mut issuer = claims("u1");
    issuer.iss = "someone-else".into();
    let mut audience = claims("u1");
    audience.aud = "other-users".into();
    let mut nobody = claims("");
    nobody.sub = String::new();
    let wrong_secret = sign(
        &claims("u1"),
        Algorithm::HS256,
        &EncodingKey::from_secret(b"not-the-secret"),
    );
    let header_none = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(serde_json::to_string(&claims("u1")).unwrap().as_bytes());
    let alg_none = format!("{header_none}.{body}.");

    let table: Vec<(&str, String, AuthError)> = vec![
        ("empty", String::new(), AuthError::Malformed),
        ("garbage", "not.a.jwt".into(), AuthError::Malformed),
        ("wrong secret", wrong_secret, AuthError::BadSignature),
        ("expired", hs(&expired), AuthError::Expired),
        ("not yet valid", hs(&early), AuthError::NotYetValid),
        ("wrong issuer", hs(&issuer), AuthError::WrongIssuer),
        ("wrong audience", hs(&audience), AuthError::WrongAudience),
        ("no subject", hs(&nobody), AuthError::Malformed),
    ];
    for (case, token, expected) in table {
        assert_eq!(verifier().verify(&token), Err(expected), "{case}");
    }
    // `alg: none` must never verify, whatever the reason given.
    assert!(verifier().verify(&alg_none).is_err(), "alg none accepted");
}

#[test]
fn rs256_tokens_verify_and_the_public_key_used_as_an_hmac_secret_does_not() {
    let (private, public) = openssl_key_pair("rsa");
    let verifier =
        Verifier::public_key_pem(&public, DEFAULT_ISSUER, DEFAULT_AUDIENCE, LEEWAY).unwrap();
    let good = sign(
        &claims("u1"),
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(&private).unwrap(),
    );
    assert_eq!(verifier.verify(&good).unwrap().user_id, "u1");
    // Algorithm confusion: HS256 keyed with the (public) RSA key the server holds.
    let confused = sign(
        &claims("u1"),
        Algorithm::HS256,
        &EncodingKey::from_secret(&public),
    );
    assert_eq!(verifier.verify(&confused), Err(AuthError::BadSignature));
}

#[test]
fn es256_tokens_verify_with_a_p256_public_key() {
    let (private, public) = openssl_key_pair("ec");
    let verifier =
        Verifier::public_key_pem(&public, DEFAULT_ISSUER, DEFAULT_AUDIENCE, LEEWAY).unwrap();
    let good = sign(
        &claims("u2"),
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&private).unwrap(),
    );
    assert_eq!(verifier.verify(&good).unwrap().user_id, "u2");
    assert_eq!(
        verifier.verify(&hs(&claims("u2"))),
        Err(AuthError::BadSignature)
    );
    assert!(Verifier::public_key_pem(b"nonsense", "i", "a", LEEWAY).is_err());
}

#[test]
fn minted_tokens_verify() {
    let token = mint_hs256(
        SECRET,
        "u9",
        &["admin".into()],
        Duration::from_secs(60),
        DEFAULT_ISSUER,
        DEFAULT_AUDIENCE,
    )
    .unwrap();
    let principal = verifier().verify(&token).unwrap();
    assert_eq!(principal.user_id, "u9");
    assert!(Policy::default().is_admin(&principal));
}

fn principal(user: &str, roles: &[&str], permissions: &[&str]) -> Principal {
    Principal {
        user_id: user.into(),
        roles: roles.iter().map(|&r| r.into()).collect(),
        permissions: permissions.iter().map(|&p| p.into()).collect(),
        expires_at: SystemTime::now() + Duration::from_secs(60),
    }
}

#[test]
fn users_subscribe_to_their_own_events_only() {
    let policy = Policy::default();
    let alice = principal("alice", &["user"], &[]);
    assert_eq!(policy.may_subscribe(&alice, Wants::Own, false), Ok(()));
    assert_eq!(
        policy.may_subscribe(&alice, Wants::User("alice"), false),
        Ok(())
    );
    assert_eq!(
        policy.may_subscribe(&alice, Wants::User("bob"), false),
        Err(Denied::OtherUser)
    );
    assert_eq!(
        policy.may_subscribe(&alice, Wants::Firehose, false),
        Err(Denied::Firehose)
    );
    assert_eq!(
        policy.may_subscribe(&alice, Wants::Own, true),
        Err(Denied::AdminFeed)
    );
    for role in ["admin", "super_admin"] {
        let admin = principal("root", &[role], &[]);
        assert_eq!(
            policy.may_subscribe(&admin, Wants::User("bob"), true),
            Ok(())
        );
        assert_eq!(policy.may_subscribe(&admin, Wants::Firehose, true), Ok(()));
    }
    // `tenant_admin` is not an admin of the platform's notifications.
    let tenant_admin = principal("t", &["tenant_admin"], &[]);
    assert_eq!(
        policy.may_subscribe(&tenant_admin, Wants::Firehose, false),
        Err(Denied::Firehose)
    );
}

#[test]
fn users_see_only_their_own_events_admins_see_all() {
    let policy = Policy::default();
    let alice = principal("alice", &["user"], &[]);
    assert!(policy.may_see(&alice, "alice", false));
    assert!(!policy.may_see(&alice, "bob", false));
    assert!(
        !policy.may_see(&alice, "", false),
        "user-less events are firehose only"
    );
    assert!(
        !policy.may_see(&alice, "alice", true),
        "admin notices are admins only"
    );
    let admin = principal("root", &["admin"], &[]);
    assert!(policy.may_see(&admin, "bob", false));
    assert!(policy.may_see(&admin, "", false));
    assert!(policy.may_see(&admin, "bob", true));
}

#[test]
fn publishing_needs_a_publisher_role_or_the_permission() {
    let policy = Policy::default();
    assert_eq!(
        policy.may_publish(&principal("alice", &["user"], &[])),
        Err(Denied::Publish)
    );
    assert_eq!(
        policy.may_publish(&principal("admin", &["admin"], &[])),
        Err(Denied::Publish),
        "admins read everything but do not publish by default"
    );
    assert_eq!(
        policy.may_publish(&principal("svc", &["service"], &[])),
        Ok(())
    );
    assert_eq!(
        policy.may_publish(&principal("root", &["super_admin"], &[])),
        Ok(())
    );
    assert_eq!(
        policy.may_publish(&principal("billing", &[], &[PUBLISH_PERMISSION])),
        Ok(())
    );
}

#[test]
fn jwks_keys_are_picked_by_kid_and_symmetric_keys_are_refused() {
    use jsonwebtoken::jwk::Jwk;
    let (rsa_private, _) = openssl_key_pair("rsa");
    let (ec_private, _) = openssl_key_pair("ec");
    let rsa = EncodingKey::from_rsa_pem(&rsa_private).unwrap();
    let ec = EncodingKey::from_ec_pem(&ec_private).unwrap();
    let mut rsa_jwk = Jwk::from_encoding_key(&rsa, Algorithm::RS256).unwrap();
    rsa_jwk.common.key_id = Some("rsa-1".into());
    let mut ec_jwk = Jwk::from_encoding_key(&ec, Algorithm::ES256).unwrap();
    ec_jwk.common.key_id = Some("ec-1".into());
    let set = serde_json::json!({ "keys": [rsa_jwk, ec_jwk] });
    let verifier = Verifier::jwks(
        set.to_string().as_bytes(),
        DEFAULT_ISSUER,
        DEFAULT_AUDIENCE,
        LEEWAY,
    )
    .unwrap();
    let signed = |kid: &str, algorithm: Algorithm, key: &EncodingKey| {
        let mut header = Header::new(algorithm);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims("u3"), key).unwrap()
    };
    assert_eq!(
        verifier
            .verify(&signed("rsa-1", Algorithm::RS256, &rsa))
            .unwrap()
            .user_id,
        "u3"
    );
    assert_eq!(
        verifier
            .verify(&signed("ec-1", Algorithm::ES256, &ec))
            .unwrap()
            .user_id,
        "u3"
    );
    // A kid naming the wrong key, an unknown kid, and no kid with several keys: refused.
    assert_eq!(
        verifier.verify(&signed("ec-1", Algorithm::RS256, &rsa)),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        verifier.verify(&signed("nope", Algorithm::RS256, &rsa)),
        Err(AuthError::BadSignature)
    );
    assert_eq!(
        verifier.verify(&hs(&claims("u3"))),
        Err(AuthError::BadSignature)
    );

    let oct = Jwk::from_encoding_key(&EncodingKey::from_secret(SECRET), Algorithm::HS256).unwrap();
    let symmetric = serde_json::json!({ "keys": [oct] }).to_string();
    assert!(Verifier::jwks(symmetric.as_bytes(), "i", "a", LEEWAY).is_err());
    assert!(Verifier::jwks(br#"{"keys":[]}"#, "i", "a", LEEWAY).is_err());
    assert!(Verifier::jwks(b"nonsense", "i", "a", LEEWAY).is_err());
}

#[test]
fn the_bearer_scheme_is_required_and_case_insensitive() {
    let auth = Authenticator::new(verifier(), Policy::default());
    let token = hs(&claims("u1"));
    assert_eq!(auth.authenticate(None), Err(AuthError::Missing));
    assert_eq!(auth.authenticate(Some(&token)), Err(AuthError::Missing));
    assert_eq!(
        auth.authenticate(Some(&format!("Basic {token}"))),
        Err(AuthError::Missing)
    );
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let principal = auth
            .authenticate(Some(&format!("{scheme} {token}")))
            .unwrap();
        assert_eq!(principal.user_id, "u1");
    }
}

#[test]
fn remembered_tokens_still_expire_and_only_the_same_bytes_hit() {
    let auth = Authenticator::new(verifier(), Policy::default());
    let token = hs(&claims("u1"));
    let bearer = format!("Bearer {token}");
    let first = auth.authenticate(Some(&bearer)).unwrap();
    assert_eq!(first.user_id, "u1");
    // The second call is served from the cache: the very same principal.
    let again = auth.authenticate(Some(&bearer)).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    // A token differing in its signature is checked, not served from the cache.
    // The signature's first character: every base64 character there is a valid one (the last
    // carries padding bits, and changing it can make the token malformed instead).
    let at = token.rfind('.').unwrap() + 1;
    let first_char = &token[at..=at];
    let forged = format!(
        "{}{}{}",
        &token[..at],
        if first_char == "A" { "B" } else { "A" },
        &token[at + 1..]
    );
    assert_eq!(
        auth.authenticate(Some(&format!("Bearer {forged}"))),
        Err(AuthError::BadSignature)
    );
    // Past the principal's expiry the entry is dropped and the token verified anew (by the
    // real clock, for which it is still valid: a new principal).
    let later = first.expires_at + Duration::from_secs(1);
    let after_expiry = auth.authenticate_at(Some(&bearer), later).unwrap();
    assert!(!Arc::ptr_eq(&first, &after_expiry));
}

/// An `exp` far beyond what `SystemTime` can hold (2^63 s and more) used to panic with
/// "overflow when adding duration to instant"; it is a valid signed token, so it is accepted
/// with its expiry clamped to the year 9999.
#[test]
fn an_expiry_beyond_the_clock_is_clamped_not_a_panic() {
    for exp in [1_u64 << 63, u64::MAX - 1, u64::MAX] {
        let mut c = claims("u1");
        c.exp = exp;
        let principal = verifier().verify(&hs(&c)).unwrap();
        assert_eq!(
            principal.expires_at,
            UNIX_EPOCH + Duration::from_secs(LATEST_EXPIRY_SECS),
            "exp {exp}"
        );
    }
}

/// Under the binary's chain printer (`{:#}`) a key error says what was wrong, then the parser's
/// reason, once.
#[test]
fn a_key_error_names_its_cause_once_in_the_chain() {
    let error = Verifier::jwks(b"nonsense", "i", "a", LEEWAY).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(
        chain.starts_with("cannot use the JWT key: not a JWKS document: expected"),
        "{chain}"
    );
    assert_eq!(chain.matches("expected").count(), 1, "{chain}");
    let error = Verifier::public_key_pem(b"not a key", "i", "a", LEEWAY).unwrap_err();
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(
        chain.starts_with("cannot use the JWT key: not an RSA or P-256 public key in PEM: "),
        "{chain}"
    );
}
