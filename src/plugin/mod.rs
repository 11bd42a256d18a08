//! The commands that talk to the cluster, for people and scripts (`tree`, `reset`); installed as
//! `kubectl-slatedb` on PATH, the binary is the kubectl plugin `kubectl slatedb …`. The cluster is
//! the one of the usual kubeconfig (`KUBECONFIG`, `~/.kube/config`, or the pod's service account),
//! the namespace its context's unless `--namespace` says otherwise.
//!
//! - `tree.rs`: the lineage tree built from listed objects, and its text form (no I/O).

pub mod tree;

use crate::api::DatabaseClone;
use crate::offline_commands::exit_code;
use chrono::Utc;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use std::ffi::OsString;

/// The name kubectl runs the binary by when it is the plugin `kubectl slatedb`.
pub const PLUGIN_BINARY: &str = "kubectl-slatedb";

/// Parses the command line. Run as `kubectl-slatedb` (by kubectl), help and usage errors name the
/// command `kubectl slatedb`.
pub fn parse_args<P: clap::Parser>() -> P {
    let args: Vec<OsString> = std::env::args_os().collect();
    let mut command = command_for::<P>(args.first());
    let parsed = command
        .try_get_matches_from_mut(args)
        .and_then(|matches| P::from_arg_matches(&matches));
    parsed.unwrap_or_else(|error| error.format(&mut command).exit())
}

/// The clap command of `P`, named for how it was invoked (`program`, the first argument).
fn command_for<P: clap::CommandFactory>(program: Option<&OsString>) -> clap::Command {
    let invoked_as_plugin = program
        .and_then(|p| std::path::Path::new(p).file_stem())
        .is_some_and(|stem| stem == PLUGIN_BINARY);
    match invoked_as_plugin {
        true => P::command().bin_name("kubectl slatedb"),
        false => P::command(),
    }
}

/// Which namespaces a command looks at.
#[derive(Clone, Debug, clap::Args)]
pub struct Scope {
    /// The namespace; default: the kubeconfig context's.
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

/// The cluster commands (`kubectl slatedb …`).
#[derive(Clone, Debug, clap::Subcommand)]
pub enum PluginCommand {
    /// Show schedules → checkpoints → clones → clones of clones, with phase, age and expiry.
    ///
    /// Each object sits under what it depends on: a checkpoint under the schedule that made it (or
    /// the clone it checkpoints), a clone under the checkpoint it was made from (or the clone whose
    /// data it references). Also `kubectl slatedb tree`.
    Tree {
        #[command(flatten)]
        scope: Scope,
    },
    /// Replace a clone's data with a fresh clone of its source, by setting spec.resetToken.
    ///
    /// For scheduleRef, the source is the schedule's newest Ready checkpoint at the time. Also
    /// `kubectl slatedb reset CLONE`.
    Reset {
        /// The DatabaseClone's name.
        clone: String,
        /// The namespace; default: the kubeconfig context's.
        #[arg(short, long)]
        namespace: Option<String>,
        /// The new spec.resetToken; default: the current time (RFC 3339).
        #[arg(long)]
        token: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no usable kubeconfig (KUBECONFIG, ~/.kube/config) or in-cluster configuration: {0}")]
    Config(#[source] kube::Error),
    #[error("listing {kind}s in {scope}: {source}")]
    List {
        kind: String,
        scope: String,
        #[source]
        source: kube::Error,
    },
    #[error("no DatabaseClone {name:?} in namespace {namespace:?}")]
    CloneNotFound { namespace: String, name: String },
    #[error("reading DatabaseClone {namespace}/{name}: {source}")]
    Get {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "spec.resetToken of DatabaseClone {namespace}/{name} is already {token:?}: a reset needs \
         a new value (leave out --token for the current time)"
    )]
    TokenUnchanged {
        namespace: String,
        name: String,
        token: String,
    },
    #[error("setting spec.resetToken of DatabaseClone {namespace}/{name}: {source}")]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl PluginError {
    /// A one-word CamelCase reason, as the local commands report.
    pub fn reason(&self) -> &'static str {
        match self {
            PluginError::Config(_) => "NoClusterConfig",
            PluginError::List { source, .. }
            | PluginError::Get { source, .. }
            | PluginError::Patch { source, .. } => api_reason(source),
            PluginError::CloneNotFound { .. } => "NotFound",
            PluginError::TokenUnchanged { .. } => "TokenUnchanged",
            PluginError::Runtime(_) => "Runtime",
        }
    }

    /// The process exit code, as for the local commands: 75 when retrying may help, 3 when the
    /// input or the user's rights must change, 1 for the program's own failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            PluginError::Config(_) => exit_code::PERMANENT,
            PluginError::List { source, .. }
            | PluginError::Get { source, .. }
            | PluginError::Patch { source, .. } => match source {
                kube::Error::Api(status) if status.code == 429 || status.code >= 500 => {
                    exit_code::TRANSIENT
                }
                kube::Error::Api(_) | kube::Error::Auth(_) => exit_code::PERMANENT,
                _ => exit_code::TRANSIENT,
            },
            PluginError::CloneNotFound { .. } | PluginError::TokenUnchanged { .. } => {
                exit_code::PERMANENT
            }
            PluginError::Runtime(_) => exit_code::USAGE,
        }
    }
}

fn api_reason(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) => match status.code {
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            422 => "Invalid",
            429 => "TooManyRequests",
            _ => "ApiError",
        },
        _ => "ClusterUnreachable",
    }
}

/// Runs a cluster command, prints its report (the text for people, or one JSON line
/// `{"result": …}` / `{"error": …}` with `json_output`) and returns the process exit code.
pub fn run(command: PluginCommand, json_output: bool) -> u8 {
    let outcome = tokio::runtime::Runtime::new()
        .map_err(PluginError::Runtime)
        .and_then(|runtime| runtime.block_on(execute(command)));
    match outcome {
        Ok(report) => {
            match json_output {
                true => println!("{}", json!({"result": report.json})),
                false => print!("{}", report.text),
            }
            exit_code::OK
        }
        Err(error) => {
            match json_output {
                true => println!(
                    "{}",
                    json!({"error": {"reason": error.reason(), "message": error.to_string()}})
                ),
                false => eprintln!("error ({}): {error}", error.reason()),
            }
            error.exit_code()
        }
    }
}

/// What a command has to say, in both forms.
struct Report {
    text: String,
    json: Value,
}

async fn execute(command: PluginCommand) -> Result<Report, PluginError> {
    let client = Client::try_default().await.map_err(PluginError::Config)?;
    match command {
        PluginCommand::Tree { scope } => show_tree(client, scope).await,
        PluginCommand::Reset {
            clone,
            namespace,
            token,
        } => {
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            reset(client, &namespace, &clone, token).await
        }
    }
}

async fn show_tree(client: Client, scope: Scope) -> Result<Report, PluginError> {
    let namespace = match scope.all_namespaces {
        true => None,
        false => Some(
            scope
                .namespace
                .unwrap_or_else(|| client.default_namespace().to_string()),
        ),
    };
    let objects = tree::Objects {
        schedules: list(&client, namespace.as_deref()).await?,
        checkpoints: list(&client, namespace.as_deref()).await?,
        clones: list(&client, namespace.as_deref()).await?,
    };
    let now = Utc::now();
    let roots = tree::build(&objects, now);
    let text = match (roots.is_empty(), &namespace) {
        (true, Some(namespace)) => format!(
            "No DatabaseCheckpointSchedules, DatabaseCheckpoints or DatabaseClones in namespace \
             {namespace}.\n"
        ),
        (true, None) => {
            "No DatabaseCheckpointSchedules, DatabaseCheckpoints or DatabaseClones.\n".into()
        }
        (false, _) => tree::render_text(&roots, namespace.is_none(), now),
    };
    Ok(Report {
        text,
        json: json!({"namespace": namespace, "items": roots}),
    })
}

/// Every object of kind `K` in `namespace` (or in all of them).
async fn list<K>(client: &Client, namespace: Option<&str>) -> Result<Vec<K>, PluginError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = match namespace {
        Some(namespace) => Api::<K>::namespaced(client.clone(), namespace),
        None => Api::<K>::all(client.clone()),
    };
    api.list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|source| PluginError::List {
            kind: K::kind(&()).to_string(),
            scope: namespace.map_or("all namespaces".into(), |n| format!("namespace {n}")),
            source,
        })
}

async fn reset(
    client: Client,
    namespace: &str,
    name: &str,
    token: Option<String>,
) -> Result<Report, PluginError> {
    let api = Api::<DatabaseClone>::namespaced(client, namespace);
    let clone = api
        .get_opt(name)
        .await
        .map_err(|source| PluginError::Get {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?
        .ok_or_else(|| PluginError::CloneNotFound {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    let token =
        token.unwrap_or_else(|| Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let previous = clone.spec.reset_token.clone();
    if previous.as_deref() == Some(token.as_str()) {
        return Err(PluginError::TokenUnchanged {
            namespace: namespace.into(),
            name: name.into(),
            token,
        });
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resetToken": token}})),
    )
    .await
    .map_err(|source| PluginError::Patch {
        namespace: namespace.into(),
        name: name.into(),
        source,
    })?;
    let from = match &clone.spec.source.schedule_ref {
        Some(schedule) => format!("the newest Ready checkpoint of schedule {}", schedule.name),
        None => "its source".to_string(),
    };
    let text = format!(
        "dbclone/{name} reset: spec.resetToken {} -> {token:?}. The operator deletes its data and \
         clones {from} again (not while other clones depend on its data); its ConfigMap returns \
         once it is Ready. Follow it with: kubectl get dbclone {name} -n {namespace} -w\n",
        previous.map_or("(unset)".to_string(), |p| format!("{p:?}")),
    );
    Ok(Report {
        text,
        json: json!({"namespace": namespace, "name": name, "previousToken": clone.spec.reset_token, "resetToken": token}),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    #[command(name = "slatedb-operator")]
    struct TestCli {
        #[command(subcommand)]
        command: PluginCommand,
    }

    fn help(program: &str) -> String {
        let program = OsString::from(program);
        let mut command = command_for::<TestCli>(Some(&program));
        let error = command
            .try_get_matches_from_mut([program.as_os_str(), "tree".as_ref(), "--help".as_ref()])
            .unwrap_err();
        error.render().to_string()
    }

    fn listing_failed(code: u16) -> PluginError {
        let status = kube::core::Status::failure("refused", "Refused").with_code(code);
        PluginError::List {
            kind: "DatabaseClone".into(),
            scope: "namespace team-a".into(),
            source: kube::Error::Api(status.boxed()),
        }
    }

    #[test]
    fn refusals_are_permanent_and_overload_transient_as_for_the_local_commands() {
        assert_eq!(listing_failed(403).exit_code(), exit_code::PERMANENT);
        assert_eq!(listing_failed(403).reason(), "Forbidden");
        assert_eq!(listing_failed(404).reason(), "NotFound");
        assert_eq!(listing_failed(503).exit_code(), exit_code::TRANSIENT);
        assert_eq!(listing_failed(429).exit_code(), exit_code::TRANSIENT);
        let unchanged = PluginError::TokenUnchanged {
            namespace: "team-a".into(),
            name: "pr-7".into(),
            token: "t".into(),
        };
        assert_eq!(unchanged.exit_code(), exit_code::PERMANENT);
        assert!(
            unchanged.to_string().contains("already \"t\""),
            "{unchanged}"
        );
    }

    #[test]
    fn run_by_kubectl_the_help_names_kubectl_slatedb() {
        assert!(
            help("/home/me/.local/bin/kubectl-slatedb").contains("Usage: kubectl slatedb tree"),
            "{}",
            help("/home/me/.local/bin/kubectl-slatedb")
        );
        assert!(help("/usr/bin/slatedb-operator").contains("Usage: slatedb-operator tree"));
    }

    #[test]
    fn tree_and_reset_take_kubectl_style_flags() {
        let parsed = TestCli::try_parse_from(["kubectl-slatedb", "tree", "-n", "team-a"]).unwrap();
        assert!(
            matches!(parsed.command, PluginCommand::Tree { scope } if scope.namespace.as_deref() == Some("team-a"))
        );
        let parsed = TestCli::try_parse_from(["kubectl-slatedb", "tree", "-A"]).unwrap();
        assert!(matches!(parsed.command, PluginCommand::Tree { scope } if scope.all_namespaces));
        assert!(TestCli::try_parse_from(["kubectl-slatedb", "tree", "-A", "-n", "x"]).is_err());
        let parsed = TestCli::try_parse_from([
            "kubectl-slatedb",
            "reset",
            "pr-7",
            "-n",
            "previews",
            "--token",
            "t2",
        ])
        .unwrap();
        assert!(matches!(parsed.command,
            PluginCommand::Reset { clone, namespace, token }
                if clone == "pr-7" && namespace.as_deref() == Some("previews") && token.as_deref() == Some("t2")));
    }
}
