//! The control runtime: one thread for control traffic and the admin and probe servers.

use std::sync::Arc;

use crate::admin::{self, AdminState};

/// The control runtime: one thread of its own for control traffic (the xDS stream and the
/// table compiles it brings, identity renewal, re-resolving endpoint host names) and the admin
/// and probe servers. None of it takes a data-plane worker from requests, and a busy data
/// plane does not delay a renewal, an xDS answer or the kubelet's probes.
pub(crate) struct Control {
    pub(crate) handle: tokio::runtime::Handle,
    admin: Option<tokio::sync::oneshot::Sender<AdminServers>>,
}

type AdminServers = (
    Arc<AdminState>,
    std::net::TcpListener,
    std::net::TcpListener,
);

impl Control {
    pub(crate) fn start() -> std::io::Result<Control> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<AdminServers>();
        std::thread::Builder::new()
            .name("weft-control".into())
            .spawn(move || {
                rt.block_on(async move {
                    // Until the admin servers come (or the start fails), the tasks spawned
                    // here run all the same.
                    let Ok((state, admin_l, probe_l)) = rx.await else {
                        return;
                    };
                    let admin_l =
                        tokio::net::TcpListener::from_std(admin_l).expect("admin listener");
                    let probe_l =
                        tokio::net::TcpListener::from_std(probe_l).expect("probe listener");
                    tokio::join!(
                        admin::serve(admin_l, state.clone(), admin::admin),
                        admin::serve(probe_l, state, admin::probes),
                    );
                })
            })?;
        Ok(Control {
            handle,
            admin: Some(tx),
        })
    }

    /// Serves the admin and probe ports on the control runtime.
    pub(crate) fn serve_admin(
        &mut self,
        state: Arc<AdminState>,
        admin_l: std::net::TcpListener,
        probe_l: std::net::TcpListener,
    ) -> std::io::Result<()> {
        admin_l.set_nonblocking(true)?;
        probe_l.set_nonblocking(true)?;
        if let Some(tx) = self.admin.take() {
            let _ = tx.send((state, admin_l, probe_l));
        }
        Ok(())
    }
}
