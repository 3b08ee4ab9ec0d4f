//! Mutual TLS in force: the TLS configurations made from this proxy's identity, for the inbound
//! side (server) and for each expected peer identity and ALPN (client).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::Identity;
use crate::tls::{Alpn, client_config_for, server_config};

/// A configuration and the bundle it was made with.
type Cached<T> = (Arc<RootCertStore>, Arc<T>);
/// By the identity expected of the server and the ALPN offered.
type ClientConfigs = HashMap<(Arc<str>, Alpn), Cached<ClientConfig>>;

/// Mutual TLS in force: the identity, and the TLS configurations made from it, kept until the
/// trust bundle changes (so sessions resume and nothing is rebuilt per connection).
#[derive(Debug)]
pub struct Mtls {
    pub identity: Arc<Identity>,
    server: Mutex<Option<Cached<ServerConfig>>>,
    clients: Mutex<ClientConfigs>,
}

impl Mtls {
    pub fn new(identity: Arc<Identity>) -> Self {
        Mtls {
            identity,
            server: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// For the inbound side; `None` until a certificate and bundle are held.
    pub fn server(&self) -> Option<Arc<ServerConfig>> {
        let roots = self.identity.roots()?;
        let mut cached = self.server.lock().expect("mtls lock");
        if let Some((r, cfg)) = &*cached
            && Arc::ptr_eq(r, &roots)
        {
            return Some(cfg.clone());
        }
        let cfg = Arc::new(server_config(roots.clone(), self.identity.credentials.clone()).ok()?);
        *cached = Some((roots, cfg.clone()));
        Some(cfg)
    }

    /// For a connection to an endpoint that must prove `expected`.
    pub fn client(&self, expected: &Arc<str>, alpn: Alpn) -> Option<Arc<ClientConfig>> {
        let roots = self.identity.roots()?;
        let mut cached = self.clients.lock().expect("mtls lock");
        let key = (expected.clone(), alpn);
        if let Some((r, cfg)) = cached.get(&key)
            && Arc::ptr_eq(r, &roots)
        {
            return Some(cfg.clone());
        }
        let cfg = Arc::new(
            client_config_for(
                roots.clone(),
                self.identity.credentials.clone(),
                expected,
                alpn,
            )
            .ok()?,
        );
        if cached.len() > 4096 {
            cached.clear();
        }
        cached.insert(key, (roots, cfg.clone()));
        Some(cfg)
    }
}
