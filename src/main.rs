use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
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

#[derive(Subcommand)]
enum Command {
    /// Write the CustomResourceDefinitions generated from the Rust types.
    Crdgen {
        /// Directory to write the YAML files into.
        #[arg(long, default_value = "crds")]
        out_dir: PathBuf,
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
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
