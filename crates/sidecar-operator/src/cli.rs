//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sidecar_core::Guardrails;

#[derive(Debug, Parser)]
#[command(
    name = "sidecar-operator",
    version,
    about = "Injects native sidecar containers into Deployments, as SidecarPolicies ask.",
    long_about = "Injects native sidecar containers into Deployments, as SidecarPolicies (sidecar.dev/v1alpha1) ask.\n\n\
                  `render` shows what the operator would do, without a cluster. `plan` shows what a policy change would \
                  do to the cluster's Deployments, and `explain` why a Deployment has the sidecars it has (both only read \
                  the cluster). `crd` prints the CustomResourceDefinition."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Render Deployments as the operator would, without a cluster.
    #[command(
        long_about = "Render Deployments as the operator would, without a cluster.\n\n\
        Reads YAML files: several documents per file are fine, a `v1 List` is read item by item, \
        and `-` reads standard input, so the output of `kustomize build` or `helm template` can be \
        given as it is. The Deployments (apps/v1) of the --deployment input are rendered, in input \
        order, and printed, or with --diff shown as a unified diff against the input. SidecarPolicies \
        (sidecar.dev/v1alpha1) are read from the --policy files and from the --deployment input too, \
        so --policy can be left out when that input holds the policies. Documents of other kinds are \
        ignored with a note on standard error, and so are Deployments in --policy files. Each --policy \
        file must hold a SidecarPolicy, and the --deployment input a Deployment.\n\n\
        Documents that name no namespace are in the --namespace one (`default` without it); the \
        output does not name a namespace its input did not. As in a cluster, a SidecarPolicy affects \
        only the Deployments of its own namespace, so Deployments of several namespaces are each \
        rendered with their own namespace's policies.\n\n\
        Exit codes: 0 rendered; 1 bad input (unreadable file, invalid YAML, unknown field, a \
        Deployment or SidecarPolicy of another apiVersion, a policy name twice in a namespace, no \
        Deployment or no SidecarPolicy); 2 the render was refused (invalid policy, guardrail, \
        conflict), with every problem printed on standard error."
    )]
    Render(RenderArgs),
    /// Run the controller against the cluster of the current kubeconfig (or in-cluster config).
    #[command(
        long_about = "Run the controller against the cluster of the current kubeconfig (or the in-cluster \
        service account).\n\n\
        It watches SidecarPolicies and Deployments and keeps every selected Deployment's pod template \
        as its policies ask, writing with server-side apply under the field manager `sidecar-operator`. \
        Logs go to standard error, coloured only on a terminal and without NO_COLOR; RUST_LOG sets \
        the filter (default `info`)."
    )]
    Run(RunArgs),
    /// Show what a policy change would do to the cluster's Deployments, before it is applied.
    #[command(
        long_about = "Show what a policy change would do to the cluster's Deployments, before it is applied.\n\n\
        Reads the cluster of the current kubeconfig (KUBECONFIG, or the in-cluster service account) and \
        never writes to it: it lists Deployments, SidecarPolicies, ClusterSidecarPolicies (skipped with a \
        note when their CRD is not served) and Namespaces. The change is the --policy files (new or changed \
        SidecarPolicies and ClusterSidecarPolicies; a policy of the same name replaces the cluster's) and the \
        deletions. Every Deployment is rendered with the current policies and with the planned ones, as the \
        operator would, and each one that would change, be refused or lose a policy is listed on a line of \
        its own, then a summary. A Deployment whose live object is not what the current policies render is \
        listed as pending: the operator has not applied them yet, or a staged rollout holds it back; the \
        change is never measured from it.\n\n\
        Documents that name no namespace, and --delete-policy names without one, are in the --namespace \
        one, or the kubeconfig context's namespace.\n\n\
        Exit codes: 0 planned; 1 bad input or the cluster could not be read; 2 the change would make the \
        operator refuse a Deployment (every problem is listed), so that a CI pipeline fails."
    )]
    Plan(PlanArgs),
    /// Explain why a Deployment has the sidecars it has: policies, labels, revisions, order.
    #[command(long_about = "Explain why a Deployment has the sidecars it has.\n\n\
        Reads the cluster of the current kubeconfig and never writes to it. Shows which policies select \
        the Deployment and which selector terms matched (with the Deployment's and the namespace's label \
        values), what each injected according to the Deployment's record and at which revision, the \
        injection order and why, which policies do not select it and which term fails, whether the live \
        Deployment is what the current policies render, and any refusal or warning.\n\n\
        As a kubectl plugin: link the binary as `kubectl-sidecar` on PATH, then \
        `kubectl sidecar explain deployment web -n demo`.")]
    Explain(ExplainArgs),
    /// Print a CustomResourceDefinition as YAML (`crds/` holds their checked-in output).
    Crd(CrdArgs),
}

/// The name this binary has as a kubectl plugin: kubectl runs `kubectl-sidecar` for `kubectl
/// sidecar`.
pub const KUBECTL_PLUGIN: &str = "kubectl-sidecar";

/// The command line parser, named as the binary was invoked: `kubectl sidecar` when it runs as
/// the kubectl plugin (`argv0`'s file name is `kubectl-sidecar`), so that help and errors show
/// the command the user typed.
pub fn command_for(argv0: Option<&std::ffi::OsStr>) -> clap::Command {
    use clap::CommandFactory;
    let command = Cli::command();
    let plugin = argv0
        .and_then(|arg| std::path::Path::new(arg).file_stem())
        .is_some_and(|stem| stem == KUBECTL_PLUGIN);
    if plugin {
        command.name("kubectl sidecar").bin_name("kubectl sidecar")
    } else {
        command
    }
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true).args(["policies", "delete_policies", "delete_cluster_policies"]))]
pub struct PlanArgs {
    /// New or changed SidecarPolicy and ClusterSidecarPolicy file(s); repeat the flag or give
    /// several files. `-` reads standard input.
    #[arg(long = "policy", short = 'p', value_name = "FILE", num_args = 1..)]
    pub policies: Vec<PathBuf>,

    /// A SidecarPolicy to delete: NAME (in --namespace, or the context's namespace) or
    /// NAMESPACE/NAME. Repeat for several.
    #[arg(long = "delete-policy", value_name = "[NAMESPACE/]NAME")]
    pub delete_policies: Vec<crate::plan_cmd::PolicyName>,

    /// A ClusterSidecarPolicy to delete. Repeat for several.
    #[arg(long = "delete-cluster-policy", value_name = "NAME", value_parser = crate::plan_cmd::parse_cluster_policy_name)]
    pub delete_cluster_policies: Vec<String>,

    /// Plan only this namespace's Deployments (default: all namespaces); also the namespace of
    /// documents and --delete-policy names that name none.
    #[arg(long, short = 'n', value_name = "NAMESPACE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub namespace: Option<String>,

    /// Also print a unified diff per changed Deployment: current policies' render against the
    /// planned one.
    #[arg(long)]
    pub diff: bool,

    #[command(flatten)]
    pub exclusions: ExclusionArgs,

    #[command(flatten)]
    pub guardrails: GuardrailArgs,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The kind of object to explain.
    #[arg(value_enum)]
    pub kind: ExplainKind,

    /// The Deployment's name.
    pub name: String,

    /// The Deployment's namespace (default: the kubeconfig context's namespace).
    #[arg(long, short = 'n', value_name = "NAMESPACE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub namespace: Option<String>,

    #[command(flatten)]
    pub exclusions: ExclusionArgs,

    #[command(flatten)]
    pub guardrails: GuardrailArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExplainKind {
    /// A Deployment (also `deploy`, `deployments`).
    #[value(name = "deployment", aliases = ["deploy", "deployments"])]
    Deployment,
}

#[derive(Debug, Args)]
pub struct CrdArgs {
    /// Which kind's CRD to print.
    #[arg(long, value_enum, default_value_t = CrdKind::SidecarPolicy)]
    pub kind: CrdKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CrdKind {
    /// `sidecarpolicies.sidecar.dev` (namespaced).
    #[value(name = "SidecarPolicy")]
    SidecarPolicy,
    /// `clustersidecarpolicies.sidecar.dev` (cluster-scoped).
    #[value(name = "ClusterSidecarPolicy")]
    ClusterSidecarPolicy,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Watch only this namespace; repeat for several. Default: all namespaces.
    #[arg(long = "namespace", short = 'n', value_name = "NAMESPACE")]
    pub namespaces: Vec<String>,

    #[command(flatten)]
    pub exclusions: ExclusionArgs,

    /// Where ClusterSidecarPolicies' revisions (ControllerRevisions) are stored: the operator's
    /// own namespace.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = crate::controller::DEFAULT_REVISION_NAMESPACE
    )]
    pub revision_namespace: String,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Run the controllers only while holding a Lease, so that several replicas are safe.
    #[arg(long)]
    pub leader_election: bool,

    /// Namespace of the leader-election Lease.
    #[arg(
        long,
        value_name = "NAMESPACE",
        env = "POD_NAMESPACE",
        default_value = "default"
    )]
    pub leader_election_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "sidecar-operator")]
    pub leader_election_lease: String,

    /// How many Deployments are reconciled (and written) at once.
    #[arg(long, value_name = "N", default_value_t = crate::controller::DEFAULT_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// How long a Deployment held at admission (see the admission-hold install component) may
    /// wait for a render that keeps failing before it is released without its sidecars, with a
    /// Warning Event. A render that is refused releases it at once.
    #[arg(long, value_name = "SECONDS", default_value_t = crate::controller::DEFAULT_MAX_HOLD.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub max_hold_seconds: u64,

    /// Address of the /healthz, /readyz and /metrics endpoint.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: std::net::SocketAddr,

    #[command(flatten)]
    pub guardrails: GuardrailArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// SidecarPolicy or ClusterSidecarPolicy file(s); repeat the flag or give several files. `-`
    /// reads standard input. Optional when the --deployment input holds the policies.
    #[arg(long = "policy", short = 'p', value_name = "FILE", num_args = 1..)]
    pub policies: Vec<PathBuf>,

    /// File with the Deployment(s) to render, and possibly SidecarPolicies and other objects.
    /// `-` reads standard input.
    #[arg(long, short = 'd', value_name = "FILE")]
    pub deployment: PathBuf,

    /// Namespace of the documents that name none (as kubectl's -n); documents that name one keep
    /// it. Default: `default`.
    #[arg(long, short = 'n', value_name = "NAMESPACE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub namespace: Option<String>,

    /// Print a unified diff against the input instead of the rendered Deployments.
    #[arg(long)]
    pub diff: bool,

    #[command(flatten)]
    pub exclusions: ExclusionArgs,

    #[command(flatten)]
    pub guardrails: GuardrailArgs,
}

/// Where no ClusterSidecarPolicy injects: the operator's flag, and the same for the commands that
/// predict what it does.
#[derive(Debug, Clone, Default, Args)]
pub struct ExclusionArgs {
    /// A namespace where no ClusterSidecarPolicy injects, whatever its namespaceSelector; repeat
    /// for several (replaces the default). `run` also excludes its own namespace
    /// (`POD_NAMESPACE`).
    #[arg(
        long = "exclude-namespace",
        value_name = "NAMESPACE",
        default_value = "kube-system"
    )]
    pub exclude_namespaces: Vec<String>,
}

impl ExclusionArgs {
    pub fn to_exclusions(&self) -> sidecar_core::cluster::Exclusions {
        sidecar_core::cluster::Exclusions::new(self.exclude_namespaces.iter().cloned())
    }
}

/// Which privileged asks a SidecarPolicy may make. Everything is refused unless allowed here.
#[derive(Debug, Clone, Default, Args)]
pub struct GuardrailArgs {
    /// Allow injected containers to run privileged (securityContext.privileged: true).
    #[arg(long)]
    pub allow_privileged: bool,

    /// Allow hostPath volumes, which expose the node's filesystem.
    #[arg(long)]
    pub allow_host_path: bool,

    /// Allow injected containers to run as root (runAsUser: 0 or runAsNonRoot: false).
    #[arg(long)]
    pub allow_run_as_root: bool,

    /// Allow injected containers to add this Linux capability (e.g. NET_ADMIN). Repeat or separate
    /// with commas.
    #[arg(long = "allow-capability", value_name = "CAP", value_delimiter = ',')]
    pub allow_capabilities: Vec<String>,
}

impl GuardrailArgs {
    pub fn to_guardrails(&self) -> Guardrails {
        let mut guardrails = Guardrails {
            allow_privileged: self.allow_privileged,
            allow_host_path: self.allow_host_path,
            allow_run_as_root: self.allow_run_as_root,
            ..Guardrails::default()
        };
        for capability in &self.allow_capabilities {
            guardrails.allow_capability(capability);
        }
        guardrails
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guardrail_flags_map_to_settings() {
        let cli = Cli::parse_from([
            "sidecar-operator",
            "render",
            "--policy",
            "p.yaml",
            "--deployment",
            "d.yaml",
            "--allow-host-path",
            "--allow-capability",
            "net_admin,CAP_NET_RAW",
            "--allow-capability=SYS_PTRACE",
        ]);
        let Command::Render(args) = cli.command else {
            panic!("expected render")
        };
        let g = args.guardrails.to_guardrails();
        assert!(g.allow_host_path && !g.allow_privileged && !g.allow_run_as_root);
        let caps: Vec<_> = g.allowed_capabilities.iter().map(String::as_str).collect();
        assert_eq!(caps, ["NET_ADMIN", "NET_RAW", "SYS_PTRACE"]);
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
