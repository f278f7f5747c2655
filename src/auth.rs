//! Who is asking, and may they see this: the platform's JWT → [`Principal`], and the two pure
//! decisions every path uses (may this principal open this subscription; may it see this
//! event).
//!
//! Owns: token verification (algorithm pinned to the configured key, so `alg: none` and
//! algorithm confusion are refused), the claims the platform issues (`docs/architecture.md`
//! "Identity and authorization"), the roles that make an admin or a publisher, and minting
//! tokens for `--dev` and the `token` command. Does not own: reading the `authorization`
//! metadata or mapping errors to `tonic::Status` (`grpc` does), routing (`hub`).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use serde::{Deserialize, Serialize};

pub mod dev_secret;

/// The issuer the platform's tokens carry.
pub const DEFAULT_ISSUER: &str = "cloudphone-platform";
/// The audience the platform's tokens carry.
pub const DEFAULT_AUDIENCE: &str = "cloudphone-users";
/// Roles that see every user's events, the firehose and the admin feed.
pub const DEFAULT_ADMIN_ROLES: [&str; 2] = ["admin", "super_admin"];
/// Roles that may `Publish`.
pub const DEFAULT_PUBLISH_ROLES: [&str; 2] = ["service", "super_admin"];
/// Where `--dev` keeps its generated secret, relative to the working directory, for
/// `notify-backbone token` to find.
pub const DEV_SECRET_FILE: &str = ".notify-backbone/dev-jwt-secret";
/// The permission that allows `Publish` whatever the roles.
pub const PUBLISH_PERMISSION: &str = "notification.publish";

/// The claims of a platform token (`docs/architecture.md` "Identity and authorization").
/// Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The user name.
    #[serde(default)]
    pub username: String,
    /// Roles, e.g. `user`, `admin`, `super_admin`, `service`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Fine-grained permissions, e.g. `notification.publish`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// The tenant, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default)]
    pub iat: u64,
    /// Not before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`sub`).
    pub user_id: String,
    /// Roles from the token.
    pub roles: HashSet<String>,
    /// Permissions from the token.
    pub permissions: HashSet<String>,
    /// When this server stops accepting the token: its `exp` plus the allowed clock skew
    /// (`--jwt-leeway`), the same instant verification uses. A stream opened with it ends then.
    pub expires_at: SystemTime,
}

/// Why a token was not accepted. The text is short and says nothing about other users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error("missing bearer token")]
    Missing,
    /// Not a JWT, or claims of the wrong shape.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify, or the algorithm is not the configured key's.
    #[error("invalid token signature or algorithm")]
    BadSignature,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong token issuer")]
    WrongIssuer,
    /// `aud` is not the configured audience.
    #[error("wrong token audience")]
    WrongAudience,
}

/// Why an authenticated principal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// Asked for another user's events without an admin role.
    #[error("may only subscribe to your own events")]
    OtherUser,
    /// Asked for the firehose without an admin role.
    #[error("the firehose is for admins")]
    Firehose,
    /// Asked for the admin feed without an admin role.
    #[error("the admin feed is for admins")]
    AdminFeed,
    /// Asked for another user's inbox or preferences without an admin role.
    #[error("may only read your own inbox and preferences")]
    OtherInbox,
    /// Asked for an admin inbox without an admin role.
    #[error("the admin inbox is for admins")]
    AdminInbox,
    /// Tried to publish without a publisher role or permission.
    #[error("publishing needs the notification.publish permission or a publisher role")]
    Publish,
}

/// Which roles and permissions grant what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Roles that see everything (any user, the firehose, the admin feed).
    pub admin_roles: HashSet<String>,
    /// Roles that may publish.
    pub publish_roles: HashSet<String>,
    /// The permission that may publish.
    pub publish_permission: String,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            admin_roles: DEFAULT_ADMIN_ROLES.iter().map(|&r| r.into()).collect(),
            publish_roles: DEFAULT_PUBLISH_ROLES.iter().map(|&r| r.into()).collect(),
            publish_permission: PUBLISH_PERMISSION.into(),
        }
    }
}

/// The user a subscription asks for: one user, or everyone (`*`, the firehose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wants<'a> {
    /// The caller's own events (an empty `user_id`).
    Own,
    /// One named user's events.
    User(&'a str),
    /// Every user's events.
    Firehose,
}

/// What a subscriber may see, fixed when its subscription opens: the hub checks every event it
/// routes against it, so a routing bug cannot leak another user's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Viewer {
    /// Sees every event and the admin feed.
    Admin,
    /// Sees only events about this user.
    User(Box<str>),
}

impl Viewer {
    /// May this viewer see an event about `event_user` (empty: about no user)? `admin_notice`
    /// marks the admin feed's notices.
    pub fn may_see(&self, event_user: &str, admin_notice: bool) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::User(user) => !admin_notice && !event_user.is_empty() && **user == *event_user,
        }
    }
}

impl Policy {
    /// What `principal` may see.
    pub fn viewer(&self, principal: &Principal) -> Viewer {
        if self.is_admin(principal) {
            Viewer::Admin
        } else {
            Viewer::User(principal.user_id.as_str().into())
        }
    }

    /// Whether `principal` has an admin role.
    pub fn is_admin(&self, principal: &Principal) -> bool {
        !self.admin_roles.is_disjoint(&principal.roles)
    }

    /// May `principal` open a subscription for `wants` (with the admin feed if `admin_feed`)?
    /// Filters (types, device) only ever narrow, so they need no decision.
    pub fn may_subscribe(
        &self,
        principal: &Principal,
        wants: Wants<'_>,
        admin_feed: bool,
    ) -> Result<(), Denied> {
        let admin = self.is_admin(principal);
        if admin_feed && !admin {
            return Err(Denied::AdminFeed);
        }
        match wants {
            Wants::Own => Ok(()),
            Wants::User(user) if user == principal.user_id || admin => Ok(()),
            Wants::User(_) => Err(Denied::OtherUser),
            Wants::Firehose if admin => Ok(()),
            Wants::Firehose => Err(Denied::Firehose),
        }
    }

    /// May `principal` see an event about `event_user` (empty: an event about no user)?
    /// `admin_notice` marks the admin feed's notices. Applied to every event routed to a
    /// subscriber, live or replayed, so a routing bug cannot leak events.
    pub fn may_see(&self, principal: &Principal, event_user: &str, admin_notice: bool) -> bool {
        self.viewer(principal).may_see(event_user, admin_notice)
    }

    /// May `principal` read the inbox (or preferences) of `user_id` (empty: their own), the
    /// admin inbox if `admin_inbox`? Anyone their own; an admin any user's, for support.
    /// Changing an inbox or preferences is for its owner alone: those calls name no user.
    pub fn may_read_inbox(
        &self,
        principal: &Principal,
        user_id: &str,
        admin_inbox: bool,
    ) -> Result<(), Denied> {
        let admin = self.is_admin(principal);
        if admin_inbox && !admin {
            return Err(Denied::AdminInbox);
        }
        if !user_id.is_empty() && user_id != principal.user_id && !admin {
            return Err(Denied::OtherInbox);
        }
        Ok(())
    }

    /// May `principal` call `Publish`?
    pub fn may_publish(&self, principal: &Principal) -> Result<(), Denied> {
        let by_role = !self.publish_roles.is_disjoint(&principal.roles);
        if by_role || principal.permissions.contains(&self.publish_permission) {
            Ok(())
        } else {
            Err(Denied::Publish)
        }
    }
}

/// Verifies tokens against the configured key or key set. The accepted algorithm follows from
/// the key (HS256 for a secret, RS256 or ES256 for a public key), never from the token's header.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<VerifyingKey>,
    /// Issuer, audience, leeway and required claims; the algorithm is set per key.
    validation: Validation,
}

#[derive(Clone)]
struct VerifyingKey {
    /// The JWKS `kid`, if the key came from a key set.
    kid: Option<String>,
    key: DecodingKey,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys stay out of logs.
        let algorithms: Vec<_> = self.keys.iter().map(|k| k.algorithm).collect();
        f.debug_struct("Verifier")
            .field("algorithms", &algorithms)
            .finish_non_exhaustive()
    }
}

/// Why a verification key could not be loaded. The parser's own error is the source, not a
/// part of the text: the binary prints the chain (`cannot use the JWT key: not a JWKS
/// document: expected value at line 1 column 1`).
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Neither an RSA nor a P-256 public key in PEM.
    #[error("cannot use the JWT key: not an RSA or P-256 public key in PEM")]
    NotPem(#[source] jsonwebtoken::errors::Error),
    /// Not a JWKS document (`{"keys": [...]}`).
    #[error("cannot use the JWT key: not a JWKS document")]
    NotJwks(#[source] serde_json::Error),
    /// A key of a kind that is not accepted (symmetric, or another curve).
    #[error(
        "cannot use the JWT key: JWKS key {kid:?}: only RSA (RS256) and P-256 (ES256) keys are \
         accepted"
    )]
    UnsupportedKey {
        /// The key's `kid`.
        kid: Option<String>,
    },
    /// A key of an accepted kind that does not load.
    #[error("cannot use the JWT key: JWKS key {kid:?}")]
    BadKey {
        /// The key's `kid`.
        kid: Option<String>,
        /// Why it does not load.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// A key set without a key.
    #[error("cannot use the JWT key: the JWKS document has no keys")]
    NoKeys,
}

impl Verifier {
    /// HS256 with the platform's shared secret.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str, leeway: Duration) -> Self {
        let key = VerifyingKey {
            kid: None,
            key: DecodingKey::from_secret(secret),
            algorithm: Algorithm::HS256,
        };
        Self::new(vec![key], issuer, audience, leeway)
    }

    /// RS256 or ES256 with a PEM public key (`-----BEGIN PUBLIC KEY-----`).
    pub fn public_key_pem(
        pem: &[u8],
        issuer: &str,
        audience: &str,
        leeway: Duration,
    ) -> Result<Self, KeyError> {
        let (key, algorithm) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256)
        } else {
            let key = DecodingKey::from_ec_pem(pem).map_err(KeyError::NotPem)?;
            (key, Algorithm::ES256)
        };
        let key = VerifyingKey {
            kid: None,
            key,
            algorithm,
        };
        Ok(Self::new(vec![key], issuer, audience, leeway))
    }

    /// RS256 and ES256 keys from a JWKS document (`{"keys": [...]}`); a token picks its key by
    /// `kid`. Symmetric (`oct`) keys are refused: a shared secret does not belong in a key set
    /// that is meant to be public.
    pub fn jwks(
        json: &[u8],
        issuer: &str,
        audience: &str,
        leeway: Duration,
    ) -> Result<Self, KeyError> {
        let set: JwkSet = serde_json::from_slice(json).map_err(KeyError::NotJwks)?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let algorithm = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(params)
                    if params.curve == EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => {
                    return Err(KeyError::UnsupportedKey {
                        kid: jwk.common.key_id.clone(),
                    });
                }
            };
            let key = DecodingKey::from_jwk(jwk).map_err(|source| KeyError::BadKey {
                kid: jwk.common.key_id.clone(),
                source,
            })?;
            keys.push(VerifyingKey {
                kid: jwk.common.key_id.clone(),
                key,
                algorithm,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        Ok(Self::new(keys, issuer, audience, leeway))
    }

    fn new(keys: Vec<VerifyingKey>, issuer: &str, audience: &str, leeway: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = leeway.as_secs();
        Self { keys, validation }
    }

    /// The key for `token`: by `kid` in a key set, else the only key.
    fn key_for(&self, token: &str) -> Result<&VerifyingKey, AuthError> {
        if let [only] = self.keys.as_slice()
            && only.kid.is_none()
        {
            return Ok(only);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        match header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid.as_str()))
                .ok_or(AuthError::BadSignature),
            None if self.keys.len() == 1 => Ok(&self.keys[0]),
            None => Err(AuthError::BadSignature),
        }
    }

    /// Verifies `token` (the part after `Bearer `).
    ///
    /// # Errors
    ///
    /// Every way a token can be wrong, as a short [`AuthError`].
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        let key = self.key_for(token)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![key.algorithm];
        let data =
            jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|error| {
                match error.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                    ErrorKind::InvalidAudience => AuthError::WrongAudience,
                    ErrorKind::InvalidSignature
                    | ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::MissingAlgorithm
                    | ErrorKind::UnsupportedAlgorithm => AuthError::BadSignature,
                    _ => AuthError::Malformed,
                }
            })?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(AuthError::Malformed);
        }
        Ok(Principal {
            user_id: claims.sub,
            roles: claims.roles.into_iter().collect(),
            permissions: claims.permissions.into_iter().collect(),
            expires_at: expiry(claims.exp, self.validation.leeway),
        })
    }
}

/// The last second this server represents an expiry as: 9999-12-31T23:59:59Z. A token's `exp`
/// is the issuer's to choose, and one at 2^63 seconds would overflow `SystemTime`.
const LATEST_EXPIRY_SECS: u64 = 253_402_300_799;

/// When a token with `exp` (seconds since the epoch) stops being accepted, given `leeway`
/// seconds of clock skew; clamped to [`LATEST_EXPIRY_SECS`], so no `exp` can overflow.
fn expiry(exp: u64, leeway: u64) -> SystemTime {
    let secs = exp.saturating_add(leeway).min(LATEST_EXPIRY_SECS);
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// Token verification and the access policy together: what the gRPC edge needs.
#[derive(Debug)]
pub struct Authenticator {
    /// Checks tokens.
    pub verifier: Verifier,
    /// Decides what a principal may do.
    pub policy: Policy,
    cache: Mutex<HashMap<Box<str>, Arc<Principal>>>,
}

/// Tokens remembered once verified. gRPC clients send their token with every call, and
/// checking it (base64, JSON, the signature) cost about a sixth of the server's CPU per
/// `Publish` at 15,000 calls/s (perf). An entry is the full token text, so only the very same
/// bytes hit, and it is used only until the principal's expiry; when full, the cache starts
/// over (the next calls verify again), which bounds it at about 600 bytes an entry.
const TOKEN_CACHE_ENTRIES: usize = 4096;

impl Authenticator {
    /// Checks tokens with `verifier` and decides with `policy`.
    pub fn new(verifier: Verifier, policy: Policy) -> Self {
        Self {
            verifier,
            policy,
            cache: Mutex::default(),
        }
    }

    /// The principal behind an `authorization` metadata value (`Bearer <token>`).
    ///
    /// # Errors
    ///
    /// [`AuthError::Missing`] without a value or without the `Bearer` scheme, else whatever
    /// [`Verifier::verify`] finds.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        self.authenticate_at(authorization, SystemTime::now())
    }

    /// [`Self::authenticate`] with the cache's clock at `now` (the verifier keeps the real one).
    fn authenticate_at(
        &self,
        authorization: Option<&str>,
        now: SystemTime,
    ) -> Result<Arc<Principal>, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Missing)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(AuthError::Missing);
        }
        let token = token.trim();
        // A poisoned lock only means a panic elsewhere mid-insert; the map is still sound.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(principal) = cache.get(token) {
            if principal.expires_at > now {
                return Ok(Arc::clone(principal));
            }
            cache.remove(token);
        }
        drop(cache);
        let principal = Arc::new(self.verifier.verify(token)?);
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= TOKEN_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(token.into(), Arc::clone(&principal));
        Ok(principal)
    }
}

/// Mints an HS256 token for `sub` with `roles`, valid for `ttl` (the `token` command, `--dev`,
/// tests).
///
/// # Errors
///
/// Only if the claims cannot be encoded, which does not happen for these types.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    roles: &[String],
    ttl: Duration,
    issuer: &str,
    audience: &str,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = Claims {
        sub: sub.into(),
        username: sub.into(),
        roles: roles.to_vec(),
        permissions: Vec::new(),
        tenant_id: None,
        iss: issuer.into(),
        aud: audience.into(),
        exp: now + ttl.as_secs(),
        iat: now,
        nbf: None,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests;
