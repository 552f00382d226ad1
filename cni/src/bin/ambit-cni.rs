//! The CNI plugin binary: a container runtime runs it with CNI_* variables and
//! the network configuration on stdin.

use std::io::{Read, Write};
use std::path::Path;

use ambit_cni::policy::{self, Verdict};
use ambit_cni::protocol::{self, PodSandbox, Request, Response};
use ambit_cni::spec::{self, code, CniError, Command, Invocation};
use serde_json::Value;

fn main() {
    let mut stdin = Vec::new();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|error| CniError::new(code::IO_FAILURE, "reading stdin", error.to_string()))
        .and_then(|_| spec::parse(|name| std::env::var(name).ok(), &stdin))
        .and_then(|invocation| {
            run(&invocation).map_err(|error| error.in_version(&invocation.cni_version))
        });
    let (printed, status) = match outcome {
        Ok(Some(result)) => (Some(result), 0),
        Ok(None) => (None, 0),
        Err(error) => (serde_json::to_value(&error).ok(), 1),
    };
    if let Some(value) = printed {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{value}");
    }
    std::process::exit(status);
}

/// Carries out one invocation; returns what to print on success.
fn run(invocation: &Invocation) -> Result<Option<Value>, CniError> {
    match invocation.command {
        Command::Version => Ok(Some(spec::version_result(&invocation.cni_version))),
        Command::Status | Command::Gc => Ok(None),
        Command::Add => {
            if let Some(sandbox) = sandbox(invocation) {
                match ask(invocation, &Request::Add(sandbox.clone())) {
                    Err(Unreachable(error)) => {
                        judged(invocation, &sandbox, error)?;
                        // Started without the agent: it takes the pod on
                        // when it comes up, and enrolls it if it should.
                        if let Err(error) = policy::hand_over(agent_dir(invocation), &sandbox) {
                            eprintln!("ambit-cni: handing {} over: {error}", sandbox.pod);
                        }
                    }
                    Ok(result) => result?,
                }
            }
            Ok(Some(invocation.add_result()))
        }
        Command::Check => {
            if let Some(sandbox) = sandbox(invocation) {
                match ask(invocation, &Request::Check(sandbox.clone())) {
                    Err(Unreachable(error)) => judged(invocation, &sandbox, error)?,
                    Ok(result) => result?,
                }
            }
            Ok(None)
        }
        Command::Del => {
            if let Some(pod) = invocation.pod.clone() {
                let request = Request::Del {
                    pod,
                    container_id: invocation.container_id.clone(),
                };
                // DEL must not fail for what is already gone: an agent that is
                // down forgets pods whose namespace has disappeared on start.
                let error = match ask(invocation, &request) {
                    Ok(Ok(())) => None,
                    Ok(Err(error)) | Err(Unreachable(error)) => Some(error),
                };
                if let Some(error) = error {
                    eprintln!("ambit-cni: DEL: {error}");
                }
            }
            Ok(None)
        }
    }
}

/// The pod sandbox of an ADD or CHECK; `None` for a sandbox that is not a
/// Kubernetes pod, which Ambit leaves alone.
fn sandbox(invocation: &Invocation) -> Option<PodSandbox> {
    Some(PodSandbox {
        pod: invocation.pod.clone()?,
        container_id: invocation.container_id.clone(),
        netns: invocation.netns.clone()?,
        ips: invocation.pod_ips(),
    })
}

/// The agent could not be reached: the error to give if the pod must wait.
struct Unreachable(CniError);

/// The agent's answer to `request`: its verdict, or that it is unreachable.
fn ask(invocation: &Invocation, request: &Request) -> Result<Result<(), CniError>, Unreachable> {
    Ok(match protocol::call(&invocation.agent_socket, request) {
        Ok(Response::Ok { .. }) => Ok(()),
        Ok(Response::Error { message }) => Err(CniError::new(
            code::AGENT_REFUSED,
            "the node agent refused the pod",
            message,
        )),
        Err(error @ protocol::ProtocolError::Unreachable { .. }) => {
            return Err(Unreachable(CniError::new(
                code::TRY_AGAIN_LATER,
                "the node agent is not reachable",
                error.to_string(),
            )))
        }
        Err(error) => Err(CniError::new(
            code::IO_FAILURE,
            "talking to the node agent",
            error.to_string(),
        )),
    })
}

/// With the agent unreachable: `Ok` for a pod that may start now, else
/// `unreachable` with why the pod waits.
fn judged(
    invocation: &Invocation,
    sandbox: &PodSandbox,
    unreachable: CniError,
) -> Result<(), CniError> {
    let recorded = policy::read_policy(agent_dir(invocation));
    let exempt = &invocation.exempt_namespaces;
    match policy::judge(recorded.as_ref(), exempt, &sandbox.pod) {
        Verdict::Start => Ok(()),
        Verdict::Retry(why) => Err(CniError {
            details: format!("{}; {why}", unreachable.details),
            ..unreachable
        }),
    }
}

/// Where the agent keeps its record and takes pods handed over: beside
/// its socket.
fn agent_dir(invocation: &Invocation) -> &Path {
    invocation.agent_socket.parent().unwrap_or(Path::new("/"))
}
