//! Assembles the running operator: probes and metrics endpoint, leader election, and the
//! controllers of each watched namespace.

use super::{checkpoint, clone, copy, schedule, server, store, Context, Settings};
use futures::future::join_all;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use tracing::{info, warn};

/// Leader-election parameters: a Lease in one namespace.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub lease_namespace: String,
    pub identity: String,
    /// How long a lease is held without renewal.
    pub duration_seconds: u64,
    /// Extra time before a standby takes an unrenewed lease.
    pub grace_seconds: u64,
}

#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// The settings, among them the namespaces to watch.
    pub settings: Settings,
    pub run_checkpoints: bool,
    pub run_clones: bool,
    pub run_copies: bool,
    pub http_address: Option<SocketAddr>,
    pub leader_election: Option<LeaderElection>,
}

/// How long a shutting-down leader waits for its lease to be released.
const LEASE_RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

type Task = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs until a shutdown signal, or until leadership is lost (an error, so the process restarts
/// and campaigns again; unfinished clone work resumes from the store).
pub async fn run(client: Client, options: OperatorOptions) -> Result<(), String> {
    let ctx = Arc::new(Context::new(client.clone(), options.settings.clone()));
    if let Some(address) = options.http_address {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(error) = server::serve(address, ctx).await {
                warn!(%error, "the probes and metrics endpoint stopped");
            }
        });
    }
    let mut lost_leadership = None;
    let mut lease_task = None;
    if let Some(election) = &options.leader_election {
        let manager = LeaseManagerBuilder::new(client, &election.lease_name)
            .with_namespace(&election.lease_namespace)
            .with_identity(&election.identity)
            .with_duration(election.duration_seconds)
            .with_grace(election.grace_seconds)
            .build()
            .await
            .map_err(|e| format!("leader election: {e}"))?;
        let (mut leading, task) = manager.watch().await;
        lease_task = Some(task);
        info!(lease = %election.lease_name, identity = %election.identity, "waiting to become the leader");
        while !*leading.borrow_and_update() {
            leading
                .changed()
                .await
                .map_err(|e| format!("leader election stopped: {e}"))?;
        }
        info!("became the leader");
        ctx.metrics.set_leader(true);
        lost_leadership = Some(async move {
            while *leading.borrow_and_update() {
                if leading.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let namespaces = &options.settings.namespaces;
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let mut tasks: Vec<Task> = Vec::new();
    if options.run_checkpoints || options.run_clones || options.run_copies {
        tasks.push(Box::pin(store::run(ctx.clone())));
    }
    for namespace in scopes {
        if options.run_checkpoints {
            tasks.push(Box::pin(checkpoint::run(ctx.clone(), namespace.clone())));
            tasks.push(Box::pin(schedule::run(ctx.clone(), namespace.clone())));
        }
        if options.run_clones {
            tasks.push(Box::pin(clone::run(ctx.clone(), namespace.clone())));
        }
        if options.run_copies {
            tasks.push(Box::pin(copy::run(ctx.clone(), namespace)));
        }
    }
    let codecs: Vec<&str> = crate::engine::manifest_guard::CODECS
        .iter()
        .map(|c| c.2)
        .collect();
    info!(
        controllers = tasks.len(),
        compression_codecs = %codecs.join(","),
        "slatedb-operator running"
    );
    let controllers = join_all(tasks);
    match lost_leadership {
        Some(lost) => {
            tokio::select! {
                _ = controllers => {}
                _ = lost => {
                    ctx.metrics.set_leader(false);
                    return Err("lost the leader lease; exiting so a fresh process campaigns again".into());
                }
            }
            // Shut down while leading: the watch channel is gone with `lost`, so the lease manager
            // releases the lease, and a standby takes over now instead of after the lease expires.
            if let Some(task) = lease_task {
                match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, task).await {
                    Ok(Ok(Ok(_))) => info!("released the leader lease"),
                    Ok(Ok(Err(error))) => warn!(%error, "releasing the leader lease"),
                    Ok(Err(error)) => warn!(%error, "the lease manager task failed"),
                    Err(_) => {
                        warn!("the leader lease was not released in time; it expires instead")
                    }
                }
            }
            Ok(())
        }
        None => {
            controllers.await;
            Ok(())
        }
    }
}
