//! The command line: flags, errors a user can make, and `mob chat`.

mod util;

use std::io::Write;
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::time::Duration;

use util::{mob, Output, Server};

fn fails_with(args: &[&str], needle: &str) {
    // A server that starts instead of refusing would run for ever: give it a deadline.
    let mut child = mob()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mob");
    let stderr = Output::default();
    let collected = stderr.clone().collect(child.stderr.take().unwrap());
    let status = util::wait_exit(&mut child, util::DEADLINE);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = collected.join();
    assert!(
        status.is_some_and(|s| !s.success()),
        "mob {args:?} should fail at once, not {status:?}"
    );
    let stderr = stderr.text();
    assert!(
        stderr.contains(needle),
        "mob {args:?}: expected {needle:?} in:\n{stderr}"
    );
}

#[test]
fn bad_sizes_protocols_and_durations_are_explained() {
    fails_with(&["serve", "--max-message", "12parsecs"], "unknown unit");
    fails_with(&["serve", "--max-pending", "lots"], "expected a number");
    fails_with(
        &["serve", "--protocol", "http"],
        "possible values: raw, line, frame",
    );
    fails_with(&["serve", "--slow-consumer", "ignore"], "disconnect, drop");
    fails_with(
        &["serve", "--log-format", "yaml"],
        "invalid value 'yaml' for '--log-format",
    );
    fails_with(&["serve", "--idle-timeout", "soon"], "expected seconds");
    fails_with(
        &["serve", "--listen", "localhost"],
        "invalid socket address",
    );
}

#[test]
fn extreme_settings_are_refused_not_wrapped_or_panicked_on() {
    fails_with(&["serve", "--shutdown-timeout", "1e19"], "a year");
    fails_with(&["serve", "--idle-timeout", "1e300"], "a year");
    fails_with(&["serve", "--idle-timeout=-1"], "expected 0 to");
    fails_with(
        &["serve", "--max-message", "17179869183GiB"],
        "--max-message",
    );
    fails_with(
        &["serve", "--max-connections", &usize::MAX.to_string()],
        "--max-connections",
    );
    fails_with(&["serve", "--max-connections", "0"], "--max-connections");
    fails_with(
        &["serve", "--threads", "0"],
        "--threads 0 must be between 1 and 256",
    );
    fails_with(
        &["serve", "--threads", "257"],
        "--threads 257 must be between 1 and 256",
    );
}

#[test]
fn a_port_in_use_is_reported_with_the_address() {
    let server = Server::start(&[]);
    let addr = server.addr.to_string();
    fails_with(
        &["serve", "--listen", &addr],
        &format!("cannot listen on {addr}"),
    );
}

#[test]
fn json_logs_are_one_object_a_line_with_the_fields_as_keys() {
    let server = Server::start(&["--log-format", "json", "--max-message", "16"]);
    let mut client = server.connect();
    let peer = client.local_addr().to_string();
    client.send(b"this line is far longer than sixteen bytes\n");
    client.read_to_close();
    let line = server.log.wait_for(&[&peer, "disconnected"]);
    let event: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(event["level"], "WARN", "{line}");
    assert_eq!(event["peer"], peer.as_str(), "{line}");
    assert!(
        event["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("mob::")),
        "{line}"
    );
    let message = event["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("exceeds the limit of 16 bytes"),
        "no reason in the message: {line}"
    );
    // The numbers stay numbers, for a shipper to sum or compare.
    assert!(event["suppressed"].is_u64(), "{line}");
    for line in server.log.text().lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "a stderr line that is not a JSON object: {line}"
        );
    }
}

#[test]
fn chat_prints_what_others_send_and_sends_what_is_typed() {
    for protocol in ["line", "frame"] {
        let server = Server::start(&["--protocol", protocol]);
        let (mut chat, printed, mut stdin) = chat(&server, protocol);
        // The chat's own first line proves it is connected before the other client sends.
        stdin.write_all(b"hello from chat\n").unwrap();
        printed.wait_for(&["hello from chat"]);
        let mut other = server.connect();
        stdin.write_all(b"second\n").unwrap();
        let frame = protocol == "frame";
        let from_chat = if frame {
            other.read_frame()
        } else {
            other.read_line()
        };
        assert_eq!(from_chat, b"second");
        if frame {
            other.send_frame(b"hi from nc");
        } else {
            other.send(b"hi from nc\n");
        }
        printed.wait_for(&["hi from nc"]);
        // End of stdin: the chat exits cleanly.
        drop(stdin);
        assert!(wait_exit(&mut chat).success());
    }
}

#[test]
fn chat_exits_when_the_server_closes() {
    let mut server = Server::start(&[]);
    let (mut chat, printed, mut stdin) = chat(&server, "line");
    stdin.write_all(b"connected\n").unwrap();
    printed.wait_for(&["connected"]);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(10)).success());
    assert!(wait_exit(&mut chat).success());
}

/// Starts `mob chat` against `server`: the process, what it prints, and its stdin.
fn chat(server: &Server, protocol: &str) -> (Child, Output, ChildStdin) {
    let mut chat = mob()
        .args(["chat", &server.addr.to_string(), "--protocol", protocol])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mob chat");
    let printed = Output::default();
    printed.clone().collect(chat.stdout.take().unwrap());
    let stdin = chat.stdin.take().unwrap();
    (chat, printed, stdin)
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    util::wait_exit(child, util::DEADLINE).expect("mob chat did not exit")
}

/// A config file with `contents` in the test's temporary directory.
fn config_file(name: &str, contents: &str) -> String {
    let dir = std::env::temp_dir().join(format!("mob-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn a_config_file_sets_flags_and_the_command_line_overrides_it() {
    let file = config_file(
        "limits.toml",
        "max-message = \"16\"\nno-echo-self = false\n",
    );
    // From the file: a 20-byte line is over the limit.
    let server = Server::start(&["--config", &file]);
    let mut c = server.connect();
    c.send(b"twenty bytes long..\n");
    let _ = c.read_until_closed();
    server.log.wait_for(&["exceeds the limit of 16 bytes"]);
    // The command line wins over the file.
    let server = Server::start(&["--config", &file, "--max-message", "64"]);
    let mut c = server.connect();
    c.send(b"twenty bytes long..\n");
    c.expect(b"twenty bytes long..\n");
    // A switch the file turns on, the command line can turn off.
    let on = config_file("on.toml", "no-echo-self = true\nidle-timeout = 0.5\n");
    let server = Server::start(&["--config", &on, "--no-echo-self=false"]);
    let mut c = server.connect();
    c.send(b"mine\n");
    c.expect(b"mine\n");
}

#[test]
fn config_files_with_unknown_keys_bad_values_or_no_file_are_refused_naming_them() {
    let unknown = config_file("unknown.toml", "max-pendign = \"8MiB\"\n");
    fails_with(
        &["serve", "--config", &unknown],
        "unknown key `max-pendign`",
    );
    let bad = config_file("bad.toml", "max-pending = \"lots\"\n");
    fails_with(&["serve", "--config", &bad], "--max-pending");
    let switch = config_file("switch.toml", "no-echo-self = \"yes\"\n");
    fails_with(&["serve", "--config", &switch], "--no-echo-self");
    // A value starting with `-` is a value, and its error names the flag.
    let negative = config_file("negative.toml", "threads = -1\n");
    fails_with(&["serve", "--config", &negative], "--threads");
    // Fractions only where a duration takes them.
    let fraction = config_file("fraction.toml", "threads = 2.0\n");
    fails_with(
        &["serve", "--config", &fraction],
        "`threads` takes a string, a whole number",
    );
    let list = config_file("list.toml", "threads = [1, 2]\n");
    fails_with(
        &["serve", "--config", &list],
        "`threads` takes one value, not a list",
    );
    let broken = config_file("broken.toml", "threads = \n");
    fails_with(&["serve", "--config", &broken], "broken.toml");
    fails_with(
        &["serve", "--config", "/nonexistent/mob.toml"],
        "/nonexistent/mob.toml",
    );
}

/// The example file in the repository names every flag of `mob serve` and starts a server.
#[test]
fn the_example_config_file_covers_every_flag_and_works() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/dist/mob.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let help = mob().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| {
            w.split('[')
                .next()
                .unwrap_or(w)
                .trim_end_matches([',', '.'])
        })
        .filter(|w| !w.is_empty() && !["help", "config"].contains(w))
        .collect();
    assert!(flags.len() >= 14, "flags read from --help: {flags:?}");
    for flag in flags {
        let named = text.lines().any(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            l.starts_with(&format!("{flag} =")) || l.starts_with(&format!("{flag}="))
        });
        assert!(named, "dist/mob.toml does not name --{flag}");
    }
    // And the values of the lines left commented out are good too (on free ports); not the
    // TLS files, which are not on this machine (tests/tls.rs starts servers with real ones),
    // nor the cluster's Redis (tests/cluster.rs starts its own).
    let uncommented: String = text
        .lines()
        .map(|l| {
            l.strip_prefix("# ")
                .filter(|l| {
                    l.contains(" = ") && !l.starts_with("tls-") && !l.starts_with("cluster ")
                })
                .unwrap_or(l)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    // Files it names are made here.
    let token = config_file("token", "example-token\n");
    let uncommented = uncommented.replace("/etc/mob/token", &token);
    let every = config_file("every.toml", &uncommented);
    for example in [example, every.as_str()] {
        let server = Server::start(&[
            "--config",
            example,
            "--http",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ]);
        let mut c = server.connect();
        if example == every {
            c.send(b"example-token\n");
        }
        c.send(b"configured\n");
        c.expect(b"configured\n");
    }
}
