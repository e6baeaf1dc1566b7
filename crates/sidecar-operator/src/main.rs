use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::FromArgMatches;
use sidecar_operator::cli::{self, Cli, Command, CrdKind, ExplainArgs, LogFormat, PlanArgs, RunArgs};

use sidecar_core::cluster::Exclusions;
use sidecar_operator::controller::{self, Scope};
use sidecar_operator::leader::{self, Election};
use sidecar_operator::plan_cmd::{self, PlanError};
use sidecar_operator::{cluster_state, crd, explain_cmd, http, render_cmd};

/// Exit codes, as documented in `render --help`.
const BAD_INPUT: u8 = 1;
const REFUSED: u8 = 2;
/// `run` ends when another replica took the Lease: restart and stand by.
const LOST_LEADERSHIP: u8 = 3;

fn main() -> ExitCode {
    // As the kubectl plugin (`kubectl-sidecar`), help and errors say `kubectl sidecar`.
    let argv0 = std::env::args_os().next();
    let parsed = cli::command_for(argv0.as_deref())
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        // A usage error is bad input (exit code 1, as documented); 2 means refused.
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(BAD_INPUT);
        }
        // --help and --version.
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Plan(args) => plan(&args),
        Command::Explain(args) => explain(&args),
        Command::Render(args) => match render_cmd::run(&args, std::io::stdin().lock()) {
            Ok(render_cmd::Outcome::Rendered {
                output,
                warnings,
                notes,
            }) => {
                report(&warnings, &notes);
                print(&output)
            }
            Ok(render_cmd::Outcome::Refused {
                refusals,
                warnings,
                notes,
            }) => {
                report(&warnings, &notes);
                for refusal in &refusals {
                    eprintln!("error: refusing to render Deployment {:?}:", refusal.deployment);
                    for problem in &refusal.problems {
                        eprintln!("error:   {problem}");
                    }
                }
                ExitCode::from(REFUSED)
            }
            Err(e) => fail(&e),
        },
        Command::Run(args) => run(&args),
        Command::Crd(args) => {
            let yaml = match args.kind {
                CrdKind::SidecarPolicy => crd::crd_yaml(),
                CrdKind::ClusterSidecarPolicy => crd::cluster_crd_yaml(),
            };
            match yaml {
                Ok(yaml) => print(&yaml),
                Err(e) => fail(&e),
            }
        }
    }
}

/// A render's warnings and notes, on standard error.
fn report(warnings: &[String], notes: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    for note in notes {
        eprintln!("note: {note}");
    }
}

/// Logs of the read-only commands: warnings only unless RUST_LOG says otherwise, on standard
/// error, so that standard output is the report alone.
fn quiet_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn current_thread() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn plan(args: &PlanArgs) -> ExitCode {
    quiet_logs();
    // The files first: a mistake in them is reported without a cluster.
    let files = match plan_cmd::read_policy_files(&args.policies, std::io::stdin().lock()) {
        Ok(files) => files,
        Err(e) => return fail(&e),
    };
    let runtime = match current_thread() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let result: Result<(plan_cmd::PlanReport, Vec<String>), PlanError> = runtime.block_on(async {
        // Without -n, the namespace of documents that name none is the kubeconfig context's.
        let (client, namespace) = match &args.namespace {
            Some(namespace) => (None, namespace.clone()),
            None => {
                let client = cluster_state::connect().await?;
                let namespace = client.default_namespace().to_owned();
                (Some(client), namespace)
            }
        };
        let mut notes = files.notes.clone();
        let changes = files.changes(&namespace, &args.delete_policies, &args.delete_cluster_policies)?;
        let client = match client {
            Some(client) => client,
            None => cluster_state::connect().await?,
        };
        let state = cluster_state::fetch(&client, args.namespace.as_deref()).await?;
        let options = plan_cmd::Options {
            guardrails: args.guardrails.to_guardrails(),
            exclusions: args.exclusions.to_exclusions(),
            namespace: args.namespace.clone(),
        };
        let report = plan_cmd::plan(&state, &changes, &options);
        notes.extend(report.notes.iter().cloned());
        Ok((report, notes))
    });
    let (planned, notes) = match result {
        Ok(done) => done,
        Err(e) => return fail(&e),
    };
    report(&planned.warnings, &notes);
    let text = match planned.text(args.diff) {
        Ok(text) => text,
        Err(e) => return fail(&e),
    };
    let printed = print(&text);
    let refused = planned.refused();
    if refused > 0 {
        eprintln!(
            "error: the change would make the operator refuse {refused} Deployment{}",
            if refused == 1 { "" } else { "s" }
        );
        return ExitCode::from(REFUSED);
    }
    printed
}

fn explain(args: &ExplainArgs) -> ExitCode {
    quiet_logs();
    let runtime = match current_thread() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    let result: Result<(String, Vec<String>), Box<dyn std::error::Error>> = runtime.block_on(async {
        let client = cluster_state::connect().await?;
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let state = cluster_state::fetch_deployment(&client, &namespace, &args.name).await?;
        let options = plan_cmd::Options {
            guardrails: args.guardrails.to_guardrails(),
            exclusions: args.exclusions.to_exclusions(),
            namespace: None,
        };
        let text = explain_cmd::explain(&state, &namespace, &args.name, &options)?;
        Ok((text, state.notes))
    });
    match result {
        Ok((text, notes)) => {
            report(&[], &notes);
            print(&text)
        }
        Err(e) => fail(e.as_ref()),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&e),
    };
    runtime.block_on(async {
        let client = match kube::Client::try_default().await {
            Ok(client) => client,
            Err(e) => return fail(&e),
        };
        let listener = match tokio::net::TcpListener::bind(args.http_addr).await {
            Ok(listener) => listener,
            Err(e) => return fail(&e),
        };
        let health = http::Health::default();
        serve(listener, health.clone());

        // Leader election: a standby replica is healthy and ready to take over.
        let mut leadership = None;
        if args.leader_election {
            let election = Election {
                namespace: args.leader_election_namespace.clone(),
                lease: args.leader_election_lease.clone(),
                identity: leader::default_identity(),
            };
            health.ready.store(true, Ordering::Relaxed);
            match leader::acquire(client.clone(), &election).await {
                Ok(held) => leadership = Some(held),
                Err(e) => return fail(&e),
            }
            health.ready.store(false, Ordering::Relaxed);
        }

        let guardrails = args.guardrails.to_guardrails();
        let namespaces: Vec<Option<&str>> = if args.namespaces.is_empty() {
            vec![None]
        } else {
            args.namespaces.iter().map(|ns| Some(ns.as_str())).collect()
        };
        let mut excluded = args.exclusions.exclude_namespaces.clone();
        excluded.extend(std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()));
        let cluster = controller::ClusterOptions {
            exclusions: Exclusions::new(excluded),
            revision_namespace: args.revision_namespace.clone(),
        };
        let mut scopes = Vec::new();
        for namespace in namespaces {
            scopes.push(
                Scope::new(
                    client.clone(),
                    namespace,
                    guardrails.clone(),
                    health.metrics.clone(),
                    args.concurrency,
                    Duration::from_secs(args.max_hold_seconds),
                    cluster.clone(),
                )
                .await,
            );
        }
        health.watch(scopes.iter().map(Scope::context).collect());
        let holding = controller::admission_hold_active(&client, &args.namespaces).await;
        health.metrics.set_hold_active(holding);
        let caches_filled = futures::future::join_all(scopes.iter().map(Scope::ready));
        let ready = health.ready.clone();
        tokio::spawn(async move {
            caches_filled.await;
            ready.store(true, Ordering::Relaxed);
        });

        let controllers = futures::future::join_all(scopes.into_iter().map(Scope::run));
        match leadership {
            None => {
                controllers.await;
                ExitCode::SUCCESS
            }
            Some(mut held) => tokio::select! {
                _ = controllers => ExitCode::SUCCESS,
                () = held.lost() => {
                    tracing::error!("lost the leader-election Lease; exiting so that another replica takes over");
                    ExitCode::from(LOST_LEADERSHIP)
                }
            },
        }
    })
}

/// Whether logs on `stream` may be coloured: only on a terminal (a file or a pipe would keep the
/// escape codes), and not when NO_COLOR is set to anything but empty (https://no-color.org).
fn colour(stream: &impl IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Serves /healthz, /readyz and /metrics in the background.
fn serve(listener: tokio::net::TcpListener, health: http::Health) {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, http::router(health)).await {
            tracing::error!("health and metrics endpoint stopped: {e}");
        }
    });
}

fn print(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not worth an error message.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::error::Error) -> ExitCode {
    let mut message = format!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(&format!(": {text}"));
        }
        source = cause.source();
    }
    eprintln!("{message}");
    ExitCode::from(BAD_INPUT)
}
