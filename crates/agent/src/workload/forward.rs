//! `host-loopback` port forwarding: a listener on the workload's
//! `127.0.0.1:PORT` (bound inside its namespace; a socket stays in the
//! namespace it was made in) whose connections weftd joins to the node's
//! `127.0.0.1:PORT`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::sys;

/// Connections one forwarded port carries at once; more wait in the backlog.
const MAX_CONNECTIONS: usize = 256;

/// The forwarders of one workload; dropped, they stop and close their
/// listeners (which also releases the namespace).
pub(crate) struct Forwarders(Vec<JoinHandle<()>>);

impl Drop for Forwarders {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts one forwarder per port.
pub(crate) async fn start(ns: &File, ports: &[u16]) -> sys::SysResult<Forwarders> {
    let mut tasks = Forwarders(Vec::new());
    for &port in ports {
        let listener = sys::in_netns(ns, move || {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
                .map_err(|e| format!("listening on 127.0.0.1:{port} in the workload: {e}"))?;
            l.set_nonblocking(true)
                .map_err(|e| format!("127.0.0.1:{port} in the workload: {e}"))?;
            Ok(l)
        })
        .await?;
        let listener = TcpListener::from_std(listener)
            .map_err(|e| format!("127.0.0.1:{port} in the workload: {e}"))?;
        tasks.0.push(tokio::spawn(serve(listener, port)));
    }
    Ok(tasks)
}

async fn serve(listener: TcpListener, port: u16) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let to = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        let mut inner = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(port, error = %e, "workload forwarder: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            match TcpStream::connect(to).await {
                Ok(mut outer) => {
                    let _ = tokio::io::copy_bidirectional(&mut inner, &mut outer).await;
                }
                Err(e) => {
                    tracing::debug!(port, error = %e, "workload forwarder: the node's port refused")
                }
            }
        });
    }
}
