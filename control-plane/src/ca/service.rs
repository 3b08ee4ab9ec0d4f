//! The CA's gRPC service (`weft.ca.v1.CertificateService`): a workload proves who it is and
//! gets a certificate for exactly that identity.
//!
//! Outside Kubernetes the proof is a bootstrap token, sent as `authorization: Bearer <token>`:
//! the operator keeps a file of `TOKEN NAMESPACE SERVICE_ACCOUNT` lines (`#` starts a comment),
//! one token per workload identity, and gives each workload its token (a file the proxy reads).
//! A token proves one identity and nothing else.
//!
//! In Kubernetes the proof is the workload's projected service-account token (audience
//! `weft-ca` by default), which the CA hands to the API server in a TokenReview: an
//! authenticated `system:serviceaccount:<namespace>:<name>` proves that account's identity.

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use weft_xds_proto::ca::v1::{
    CreateCertificateRequest, CreateCertificateResponse,
    certificate_service_server::CertificateService,
};

use super::{Ca, CaError, spiffe_id};

/// Bootstrap tokens and the identity each one proves.
#[derive(Debug, Default)]
pub struct BootstrapTokens {
    by_token: HashMap<String, String>,
}

impl BootstrapTokens {
    /// Parses `TOKEN NAMESPACE SERVICE_ACCOUNT` lines; errors name the line.
    pub fn parse(source: &str, text: &str, trust_domain: &str) -> Result<Self, String> {
        let mut by_token = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, ns, sa] = fields[..] else {
                return Err(format!(
                    "{source}:{}: expected `TOKEN NAMESPACE SERVICE_ACCOUNT`",
                    i + 1
                ));
            };
            if token.len() < 16 {
                return Err(format!(
                    "{source}:{}: the token is too short (at least 16 characters)",
                    i + 1
                ));
            }
            if by_token
                .insert(token.to_string(), spiffe_id(trust_domain, ns, sa))
                .is_some()
            {
                return Err(format!("{source}:{}: this token is listed twice", i + 1));
            }
        }
        Ok(BootstrapTokens { by_token })
    }

    pub fn load(path: &Path, trust_domain: &str) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&path.display().to_string(), &text, trust_domain)
    }

    /// The identity `token` proves.
    pub fn identity(&self, token: &str) -> Option<&str> {
        self.by_token.get(token).map(String::as_str)
    }
}

/// Kubernetes service-account tokens, checked by the API server (TokenReview).
#[derive(Clone)]
pub struct TokenReviewer {
    pub client: kube::Client,
    /// What the token must be meant for (the projected token's audience).
    pub audiences: Vec<String>,
    pub trust_domain: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// The identity `token` proves, or why it proves none.
    pub async fn review(&self, token: &str) -> Result<String, Status> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(self.audiences.clone()),
            },
            ..Default::default()
        };
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let done = api
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| Status::unavailable(format!("TokenReview failed: {e}")))?;
        let status = done.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(format!(
                "the Kubernetes API server did not authenticate the token{}",
                status.error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        // An API server (or webhook authenticator) that ignored the audience asked for does
        // not say it checked it: such a token may have been meant for someone else.
        let audiences = status.audiences.unwrap_or_default();
        if !self.audiences.iter().any(|a| audiences.contains(a)) {
            return Err(Status::unauthenticated(format!(
                "the token is not for audience {:?} (the TokenReview confirmed {audiences:?})",
                self.audiences
            )));
        }
        let user = status.user.and_then(|u| u.username).unwrap_or_default();
        match user
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        {
            Some((ns, sa)) if !ns.is_empty() && !sa.is_empty() => {
                Ok(spiffe_id(&self.trust_domain, ns, sa))
            }
            _ => Err(Status::permission_denied(format!(
                "`{user}` is not a service account"
            ))),
        }
    }
}

/// The service: the CA and who may ask for what.
#[derive(Debug, Clone)]
pub struct CaService {
    pub ca: Arc<Ca>,
    pub tokens: Arc<BootstrapTokens>,
    /// With Kubernetes: tokens that are not bootstrap tokens go to the API server.
    pub reviewer: Option<TokenReviewer>,
    /// How often one caller address may have a token reviewed.
    pub review_limit: Arc<super::limit::PerCaller>,
    /// `weft_cp_ca_requests_total`, by result.
    pub requests: prometheus::IntCounterVec,
}

impl CaService {
    fn count(&self, result: &str) {
        self.requests.with_label_values(&[result]).inc();
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        req: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let r = self.create(req).await;
        self.count(match &r {
            Ok(_) => "issued",
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "denied",
                tonic::Code::InvalidArgument => "invalid",
                tonic::Code::ResourceExhausted => "rate_limited",
                _ => "error",
            },
        });
        r
    }
}

impl CaService {
    async fn create(
        &self,
        req: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("no credential: send `authorization: Bearer <token>`")
            })?;
        let token = token.trim();
        let identity = match (self.tokens.identity(token), &self.reviewer) {
            (Some(id), _) => id.to_string(),
            (None, Some(reviewer)) => {
                // A caller without an address (not over TCP: tests) is not limited.
                if let Some(ip) = req.remote_addr().map(|a| a.ip())
                    && !self.review_limit.allow(ip)
                {
                    return Err(Status::resource_exhausted(format!(
                        "too many token reviews from {ip}: try again in a few seconds"
                    )));
                }
                reviewer.review(token).await?
            }
            (None, None) => {
                return Err(Status::unauthenticated(
                    "the bootstrap token is not known to this CA",
                ));
            }
        };
        let r = req.into_inner();
        let ttl = u64::try_from(r.validity_seconds)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        match self.ca.sign(&r.csr, &identity, ttl) {
            Ok((cert_chain, expires)) => {
                tracing::info!(%identity, expires = ?expires, "certificate issued");
                Ok(Response::new(CreateCertificateResponse {
                    cert_chain,
                    trust_bundle: self.ca.trust_bundle(),
                }))
            }
            Err(e @ CaError::WrongIdentity { .. }) => {
                tracing::warn!(%identity, error = %e, "certificate refused");
                Err(Status::permission_denied(e.to_string()))
            }
            Err(e @ CaError::BadCsr(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }
}
