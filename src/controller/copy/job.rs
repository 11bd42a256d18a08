//! A large copy as a Kubernetes Job: an Indexed Job in the operator's namespace whose completions
//! each run `slatedb-operator copy --shares N` on a disjoint share of the objects, under a
//! ServiceAccount that has no API rights and no token. Both stores are DatabaseStores: the pods get
//! their `options` as environment variables and mount their credentials Secrets (which live in
//! the operator's namespace, as the Job does) with the `SLATEDB_COPY_FROM_` and
//! `SLATEDB_COPY_TO_` prefixes the command reads; the operator never copies a credential. The operator commits the copy once every share succeeded. Pod deletion is
//! survived: the Job controller starts a replacement, which resumes from the journals at the
//! target.

use super::decide::SourceCheckpoint;
use crate::api::{CopyVerify, DatabaseCopy};
use crate::controller::{Error, Problem};
use crate::copy_command::{FROM_PREFIX, TO_PREFIX};
use crate::engine::Fault;
use k8s_openapi::api::batch::v1::{Job, JobSpec, PodFailurePolicy, PodFailurePolicyRule};
use k8s_openapi::api::batch::v1::{
    PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyOnPodConditionsPattern,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvFromSource, EnvVar, Pod, PodSecurityContext, PodSpec,
    PodTemplateSpec, SeccompProfile, SecretEnvSource, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::{Api, Client, ResourceExt};
use std::collections::BTreeMap;

/// Labels on a copy's Job and its pods, naming the DatabaseCopy (in another
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

/// The name of the Job of a copy: unique per object, stable across retries.
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

/// A DatabaseStore as a Job's pods reach it: its URL, its non-secret options and the Secret of
/// its credentials in the operator's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobStore {
    pub url: String,
    pub options: BTreeMap<String, String>,
    pub secret: Option<String>,
}

impl JobStore {
    pub fn of(store: &crate::api::DatabaseStore) -> JobStore {
        JobStore {
            url: store.spec.url.0.clone(),
            options: store.spec.options.clone(),
            secret: store
                .spec
                .credentials
                .secret_ref
                .as_ref()
                .map(|s| s.name.clone()),
        }
    }
}

/// What a Job copies.
pub struct JobPlan<'a> {
    pub object: &'a DatabaseCopy,
    pub namespace: &'a str,
    pub shares: u32,
    pub source: &'a JobStore,
    pub source_path: &'a str,
    pub checkpoint: &'a SourceCheckpoint,
    pub target: &'a JobStore,
    pub settings: &'a JobSettings,
}

impl JobPlan<'_> {
    /// The stores' options as environment variables, under the prefixes the copy command reads.
    fn env(&self) -> Vec<EnvVar> {
        [(FROM_PREFIX, self.source), (TO_PREFIX, self.target)]
            .into_iter()
            .flat_map(|(prefix, store)| {
                store.options.iter().map(move |(key, value)| EnvVar {
                    name: format!("{prefix}{}", key.to_ascii_uppercase()),
                    value: Some(value.clone()),
                    ..Default::default()
                })
            })
            .collect()
    }

    /// The stores' credentials Secrets, mounted under the same prefixes.
    fn env_from(&self) -> Vec<EnvFromSource> {
        [(FROM_PREFIX, self.source), (TO_PREFIX, self.target)]
            .into_iter()
            .filter_map(|(prefix, store)| {
                Some(EnvFromSource {
                    prefix: Some(prefix.into()),
                    secret_ref: Some(SecretEnvSource {
                        name: store.secret.clone()?,
                        optional: Some(false),
                    }),
                    ..Default::default()
                })
            })
            .collect()
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
            env: Some(self.env()),
            env_from: Some(self.env_from()),
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

/// Creates the Job of `plan`; one left by an earlier attempt is kept.
pub async fn launch(client: &Client, plan: &JobPlan<'_>) -> Result<(), Error> {
    let jobs = Api::<Job>::namespaced(client.clone(), plan.namespace);
    match jobs.create(&PostParams::default(), &plan.job()).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(error) => return Err(error.into()),
    }
    tracing::info!(job = %job_name(plan.object), shares = plan.shares, "copy Job launched");
    Ok(())
}

/// Deletes a copy's Job with its pods; a gone one is fine.
pub async fn remove(client: &Client, namespace: &str, object: &DatabaseCopy) -> Result<(), Error> {
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let jobs = Api::<Job>::namespaced(client.clone(), namespace);
    match jobs.delete(&job_name(object), &background).await {
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
        let source = JobStore {
            url: "s3://prod".into(),
            options: [("aws_endpoint".to_string(), "http://s3".to_string())].into(),
            secret: Some("prod-keys".into()),
        };
        let target = JobStore {
            url: "s3://dr".into(),
            options: Default::default(),
            secret: Some("dr-keys".into()),
        };
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
            container["env"],
            json!([{"name": "SLATEDB_COPY_FROM_AWS_ENDPOINT", "value": "http://s3"}])
        );
        assert_eq!(
            container["envFrom"],
            json!([
                {"prefix": "SLATEDB_COPY_FROM_", "secretRef": {"name": "prod-keys", "optional": false}},
                {"prefix": "SLATEDB_COPY_TO_", "secretRef": {"name": "dr-keys", "optional": false}}
            ])
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
