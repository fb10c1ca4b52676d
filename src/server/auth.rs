//! Bearer tokens with roles, checked on every call before a service sees it.
//!
//! A call carries `authorization: Bearer <token>`. Every configured token is compared in
//! constant time (all of them, whatever matches), so the reply time says nothing about how
//! much of a guess was right. The matched token's name travels with the request (as
//! [`Caller`]) for logs and as the default operator name.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::config::{Anonymous, Role, ServerConfig};

/// Who is calling: attached to every authorised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's configured name, or "anonymous".
    pub name: String,
    pub role: Role,
}

#[derive(Debug)]
struct Tokens {
    tokens: Vec<(Vec<u8>, Caller)>,
    anonymous: Anonymous,
}

/// An interceptor that lets through calls whose role may call a service needing `needs`
/// ([`Role::may_call`]: `admin` everything, `client` and `worker` their own service).
#[derive(Debug, Clone)]
pub struct Auth {
    tokens: Arc<Tokens>,
    needs: Role,
}

impl Auth {
    pub fn new(config: &ServerConfig, needs: Role) -> Auth {
        let tokens = config
            .tokens
            .iter()
            .map(|t| (t.token.as_bytes().to_vec(), Caller { name: t.name.clone(), role: t.role }))
            .collect();
        Auth { tokens: Arc::new(Tokens { tokens, anonymous: config.anonymous }), needs }
    }

    /// The caller a request's metadata identifies, or why it is refused.
    pub fn authenticate(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let Some(header) = metadata.get("authorization") else {
            return match self.tokens.anonymous.role() {
                Some(role) => Ok(Caller { name: "anonymous".into(), role }),
                None => Err(Status::unauthenticated(
                    "no token: send `authorization: Bearer <token>` (sagalog CLI: --token or $SAGALOG_TOKEN)",
                )),
            };
        };
        let presented = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))?;
        let mut found: Option<&Caller> = None;
        for (token, caller) in &self.tokens.tokens {
            // Compare against every token, without stopping at a match.
            let equal: bool = token.as_slice().ct_eq(presented.as_bytes()).into();
            if equal {
                found = Some(caller);
            }
        }
        found.cloned().ok_or_else(|| Status::unauthenticated("unknown token"))
    }

    /// The caller, if its role may make a call that needs this interceptor's role: the one
    /// check of gRPC calls and of the HTTP API (`http_api.rs`).
    pub fn authorize(&self, metadata: &tonic::metadata::MetadataMap) -> Result<Caller, Status> {
        let caller = self.authenticate(metadata)?;
        if !caller.role.may_call(self.needs) {
            return Err(Status::permission_denied(format!(
                "token {:?} has role {}; this call needs role {}",
                caller.name,
                caller.role.as_str(),
                self.needs.as_str()
            )));
        }
        Ok(caller)
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.authorize(request.metadata())?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::config::TokenConfig;

    fn config(anonymous: Anonymous) -> ServerConfig {
        ServerConfig {
            anonymous,
            tokens: vec![
                TokenConfig { name: "app".into(), token: "client-token-0123456789".into(), role: Role::Client },
                TokenConfig { name: "ops".into(), token: "admin-token-0123456789".into(), role: Role::Admin },
            ],
            ..ServerConfig::default()
        }
    }

    fn call(auth: &Auth, header: Option<&str>) -> Result<Caller, Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        let mut auth = auth.clone();
        auth.call(request).map(|r| r.extensions().get::<Caller>().cloned().unwrap())
    }

    #[test]
    fn roles_tokens_and_anonymous_mode() {
        let admin_only = Auth::new(&config(Anonymous::Off), Role::Admin);
        let clients = Auth::new(&config(Anonymous::Off), Role::Client);
        assert_eq!(call(&clients, None).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(
            call(&clients, Some("Bearer nope-nope-nope-nope")).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(call(&clients, Some("Basic abc")).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert_eq!(call(&clients, Some("Bearer client-token-0123456789")).unwrap().name, "app");
        assert_eq!(call(&clients, Some("Bearer admin-token-0123456789")).unwrap().role, Role::Admin);
        let denied = call(&admin_only, Some("Bearer client-token-0123456789")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("\"app\""), "{}", denied.message());
        assert_eq!(call(&admin_only, Some("Bearer admin-token-0123456789")).unwrap().name, "ops");
        // A prefix of a valid token is not a valid token.
        assert!(call(&clients, Some("Bearer client-token-012345678")).is_err());

        let anon_client = Auth::new(&config(Anonymous::Client), Role::Admin);
        assert_eq!(call(&anon_client, None).unwrap_err().code(), tonic::Code::PermissionDenied);
        let anon_admin = Auth::new(&config(Anonymous::Admin), Role::Admin);
        assert_eq!(call(&anon_admin, None).unwrap().name, "anonymous");
        // A wrong token is refused even in anonymous mode: it is a client bug to surface.
        assert!(call(&anon_admin, Some("Bearer wrong-wrong-wrong-wrong")).is_err());
    }

    /// A `worker` token calls `Workers` only; `client` tokens may not call `Workers`, and
    /// `admin` tokens may call all three services.
    #[test]
    fn the_worker_role_calls_workers_only() {
        let mut config = config(Anonymous::Off);
        config.tokens.push(TokenConfig {
            name: "scanner".into(),
            token: "worker-token-0123456789".into(),
            role: Role::Worker,
        });
        let (workers, clients, admins) =
            (Auth::new(&config, Role::Worker), Auth::new(&config, Role::Client), Auth::new(&config, Role::Admin));
        assert_eq!(call(&workers, Some("Bearer worker-token-0123456789")).unwrap().name, "scanner");
        assert_eq!(call(&workers, Some("Bearer admin-token-0123456789")).unwrap().name, "ops");
        let denied = call(&workers, Some("Bearer client-token-0123456789")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        for auth in [&clients, &admins] {
            let denied = call(auth, Some("Bearer worker-token-0123456789")).unwrap_err();
            assert_eq!(denied.code(), tonic::Code::PermissionDenied);
            assert!(denied.message().contains("has role worker"), "{}", denied.message());
        }
    }
}
