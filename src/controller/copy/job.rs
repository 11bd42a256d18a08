//! A large copy as a Kubernetes Job: an Indexed Job in the operator's namespace whose completions
//! each run `slatedb-operator copy --shares N` on a disjoint share of the objects, with both
//! stores' options in a Secret made for it (mounted with the `SLATEDB_COPY_FROM_` and
//! `SLATEDB_COPY_TO_` prefixes the command reads), under a ServiceAccount that has no API rights
//! and no token. The operator commits the copy once every share succeeded. Pod deletion is
//! survived: the Job controller starts a replacement, which resumes from the journals at the
//! target.

use super::decide::SourceCheckpoint;
use crate::api::{CopyVerify, DatabaseCopy};
use crate::controller::{Error, Problem};
use crate::copy_command::{FROM_PREFIX, TO_PREFIX};
use crate::engine::{Fault, StoreConfig};
use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy, PodFailurePolicyRule};
use k8s_openapi::api::batch::v1::{
    PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvFromSource, Pod, PodSecurityContext, PodSpec, PodTemplateSpec,
    SeccompProfile, Secret, SecretEnvSource, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;

/// Labels on a copy's Job, its pods and its Secret, naming the DatabaseCopy (in another
/// namespace, so no owner reference can).
pub const COPY_NAMESPACE_LABEL: &str = "slatedb.io/copy-namespace";
pub const COPY_NAME_LABEL: &str = "slatedb.io/copy-name";
pub const COPY_UID_LABEL: &str = "slatedb.io/copy-uid";
/// Selects every copy Job of an operator.
pub const COMPONENT_SELECTOR: &str =
    "app.kubernetes.io/component=copy,app.kubernetes.io/managed-by=slatedb-operator";

/// How the operator runs copy Jobs (from its command line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobSettings {
    /// The operator's image; Jobs are off without it.
    pub image: Option<String>,
    pub image_pull_policy: Option<String>,
    /// ServiceAccount of the Jobs' pods.
    pub service_account: String,
    /// Default size from which a copy of a checkpoint runs as a Job.
    pub threshold_bytes: u64,
    /// Whether the pods use the node's network (as an operator on the host network does).
    pub host_network: bool,
}

/// The name of the Job (and of its Secret) of a copy: unique per object, stable across retries.
pub fn job_name(object: &DatabaseCopy) -> String {
    format!("slatedb-copy-{}", object.uid().unwrap_or_default())
}

fn labels(object: &DatabaseCopy) -> BTreeMap<String, String> {
    [
        (
            "app.kubernetes.io/managed-by",
            "slatedb-operator".to_string(),
        ),
        ("app.kubernetes.io/component", "copy".to_string()),
        (COPY_NAMESPACE_LABEL, object.namespace().unwrap_or_default()),
        (COPY_NAME_LABEL, object.name_any()),
        (COPY_UID_LABEL, object.uid().unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What a Job copies.
pub struct JobPlan<'a> {
    pub object: &'a DatabaseCopy,
    pub namespace: &'a str,
    pub shares: u32,
    pub source: &'a StoreConfig,
    pub source_path: &'a str,
    pub checkpoint: &'a SourceCheckpoint,
    pub target: &'a StoreConfig,
    pub settings: &'a JobSettings,
}

impl JobPlan<'_> {
    /// The Secret with both stores' options, under the prefixes the copy command reads.
    pub fn secret(&self) -> Secret {
        let prefixed = |prefix: &str, config: &StoreConfig| {
            config
                .options
                .iter()
                .map(|(k, v)| (format!("{prefix}{}", k.to_ascii_uppercase()), v.clone()))
                .collect::<Vec<_>>()
        };
        let mut data: BTreeMap<String, String> = prefixed(FROM_PREFIX, self.source)
            .into_iter()
            .chain(prefixed(TO_PREFIX, self.target))
            .collect();
        // Present even when both stores need no options: the pod's envFrom names the Secret.
        data.insert("SLATEDB_COPY_JOB".into(), job_name(self.object));
        Secret {
            metadata: ObjectMeta {
                name: Some(job_name(self.object)),
                namespace: Some(self.namespace.into()),
                labels: Some(labels(self.object)),
                ..Default::default()
            },
            string_data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    fn args(&self) -> Vec<String> {
        let spec = &self.object.spec;
        let verify = match spec.verify {
            CopyVerify::Metadata => "metadata",
            CopyVerify::Content => "content",
            CopyVerify::Full => "full",
        };
        let owner = format!(
            "{}/{}/{}",
            self.object.namespace().unwrap_or_default(),
            self.object.name_any(),
            self.object.uid().unwrap_or_default()
        );
        [
            "copy",
            "--output=json",
            "--from-store",
            &self.source.url,
            "--from",
            self.source_path,
            "--checkpoint",
            &self.checkpoint.id,
            "--to-store",
            &self.target.url,
            "--to",
            &spec.target.path.0,
            "--shares",
            &self.shares.to_string(),
            "--parallelism",
            &spec.parallelism.unwrap_or(16).to_string(),
            "--verify",
            verify,
            "--owner",
            &owner,
        ]
        .into_iter()
        .map(String::from)
        .collect()
    }

    /// The Indexed Job: one completion per share, all at once; a pod that exits with a
    /// permanent failure's code fails the Job at once, a deleted or evicted one is replaced.
    pub fn job(&self) -> Job {
        let name = job_name(self.object);
        let labels = labels(self.object);
        let container = Container {
            name: "copy".into(),
            image: self.settings.image.clone(),
            image_pull_policy: self.settings.image_pull_policy.clone(),
            command: Some(vec!["slatedb-operator".into()]),
            args: Some(self.args()),
            env_from: Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }]),
            resources: self
                .object
                .spec
                .job
                .as_ref()
                .and_then(|j| j.resources.clone()),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            // The command's last JSON line (its error) becomes the pod's termination message.
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Default::default()
        };
        let pod = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            service_account_name: Some(self.settings.service_account.clone()),
            automount_service_account_token: Some(false),
            host_network: self.settings.host_network.then_some(true),
            dns_policy: self
                .settings
                .host_network
                .then(|| "ClusterFirstWithHostNet".into()),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let permanent_exit_codes = [
            crate::offline_commands::exit_code::USAGE,
            2, // clap's bad arguments
            crate::offline_commands::exit_code::PERMANENT,
            crate::offline_commands::exit_code::CORRUPT,
        ];
        Job {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.into()),
                labels: Some(labels.clone()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completion_mode: Some("Indexed".into()),
                completions: Some(self.shares as i32),
                parallelism: Some(self.shares as i32),
                backoff_limit: Some(6),
                pod_failure_policy: Some(PodFailurePolicy {
                    rules: vec![
                        PodFailurePolicyRule {
                            action: "FailJob".into(),
                            on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                                container_name: Some("copy".into()),
                                operator: "In".into(),
                                values: permanent_exit_codes.iter().map(|&c| c.into()).collect(),
                            }),
                            ..Default::default()
                        },
                        PodFailurePolicyRule {
                            action: "Ignore".into(),
                            on_pod_conditions: Some(vec![PodFailurePolicyOnPodConditionsPattern {
                                type_: "DisruptionTarget".into(),
                                status: Some("True".into()),
                            }]),
                            ..Default::default()
                        },
                    ],
                }),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(pod),
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Creates the Secret and the Job of `plan`; ones left by an earlier attempt are kept.
pub async fn launch(client: &Client, plan: &JobPlan<'_>) -> Result<(), Error> {
    let secrets = Api::<Secret>::namespaced(client.clone(), plan.namespace);
    create_unless_present(&secrets, &plan.secret()).await?;
    let jobs = Api::<Job>::namespaced(client.clone(), plan.namespace);
    create_unless_present(&jobs, &plan.job()).await?;
    tracing::info!(job = %job_name(plan.object), shares = plan.shares, "copy Job launched");
    Ok(())
}

async fn create_unless_present<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Deletes a copy's Job (with its pods) and its Secret; gone ones are fine.
pub async fn remove(client: &Client, namespace: &str, object: &DatabaseCopy) -> Result<(), Error> {
    let name = job_name(object);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let jobs = Api::<Job>::namespaced(client.clone(), namespace);
    ignore_missing(jobs.delete(&name, &background).await)?;
    let secrets = Api::<Secret>::namespaced(client.clone(), namespace);
    ignore_missing(secrets.delete(&name, &DeleteParams::default()).await)?;
    Ok(())
}

fn ignore_missing<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// What a copy's Job is doing.
#[derive(Debug, PartialEq)]
pub enum JobState {
    Running,
    Succeeded,
    Failed(Problem),
}

/// The state of the Job of `object`: a missing Job is a transient failure (the copy starts it
/// again), a failed one a permanent failure with its pods' last words.
pub async fn observe(
    client: &Client,
    namespace: &str,
    object: &DatabaseCopy,
) -> Result<JobState, Error> {
    let name = job_name(object);
    let jobs = Api::<Job>::namespaced(client.clone(), namespace);
    let Some(job) = jobs.get_opt(&name).await? else {
        return Ok(JobState::Failed(Problem {
            fault: Fault::Transient,
            reason: "CopyJobMissing".into(),
            message: format!("the copy's Job {namespace}/{name} is gone; it is started again"),
        }));
    };
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let is = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if is("Complete").is_some() {
        return Ok(JobState::Succeeded);
    }
    let Some(failed) = is("Failed") else {
        return Ok(JobState::Running);
    };
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await?;
    let last_words: Vec<String> = pods
        .items
        .iter()
        .filter_map(|pod| {
            let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
            let terminated = statuses.first()?.state.as_ref()?.terminated.as_ref()?;
            let message = terminated.message.as_deref()?.trim();
            (terminated.exit_code != 0 && !message.is_empty())
                .then(|| format!("{}: {}", pod.name_any(), last_line(message)))
        })
        .collect();
    Ok(JobState::Failed(Problem {
        fault: Fault::Permanent,
        reason: super::decide::JOB_FAILED.into(),
        message: format!(
            "the copy's Job {namespace}/{name} failed ({}: {}){}",
            failed.reason.as_deref().unwrap_or("Failed"),
            failed.message.as_deref().unwrap_or_default(),
            if last_words.is_empty() {
                String::new()
            } else {
                format!("; {}", last_words.join("; "))
            }
        ),
    }))
}

/// The last line of a termination message: the command's JSON error line, if it printed one.
fn last_line(message: &str) -> String {
    let line = message.lines().last().unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(value) => match (
            value["error"]["reason"].as_str(),
            value["error"]["message"].as_str(),
        ) {
            (Some(reason), Some(text)) => format!("{reason}: {text}"),
            _ => line.to_string(),
        },
        Err(_) => line.chars().take(500).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn copy_object() -> DatabaseCopy {
        serde_json::from_value(json!({
            "apiVersion": "slatedb.io/v1alpha1", "kind": "DatabaseCopy",
            "metadata": {"name": "dr", "namespace": "team-a", "uid": "1234-abcd"},
            "spec": {
                "source": {"checkpointRef": {"name": "nightly"}},
                "target": {"store": {"ref": "dr-bucket"}, "path": "copies/orders"},
                "parallelism": 4,
                "job": {"shares": 3, "resources": {"requests": {"cpu": "250m"}}}
            }
        }))
        .unwrap()
    }

    #[test]
    fn the_job_runs_the_copy_command_on_one_share_per_completion_without_api_rights() {
        let object = copy_object();
        let source = StoreConfig::with_options(
            "s3://prod",
            &[("aws_access_key_id", "AK"), ("AWS_ENDPOINT", "http://s3")],
        );
        let target = StoreConfig::with_options("s3://dr", &[("AWS_SECRET_ACCESS_KEY", "SK")]);
        let settings = JobSettings {
            image: Some("slatedb-operator:dev".into()),
            service_account: "slatedb-operator-copy".into(),
            ..Default::default()
        };
        let checkpoint = SourceCheckpoint {
            id: "0b1c".into(),
            size_bytes: Some(10),
            objects: Some(3),
        };
        let plan = JobPlan {
            object: &object,
            namespace: "operators",
            shares: 3,
            source: &source,
            source_path: "prod/orders",
            checkpoint: &checkpoint,
            target: &target,
            settings: &settings,
        };
        let secret = plan.secret();
        let data = secret.string_data.unwrap();
        assert_eq!(data["SLATEDB_COPY_FROM_AWS_ACCESS_KEY_ID"], "AK");
        assert_eq!(data["SLATEDB_COPY_FROM_AWS_ENDPOINT"], "http://s3");
        assert_eq!(data["SLATEDB_COPY_TO_AWS_SECRET_ACCESS_KEY"], "SK");
        assert_eq!(secret.metadata.namespace.as_deref(), Some("operators"));

        let job = serde_json::to_value(plan.job()).unwrap();
        let spec = &job["spec"];
        assert_eq!(job["metadata"]["name"], "slatedb-copy-1234-abcd");
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(
            (spec["completions"].clone(), spec["parallelism"].clone()),
            (json!(3), json!(3))
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "slatedb-operator-copy");
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["restartPolicy"], "Never");
        let container = &pod["containers"][0];
        assert_eq!(container["resources"]["requests"]["cpu"], "250m");
        assert_eq!(
            container["envFrom"][0]["secretRef"]["name"],
            "slatedb-copy-1234-abcd"
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
        assert_eq!(args[0], "copy");
        assert_eq!(after("--checkpoint"), "0b1c");
        assert_eq!(after("--shares"), "3");
        assert_eq!(after("--to"), "copies/orders");
        assert_eq!(after("--parallelism"), "4");
        assert_eq!(after("--owner"), "team-a/dr/1234-abcd");
        assert!(
            !args.iter().any(|a| a.contains("SK") || a.contains("AK")),
            "no secret in args"
        );
        let rules = &spec["podFailurePolicy"]["rules"];
        assert_eq!(rules[0]["action"], "FailJob");
        assert_eq!(rules[0]["onExitCodes"]["values"], json!([1, 2, 3, 4]));
        assert_eq!(rules[1]["action"], "Ignore");
    }

    #[test]
    fn a_pods_json_error_line_becomes_the_failure_message() {
        let message = "{\"progress\":{}}\n{\"error\":{\"reason\":\"Diverged\",\"message\":\"x\"}}";
        assert_eq!(last_line(message), "Diverged: x");
        assert_eq!(last_line("plain words"), "plain words");
    }
}
