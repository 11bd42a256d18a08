use clap::{Parser, Subcommand};
use slatedb_operator::controller::{self, Context, Settings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
        /// Watch only this namespace (default: all namespaces).
        #[arg(long, env = "WATCH_NAMESPACE")]
        namespace: Option<String>,
        /// Which controllers to run (e.g. to split them across deployments).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "checkpoint,clone",
            env = "CONTROLLERS"
        )]
        controllers: Vec<ControllerKind>,
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
        Command::Crdgen { out_dir } => crdgen(&out_dir),
        Command::Run {
            admin_timeout_seconds,
            max_backoff_seconds,
            clone_concurrency,
            namespace,
            controllers,
        } => {
            let settings = Settings {
                admin_timeout: Duration::from_secs(admin_timeout_seconds),
                backoff_max: Duration::from_secs(max_backoff_seconds),
                clone_concurrency,
                namespace: namespace.filter(|n| !n.is_empty()),
                ..Settings::default()
            };
            run(settings, &controllers)
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

fn run(settings: Settings, controllers: &[ControllerKind]) -> Result<(), String> {
    let runtime =
        tokio::runtime::Runtime::new().map_err(|e| format!("starting the async runtime: {e}"))?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("connecting to Kubernetes: {e}"))?;
        let ctx = Arc::new(Context::new(client, settings));
        tracing::info!("slatedb-operator running");
        let checkpoints = controllers
            .contains(&ControllerKind::Checkpoint)
            .then(|| controller::checkpoint::run(ctx.clone()));
        let clones = controllers
            .contains(&ControllerKind::Clone)
            .then(|| controller::clone::run(ctx.clone()));
        tokio::join!(
            futures::future::OptionFuture::from(checkpoints),
            futures::future::OptionFuture::from(clones)
        );
        Ok(())
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
