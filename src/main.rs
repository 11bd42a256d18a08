use clap::{Parser, Subcommand};
use slatedb_operator::controller::operator::{self, LeaderElection, OperatorOptions};
use slatedb_operator::controller::Settings;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::{fmt, EnvFilter};

/// Declarative copy-on-write checkpoints and clones of SlateDB databases.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ControllerKind {
    Checkpoint,
    Clone,
}

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write the YAML files into.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
        /// The Helm chart's copy of the CRDs, kept identical.
        #[arg(long, default_value = "charts/slatedb-operator/files/crds")]
        chart_dir: PathBuf,
    },
    /// Run the controllers against the cluster of the current kubeconfig or service account.
    Run {
        /// Bound on each SlateDB admin call, in seconds (SlateDB itself retries for ever).
        #[arg(long, default_value_t = 30, env = "ADMIN_TIMEOUT_SECONDS")]
        admin_timeout_seconds: u64,
        /// Longest delay between retries of a transient failure, in seconds.
        #[arg(long, default_value_t = 300, env = "MAX_BACKOFF_SECONDS")]
        max_backoff_seconds: u64,
        /// How many clones run at once.
        #[arg(long, default_value_t = 8, env = "CLONE_CONCURRENCY")]
        clone_concurrency: usize,
        /// Namespaces to watch, comma-separated (default: all namespaces).
        #[arg(long, value_delimiter = ',', env = "WATCH_NAMESPACES")]
        namespaces: Vec<String>,
        /// Which controllers to run (e.g. to split them across deployments).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "checkpoint,clone",
            env = "CONTROLLERS"
        )]
        controllers: Vec<ControllerKind>,
        /// Port of the /healthz, /readyz and /metrics endpoint (0 turns it off).
        #[arg(long, default_value_t = 8080, env = "HTTP_PORT")]
        http_port: u16,
        /// Run only while holding a Lease, so that one of several replicas reconciles.
        #[arg(long, env = "LEADER_ELECTION")]
        leader_election: bool,
        #[arg(long, default_value = "slatedb-operator", env = "LEASE_NAME")]
        lease_name: String,
        /// Namespace of the Lease (default: the pod's namespace, from POD_NAMESPACE).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
        #[arg(long, default_value_t = 15, env = "LEASE_DURATION_SECONDS")]
        lease_duration_seconds: u64,
        #[arg(long, default_value_t = 5, env = "LEASE_GRACE_SECONDS")]
        lease_grace_seconds: u64,
    },
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    // kube brings rustls with ring, the cloud object stores bring aws-lc-rs: pick one process-wide.
    // An Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Crdgen { out_dir, chart_dir } => {
            crdgen(&out_dir).and_then(|()| crdgen(&chart_dir))
        }
        Command::Run {
            admin_timeout_seconds,
            max_backoff_seconds,
            clone_concurrency,
            namespaces,
            controllers,
            http_port,
            leader_election,
            lease_name,
            lease_namespace,
            lease_duration_seconds,
            lease_grace_seconds,
        } => {
            let identity = std::env::var("POD_NAME")
                .unwrap_or_else(|_| format!("slatedb-operator-{}", std::process::id()));
            let options = OperatorOptions {
                settings: Settings {
                    admin_timeout: Duration::from_secs(admin_timeout_seconds),
                    backoff_max: Duration::from_secs(max_backoff_seconds),
                    clone_concurrency,
                    ..Settings::default()
                },
                namespaces: namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
                run_checkpoints: controllers.contains(&ControllerKind::Checkpoint),
                run_clones: controllers.contains(&ControllerKind::Clone),
                http_address: (http_port != 0).then(|| SocketAddr::from(([0, 0, 0, 0], http_port))),
                leader_election: leader_election.then_some(LeaderElection {
                    lease_name,
                    lease_namespace,
                    identity,
                    duration_seconds: lease_duration_seconds,
                    grace_seconds: lease_grace_seconds,
                }),
            };
            run(options)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(options: OperatorOptions) -> Result<(), String> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("starting the async runtime: {e}"))?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("connecting to Kubernetes: {e}"))?;
        operator::run(client, options).await
    })
}

fn crdgen(out_dir: &std::path::Path) -> Result<(), String> {
    let crds = slatedb_operator::crds::generated().map_err(|e| format!("rendering CRDs: {e}"))?;
    std::fs::create_dir_all(out_dir).map_err(|e| format!("creating {}: {e}", out_dir.display()))?;
    for (file, yaml) in crds {
        let path = out_dir.join(file);
        std::fs::write(&path, yaml).map_err(|e| format!("writing {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "wrote CRD");
    }
    Ok(())
}
