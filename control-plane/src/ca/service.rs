//! The CA's gRPC service (`weft.ca.v1.CertificateService`): a workload proves who it is and
//! gets a certificate for exactly that identity.
//!
//! Outside Kubernetes the proof is a bootstrap token, sent as `authorization: Bearer <token>`:
//! the operator keeps a file of `TOKEN NAMESPACE SERVICE_ACCOUNT` lines (`#` starts a comment),
//! one token per workload identity, and gives each workload its token (a file the proxy reads).
//! A token proves one identity and nothing else.

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

/// The service: the CA and who may ask for what.
#[derive(Debug, Clone)]
pub struct CaService {
    pub ca: Arc<Ca>,
    pub tokens: Arc<BootstrapTokens>,
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
        let r = self.create(req);
        self.count(match &r {
            Ok(_) => "issued",
            Err(s) => match s.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "denied",
                tonic::Code::InvalidArgument => "invalid",
                _ => "error",
            },
        });
        r
    }
}

impl CaService {
    fn create(
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
        let identity = self
            .tokens
            .identity(token.trim())
            .ok_or_else(|| Status::unauthenticated("the bootstrap token is not known to this CA"))?
            .to_string();
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
