//! End-to-end tests against the real cluster that `e2e/cluster.sh up` starts (kube-apiserver,
//! etcd, kube-controller-manager, kube-scheduler and a real node: kubelet and containerd). Run them with `e2e/run-tests.sh`, which
//! starts the cluster, exports its environment and stops it afterwards. Without a cluster these
//! tests fail; they never skip.

#[macro_use]
mod support;

mod argocd;
mod bad_input;
mod chart;
mod checkpoints;
mod cli;
mod clones;
mod compression;
mod copies;
mod crds;
mod data_safety;
mod dockerfile;
mod examples;
mod faults;
mod image;
mod node;
mod node_copies;
mod operations;
mod plugin;
mod providers;
mod restarts;
mod schedules;
mod tenants;
mod wait;
