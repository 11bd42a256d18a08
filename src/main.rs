use clap::{Parser, Subcommand};
use slatedb_operator::controller::copy::job::JobSettings;
use slatedb_operator::controller::runtime::{self, LeaderElection, OperatorOptions};
use slatedb_operator::controller::store_policy::{InlineStores, StorePolicy};
use slatedb_operator::controller::Settings;
use slatedb_operator::engine::{CloneProgress, EngineError, Verification};
use slatedb_operator::offline_commands::{exit_code, exit_code_for};
use std::collections::BTreeMap;
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
    /// Output of the local and cluster commands: text for people, or JSON lines for scripts.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Where a database is: its store URL (credentials come from AWS_*, GOOGLE_*, AZURE_* variables)
/// and its path in the store.
#[derive(clap::Args)]
struct DbArgs {
    /// Object-store URL, e.g. file:///data or s3://bucket/prefix.
    #[arg(long)]
    store: String,
    /// Path of the database in the store.
    #[arg(long)]
    path: String,
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Create a detached checkpoint of the latest state (or return the one of this name).
    Create {
        #[command(flatten)]
        db: DbArgs,
        /// Checkpoint name; a second create with the same name returns the first checkpoint.
        #[arg(long)]
        name: String,
        /// Lifetime in Go syntax (e.g. 24h); default: never expires.
        #[arg(long)]
        lifetime: Option<String>,
    },
    /// List the database's checkpoints.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete a checkpoint by id.
    Delete {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        id: uuid::Uuid,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VerifyArg {
    None,
    Metadata,
    Content,
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
    Copy,
}

/// How the operator runs large copies as Kubernetes Jobs.
#[derive(clap::Args)]
struct CopyJobArgs {
    /// Image of the copy Jobs' pods: the operator's own (the chart sets it); without it every copy
    /// runs in the operator.
    #[arg(long, env = "COPY_JOB_IMAGE")]
    copy_job_image: Option<String>,
    /// imagePullPolicy of the copy Jobs' pods.
    #[arg(long, env = "COPY_JOB_IMAGE_PULL_POLICY")]
    copy_job_image_pull_policy: Option<String>,
    /// ServiceAccount of the copy Jobs' pods (the chart's, which has no API rights).
    #[arg(
        long,
        env = "COPY_JOB_SERVICE_ACCOUNT",
        default_value = "slatedb-operator-copy"
    )]
    copy_job_service_account: String,
    /// Copies of checkpoints of at least this many bytes run as Jobs (a DatabaseCopy's
    /// spec.job.thresholdBytes overrides it).
    #[arg(long, env = "COPY_JOB_THRESHOLD_BYTES", default_value_t = 1 << 30)]
    copy_job_threshold_bytes: u64,
    /// Run the copy Jobs' pods on the node's network (as an operator on the host network is).
    #[arg(long, env = "COPY_JOB_HOST_NETWORK")]
    copy_job_host_network: bool,
}

/// An SST compression codec, or none.
#[derive(Clone, Copy, Debug)]
struct Compression(Option<slatedb::config::CompressionCodec>);

fn parse_compression(name: &str) -> Result<Compression, String> {
    slatedb_operator::engine::sample::codec_named(name).map(Compression)
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
    /// Manage checkpoints of a database in an object store (no cluster needed).
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Clone a database copy-on-write, from a checkpoint or its latest state (no cluster needed).
    Clone {
        /// Object-store URL holding both the source and the clone.
        #[arg(long)]
        store: String,
        /// Path of the source database.
        #[arg(long)]
        source: String,
        /// Source checkpoint id; default: the latest state.
        #[arg(long)]
        checkpoint: Option<uuid::Uuid>,
        /// Path of the clone.
        #[arg(long)]
        target: String,
        #[arg(long, value_enum, default_value_t = VerifyArg::Metadata)]
        verify: VerifyArg,
        /// First key of a key-range clone (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// End of a key-range clone (exclusive).
        #[arg(long)]
        end: Option<String>,
    },
    /// Copy a checkpoint to another store or path: an independent database (no cluster needed).
    Copy(slatedb_operator::copy_command::CopyArgs),
    /// Turn a finished copy into an independent, writable database.
    Promote(slatedb_operator::copy_command::PromoteArgs),
    /// Fingerprint a checkpoint or the latest state; --content also reads every byte.
    Verify {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long)]
        checkpoint: Option<uuid::Uuid>,
        #[arg(long)]
        content: bool,
    },
    /// Write a sample database of numbered keys (for demos and trials).
    Sample {
        #[command(flatten)]
        db: DbArgs,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 5)]
        ssts: usize,
        /// SST compression: none, snappy, zlib, lz4 or zstd.
        #[arg(long, default_value = "none", value_parser = parse_compression)]
        compression: Compression,
    },
    /// Block until the path holds an initialized database (for an application's init container).
    Wait {
        #[command(flatten)]
        db: DbArgs,
        /// How long to wait, in Go syntax (e.g. 90s, 5m).
        #[arg(long, default_value = "5m", value_parser = |t: &str| slatedb_operator::api::GoDuration(t.into()).to_std())]
        timeout: Duration,
    },
    #[command(flatten)]
    Cluster(slatedb_operator::plugin::PluginCommand),
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
        /// How often a Ready clone's data is re-checked (every pinned object present, every
        /// parent's checkpoint held), in seconds; 0 turns the checks off.
        #[arg(long, default_value_t = 600, env = "HEALTH_CHECK_SECONDS")]
        health_check_seconds: u64,
        /// Which inline stores (a URL and a Secret in the object) objects may use: none, only
        /// those with explicit credentials in their Secret, or any (never one pointing at the
        /// operator's own identity).
        #[arg(
            long,
            value_enum,
            default_value = "with-credentials",
            env = "INLINE_STORES"
        )]
        inline_stores: InlineStores,
        /// Let inline stores be `file://` or `memory://` and reach loopback endpoints (for the
        /// demo and tests on one machine).
        #[arg(long, env = "ALLOW_LOCAL_STORES")]
        allow_local_stores: bool,
        /// Namespaces to watch, comma-separated (default: all namespaces).
        #[arg(long, value_delimiter = ',', env = "WATCH_NAMESPACES")]
        namespaces: Vec<String>,
        /// Which controllers to run (e.g. to split them across deployments).
        #[arg(
            long,
            value_enum,
            value_delimiter = ',',
            default_value = "checkpoint,clone,copy",
            env = "CONTROLLERS"
        )]
        controllers: Vec<ControllerKind>,
        #[command(flatten)]
        copy_jobs: CopyJobArgs,
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
        /// The operator's own namespace, where the credentials Secrets of DatabaseStores live
        /// (default: the pod's namespace, from POD_NAMESPACE).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        operator_namespace: String,
        /// Serve only the DatabaseStores with these labels (`key=value,...`), so that several
        /// operators can share a cluster; default: all.
        #[arg(long, env = "STORE_SELECTOR", value_parser = parse_labels, default_value = "")]
        store_selector: Labels,
        #[arg(long, default_value_t = 15, env = "LEASE_DURATION_SECONDS")]
        lease_duration_seconds: u64,
        #[arg(long, default_value_t = 5, env = "LEASE_GRACE_SECONDS")]
        lease_grace_seconds: u64,
    },
}

/// Labels given as `key=value,...`.
#[derive(Clone, Debug)]
struct Labels(BTreeMap<String, String>);

fn parse_labels(text: &str) -> Result<Labels, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        labels.insert(key.trim().to_string(), value.trim().to_string());
    }
    Ok(Labels(labels))
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
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
    let cli: Cli = slatedb_operator::plugin::parse_args();
    // The operator logs its work, and wait what it waits for; the other commands log only trouble,
    // their report is the output.
    let default_level = if matches!(cli.command, Command::Run { .. } | Command::Wait { .. }) {
        "info"
    } else {
        "warn"
    };
    init_logging(cli.log_format, default_level);
    let output = cli.output;
    let result = match cli.command {
        Command::Checkpoint { command } => return local(output, checkpoint_command(command)),
        Command::Clone {
            store,
            source,
            checkpoint,
            target,
            verify,
            start,
            end,
        } => {
            let verify = match verify {
                VerifyArg::None => Verification::None,
                VerifyArg::Metadata => Verification::Metadata,
                VerifyArg::Content => Verification::Content,
            };
            let args = slatedb_operator::offline_commands::CloneArgs {
                url: store,
                source,
                checkpoint,
                target,
                verify,
                start,
                end,
            };
            let bar = progress_bar(output);
            let sink = bar.clone();
            return local(output, async move {
                let report = slatedb_operator::offline_commands::clone(args, move |p| {
                    show_progress(output, &sink, &p)
                })
                .await;
                bar.finish_and_clear();
                report
            });
        }
        Command::Copy(args) => {
            let (json, bar) = (output == Output::Json, progress_bar(output));
            return local(
                output,
                slatedb_operator::copy_command::copy(args, json, bar),
            );
        }
        Command::Promote(args) => {
            return local(output, slatedb_operator::copy_command::promote(args))
        }
        Command::Verify {
            db,
            checkpoint,
            content,
        } => {
            return local(
                output,
                slatedb_operator::offline_commands::verify(
                    &db.store, &db.path, checkpoint, content,
                ),
            )
        }
        Command::Sample {
            db,
            keys,
            ssts,
            compression,
        } => {
            return local(
                output,
                slatedb_operator::offline_commands::sample(
                    &db.store,
                    &db.path,
                    keys,
                    ssts,
                    compression.0,
                ),
            )
        }
        Command::Wait { db, timeout } => {
            let wait = slatedb_operator::offline_commands::wait(&db.store, &db.path, timeout);
            return local(output, wait);
        }
        Command::Cluster(command) => {
            let json_output = output == Output::Json;
            return ExitCode::from(slatedb_operator::plugin::run(command, json_output));
        }
        Command::Crdgen { out_dir, chart_dir } => {
            crdgen(&out_dir).and_then(|()| crdgen(&chart_dir))
        }
        Command::Run {
            admin_timeout_seconds,
            max_backoff_seconds,
            clone_concurrency,
            health_check_seconds,
            inline_stores,
            allow_local_stores,
            namespaces,
            controllers,
            copy_jobs,
            http_port,
            leader_election,
            lease_name,
            lease_namespace,
            operator_namespace,
            store_selector,
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
                    health_check_period: (health_check_seconds > 0)
                        .then(|| Duration::from_secs(health_check_seconds)),
                    store_policy: StorePolicy {
                        inline: inline_stores,
                        allow_local: allow_local_stores,
                    },
                    operator_namespace,
                    namespaces: namespaces.into_iter().filter(|n| !n.is_empty()).collect(),
                    store_selector: store_selector.0,
                    copy_jobs: JobSettings {
                        image: copy_jobs.copy_job_image,
                        image_pull_policy: copy_jobs.copy_job_image_pull_policy,
                        service_account: copy_jobs.copy_job_service_account,
                        threshold_bytes: copy_jobs.copy_job_threshold_bytes,
                        host_network: copy_jobs.copy_job_host_network,
                    },
                    ..Settings::default()
                },
                run_checkpoints: controllers.contains(&ControllerKind::Checkpoint),
                run_clones: controllers.contains(&ControllerKind::Clone),
                run_copies: controllers.contains(&ControllerKind::Copy),
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
        runtime::run(client, options).await
    })
}

async fn checkpoint_command(command: CheckpointCommand) -> Result<serde_json::Value, EngineError> {
    match command {
        CheckpointCommand::Create { db, name, lifetime } => {
            let lifetime = lifetime
                .map(|l| slatedb_operator::api::GoDuration(l).to_std())
                .transpose()
                .map_err(|e| EngineError::StoreConfig(format!("--lifetime: {e}")))?;
            slatedb_operator::offline_commands::checkpoint_create(
                &db.store, &db.path, &name, lifetime,
            )
            .await
        }
        CheckpointCommand::List { db } => {
            slatedb_operator::offline_commands::checkpoint_list(&db.store, &db.path).await
        }
        CheckpointCommand::Delete { db, id } => {
            slatedb_operator::offline_commands::checkpoint_delete(&db.store, &db.path, id).await
        }
    }
}

/// Runs a local command and prints its report; the exit code tells the kind of failure.
fn local(
    output: Output,
    command: impl std::future::Future<Output = Result<serde_json::Value, EngineError>>,
) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::from(exit_code::USAGE);
        }
    };
    match runtime.block_on(command) {
        Ok(report) => {
            match output {
                Output::Json => println!("{}", serde_json::json!({"result": report})),
                Output::Text => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
            }
            ExitCode::from(exit_code::OK)
        }
        Err(error) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"error": {"reason": error.reason(), "message": error.to_string()}})
                ),
                Output::Text => eprintln!("error ({}): {error}", error.reason()),
            }
            ExitCode::from(exit_code_for(&error))
        }
    }
}

/// A progress bar on a terminal in text mode; hidden otherwise.
fn progress_bar(output: Output) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if output == Output::Text && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(100);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn show_progress(output: Output, bar: &indicatif::ProgressBar, p: &CloneProgress) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"progress": {"step": p.step.name(), "percent": p.percent(),
                "objectsDone": p.objects_done, "objectsTotal": p.objects_total,
                "bytesDone": p.bytes_done, "bytesTotal": p.bytes_total}})
        ),
        Output::Text => {
            bar.set_position(u64::from(p.percent()));
            bar.set_message(format!(
                "{} {}/{} objects",
                p.step.name(),
                p.objects_done,
                p.objects_total
            ));
        }
    }
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
