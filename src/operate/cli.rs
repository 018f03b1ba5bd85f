//! The command line. `push-to-k8s` alone runs the controller; `status` and
//! `plan` take one read-only look at the configured cluster (see
//! [`crate::inspect`]). Three commands and two options: parsed by hand, no
//! argument-parsing dependency. Every command reads its settings from the
//! same environment variables as the controller.

use std::ffi::OsString;

/// How `status` and `plan` print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// For people: a table and a summary line.
    #[default]
    Text,
    /// For machines: one JSON document.
    Json,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the controller (no arguments).
    Daemon,
    /// Is every copy in sync? `verbose` names the namespaces.
    Status { verbose: bool, output: Output },
    /// The writes the controller would make now.
    Plan { output: Output },
    /// Print [`USAGE`].
    Help,
}

/// A command line that does not parse: one line, exit status 2.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0} (see push-to-k8s --help)")]
pub struct UsageError(String);

pub const USAGE: &str = "\
push-to-k8s: keeps labelled Secrets and ConfigMaps of one namespace copied into the others

Usage:
  push-to-k8s                                    run the controller
  push-to-k8s status [-v|--verbose] [-o text|json]
                                                 is every copy in sync? (writes nothing)
  push-to-k8s plan [-o text|json]                the writes the controller would make now (writes nothing)
  push-to-k8s --help

Options:
  -v, --verbose         status: name the namespaces in each state
  -o, --output FORMAT   text (default) or json

Every command reads the controller's environment variables (NAMESPACE,
KUBECONFIG, EXCLUDE_NAMESPACE_LABEL, ...; see the README), so status and plan
see the cluster exactly as a controller with that environment would.

Exit status: 0 success (status: everything in sync), 1 status: not in sync,
2 bad usage or a bad setting, 3 the cluster could not be read.
";

/// Parse the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, UsageError> {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| {
            a.into_string()
                .map_err(|a| UsageError(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect::<Result<_, _>>()?;
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Command::Help);
    }
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Daemon);
    };
    let mut verbose = false;
    let mut output = Output::Text;
    let mut rest = rest.iter();
    while let Some(arg) = rest.next() {
        let value = match arg.as_str() {
            "-v" | "--verbose" if command == "status" => {
                verbose = true;
                continue;
            }
            "-o" | "--output" => Some(
                rest.next()
                    .ok_or_else(|| UsageError(format!("{arg} needs a value: text or json")))?
                    .as_str(),
            ),
            a => a
                .strip_prefix("--output=")
                .or_else(|| a.strip_prefix("-o=").or_else(|| a.strip_prefix("-o")))
                .filter(|v| !v.is_empty()),
        };
        let Some(value) = value else {
            return Err(unexpected(command, arg));
        };
        if command != "status" && command != "plan" {
            return Err(unexpected(command, arg));
        }
        output = match value {
            "text" => Output::Text,
            "json" => Output::Json,
            other => {
                return Err(UsageError(format!(
                    "invalid output format {other:?}: must be text or json"
                )));
            }
        };
    }
    match command.as_str() {
        "status" => Ok(Command::Status { verbose, output }),
        "plan" => Ok(Command::Plan { output }),
        "help" => Ok(Command::Help),
        other => Err(UsageError(format!(
            "unknown command {other:?}: the commands are status and plan (none runs the controller)"
        ))),
    }
}

fn unexpected(command: &str, arg: &str) -> UsageError {
    match command {
        "status" | "plan" | "help" => UsageError(format!("unknown option {arg:?} for {command}")),
        other => UsageError(format!(
            "unknown command {other:?}: the commands are status and plan (none runs the controller)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(args: &[&str]) -> Result<Command, UsageError> {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn commands_and_options_parse() {
        use Output::*;
        let status = |verbose, output| Ok(Command::Status { verbose, output });
        let cases: &[(&[&str], Result<Command, UsageError>)] = &[
            (&[], Ok(Command::Daemon)),
            (&["status"], status(false, Text)),
            (&["status", "--verbose"], status(true, Text)),
            (&["status", "-v", "-o", "json"], status(true, Json)),
            (&["status", "-o", "json", "-v"], status(true, Json)),
            (&["status", "-ojson"], status(false, Json)),
            (&["status", "-o=json"], status(false, Json)),
            (&["status", "--output", "json"], status(false, Json)),
            (&["status", "--output=json"], status(false, Json)),
            // The last of repeated options wins, as with kubectl.
            (&["status", "-o", "json", "-o", "text"], status(false, Text)),
            (&["plan"], Ok(Command::Plan { output: Text })),
            (&["plan", "-o", "json"], Ok(Command::Plan { output: Json })),
            (
                &["plan", "--output=text"],
                Ok(Command::Plan { output: Text }),
            ),
            (&["--help"], Ok(Command::Help)),
            (&["-h"], Ok(Command::Help)),
            (&["help"], Ok(Command::Help)),
            (&["status", "--help"], Ok(Command::Help)),
            (&["plan", "--bogus", "-h"], Ok(Command::Help)),
        ];
        for (args, want) in cases {
            assert_eq!(&parse_str(args), want, "{args:?}");
        }
    }

    #[test]
    fn bad_usage_is_one_line_naming_the_problem() {
        let cases: &[(&[&str], &str)] = &[
            (&["stauts"], "unknown command \"stauts\""),
            (&["--verbose"], "unknown command \"--verbose\""),
            (
                &["status", "--bogus"],
                "unknown option \"--bogus\" for status",
            ),
            (&["status", "extra"], "unknown option \"extra\" for status"),
            (&["plan", "-v"], "unknown option \"-v\" for plan"),
            (
                &["plan", "--verbose"],
                "unknown option \"--verbose\" for plan",
            ),
            (&["status", "-o"], "-o needs a value: text or json"),
            (
                &["plan", "--output"],
                "--output needs a value: text or json",
            ),
            (&["status", "-o", "yaml"], "invalid output format \"yaml\""),
            (
                &["plan", "--output="],
                "unknown option \"--output=\" for plan",
            ),
            (&["help", "-o", "json"], "unknown option \"-o\" for help"),
            (&["nope", "-o", "json"], "unknown command \"nope\""),
        ];
        for (args, want) in cases {
            let e = parse_str(args).expect_err(&format!("{args:?} must not parse"));
            let text = e.to_string();
            assert!(text.contains(want), "{args:?}: {text}");
            assert!(text.ends_with("(see push-to-k8s --help)"), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    #[test]
    fn arguments_that_are_not_utf8_are_bad_usage() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b's', 0xff]);
        let e = parse([OsString::from("status"), bad]).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }
}
