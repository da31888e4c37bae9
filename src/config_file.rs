//! `mob serve --config FILE`: the file's settings become flags placed before the command
//! line's own, so that those override them (`serve` takes the last of a flag given twice).
//!
//! [`flags`] is the parsing, from the file's text, with no I/O: the `config_file` fuzz target
//! (`crate::fuzzing`) runs it on any text. [`expand`] reads the file and places its flags.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::ArgAction;

use crate::cli;

/// Why a config file's text stands for no flags.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// Not TOML (the error says where).
    #[error(transparent)]
    Toml(#[from] toml::de::Error),
    /// A key that is no long flag of `mob serve` (or is `config` or `help`).
    #[error("unknown key `{0}` (keys are the long flags of `mob serve`, e.g. max-pending)")]
    UnknownKey(String),
    /// A value of a kind the key does not take: a list for a flag given once, a table, a
    /// date, or a fraction where no duration is meant.
    #[error("`{key}` takes {what}")]
    WrongKind {
        /// The key.
        key: String,
        /// What it takes instead.
        what: &'static str,
    },
}

/// Why `--config FILE` cannot be expanded; says which file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file cannot be read (or is not UTF-8).
    #[error("cannot read the config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file's text stands for no flags.
    #[error("config file {}", path.display())]
    Settings {
        /// The file.
        path: PathBuf,
        /// Why.
        source: SettingsError,
    },
}

/// `argv` with the settings of `--config FILE` (if `serve` has one) inserted after `serve`.
pub fn expand(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigFileError> {
    let Some(serve) = argv.get(1).filter(|a| *a == "serve").map(|_| 1) else {
        return Ok(argv);
    };
    let mut file = None;
    for (i, arg) in argv.iter().enumerate().skip(serve + 1) {
        if arg == "--" {
            break; // what follows is no flag
        }
        if arg == "--config" {
            file = argv.get(i + 1).cloned();
        } else if let Some(path) = arg.to_str().and_then(|a| a.strip_prefix("--config=")) {
            file = Some(path.into());
        }
    }
    let Some(file) = file else {
        return Ok(argv);
    };
    let path = Path::new(&file);
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.into(),
        source,
    })?;
    let flags = flags(&text).map_err(|source| ConfigFileError::Settings {
        path: path.into(),
        source,
    })?;
    let mut out = argv[..=serve].to_vec();
    out.extend(flags);
    out.extend(argv[serve + 1..].iter().cloned());
    Ok(out)
}

/// The flags a config file's text stands for (`--key=value`, one per key, one per item of a
/// list for a repeatable flag), checked against `mob serve`'s own. Their values are left to
/// clap and the flags' parsers, as on the command line.
pub fn flags(text: &str) -> Result<Vec<OsString>, SettingsError> {
    let table: toml::Table = text.parse()?;
    let serve = cli::serve_command();
    let mut flags = Vec::new();
    for (key, value) in &table {
        let arg = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config" && key != "help")
            .ok_or_else(|| SettingsError::UnknownKey(key.clone()))?;
        let repeatable = matches!(arg.get_action(), ArgAction::Append);
        // Only durations take fractions (`0.5`): elsewhere `2.0` is a wrong kind of value.
        let fractional = arg.get_value_names().is_some_and(|n| n == ["SECS"]);
        let wrong = |what| SettingsError::WrongKind {
            key: key.clone(),
            what,
        };
        // `--key=value`, one argument: a value starting with `-` stays a value, and any error
        // clap finds in it names the flag.
        let setting = |v: &toml::Value| -> Result<OsString, SettingsError> {
            let text = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) if fractional => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ if fractional => return Err(wrong("a number of seconds")),
                _ => return Err(wrong("a string, a whole number or true/false")),
            };
            Ok(format!("--{key}={text}").into())
        };
        match value {
            toml::Value::Array(items) if repeatable => {
                for item in items {
                    flags.push(setting(item)?);
                }
            }
            toml::Value::Array(_) => return Err(wrong("one value, not a list")),
            other => flags.push(setting(other)?),
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(flags: Vec<OsString>) -> Vec<String> {
        flags
            .into_iter()
            .map(|f| f.into_string().unwrap())
            .collect()
    }

    #[test]
    fn keys_become_long_flags_with_their_values_attached() {
        let text = "max-pending = \"8MiB\"\nthreads = -1\nidle-timeout = 0.5\n\
                    no-echo-self = true\nallowed-origin = [\"https://a\", \"-b\"]\n";
        assert_eq!(
            strings(flags(text).unwrap()),
            [
                "--allowed-origin=https://a",
                "--allowed-origin=-b",
                "--idle-timeout=0.5",
                "--max-pending=8MiB",
                "--no-echo-self=true",
                "--threads=-1",
            ]
        );
    }

    #[test]
    fn unknown_keys_and_wrong_kinds_are_refused_naming_the_key() {
        let error = |text| flags(text).unwrap_err().to_string();
        assert!(error("max-pendign = 1").contains("unknown key `max-pendign`"));
        assert!(error("config = \"x\"").contains("unknown key `config`"));
        assert!(error("help = true").contains("unknown key `help`"));
        assert!(error("threads = 2.0").contains("`threads` takes a string, a whole number"));
        assert!(error("threads = [1]").contains("`threads` takes one value, not a list"));
        assert!(error("idle-timeout = {a = 1}").contains("`idle-timeout` takes a number"));
        assert!(matches!(flags("threads = "), Err(SettingsError::Toml(_))));
    }

    #[test]
    fn the_command_line_overrides_the_file() {
        let argv = ["mob", "serve", "--threads=2", "--threads=3"];
        let matches = cli::serve_command()
            .try_get_matches_from(&argv[1..])
            .expect("a flag given twice takes the last");
        assert_eq!(matches.get_one::<usize>("threads"), Some(&3));
    }
}
