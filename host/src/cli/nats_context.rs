//! nats CLI contexts: the named connection settings `nats context save` writes, read so that
//! a user of the `nats` CLI reaches the same server with the same credentials from sandbus.
//!
//! The layout is the nats CLI's (jsm.go's `natscontext` file backend): one JSON file per
//! context at `$XDG_CONFIG_HOME/nats/context/NAME.json` (`~/.config/nats/...` when
//! `XDG_CONFIG_HOME` is unset), and the selected context's name in `.../nats/context.txt`.
//! Values are read as the nats CLI reads them: an empty string is unset, `~` and `$VAR` are
//! expanded in file paths, and a password or token may be `env://VAR` or `file://PATH`.
//!
//! Fields sandbus cannot honour (a JWT without its creds file, nsc lookups, a SOCKS proxy,
//! TLS-first, a JetStream domain or API prefix, Windows certificate stores, 1Password
//! references) are refused with [`ContextError::Unsupported`] rather than silently dropped:
//! connecting without them would reach the wrong place or fail in a confusing way. Cosmetic
//! fields (`description`, `color_scheme`) and `jetstream_event_prefix` (advisories, which
//! sandbus does not read) are ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use sandbus::bus::NatsOptions;

/// Why a nats context could not be used. Each message names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The named context (or the one `context.txt` selects) has no file.
    #[error(
        "no nats context `{name}`: {} does not exist; list the contexts with `nats context ls`",
        path.display()
    )]
    NotFound {
        /// The context's name.
        name: String,
        /// The file looked for.
        path: PathBuf,
    },
    /// The name cannot be a context's (empty, or with `..`, `/` or `\`).
    #[error("`{name}` is not a nats context name: {why}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Neither `XDG_CONFIG_HOME` nor `HOME` is set: there is nowhere to look.
    #[error(
        "cannot find the nats contexts: neither XDG_CONFIG_HOME nor HOME is set; \
         set one, or give the server with --server"
    )]
    NoConfigDir,
    /// The file (or a file it refers to) cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a nats context (not JSON, or a field of the wrong type).
    #[error("{} is not a nats context: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The context sets a field sandbus cannot honour.
    #[error("the nats context {} sets `{field}`, which sandbus cannot use: {fix}", path.display())]
    Unsupported {
        /// The context file.
        path: PathBuf,
        /// The JSON field.
        field: &'static str,
        /// What to do instead.
        fix: &'static str,
    },
    /// A password or token is `env://VAR`, and `VAR` is not set.
    #[error(
        "the nats context {} takes `{field}` from the environment variable {var}, which is not set",
        path.display()
    )]
    MissingVariable {
        /// The context file.
        path: PathBuf,
        /// The JSON field.
        field: &'static str,
        /// The variable named.
        var: String,
    },
}

/// Where the nats CLI keeps its contexts: `<config dir>/nats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextStore {
    root: PathBuf,
}

impl ContextStore {
    /// The store the nats CLI uses: under `$XDG_CONFIG_HOME`, else `$HOME/.config`.
    pub fn from_env() -> Result<Self, ContextError> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let config = match (var("XDG_CONFIG_HOME"), var("HOME")) {
            (Some(xdg), _) => PathBuf::from(xdg),
            (None, Some(home)) => PathBuf::from(home).join(".config"),
            (None, None) => return Err(ContextError::NoConfigDir),
        };
        Ok(Self::in_config_dir(&config))
    }

    /// The store under the configuration directory `config` (what `XDG_CONFIG_HOME` names).
    pub fn in_config_dir(config: &Path) -> Self {
        Self {
            root: config.join("nats"),
        }
    }

    /// The file of the context `name`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join("context").join(format!("{name}.json"))
    }

    /// The selected context's name (`context.txt`), or `None` when none is selected.
    pub fn selected(&self) -> Result<Option<String>, ContextError> {
        let path = self.root.join("context.txt");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text.trim().to_owned()).filter(|name| !name.is_empty())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ContextError::Read { path, source }),
        }
    }

    /// Reads a context, given as the nats CLI's `--context` takes it: a name, or the path of
    /// an existing `.json` file.
    pub fn load(&self, name_or_file: &str) -> Result<NatsContext, ContextError> {
        let as_file = Path::new(name_or_file);
        if name_or_file.ends_with(".json") && as_file.is_file() {
            return NatsContext::read(as_file);
        }
        check_name(name_or_file)?;
        let path = self.path(name_or_file);
        if !path.exists() {
            return Err(ContextError::NotFound {
                name: name_or_file.to_owned(),
                path,
            });
        }
        NatsContext::read(&path)
    }
}

/// The nats CLI's rule for a context's name (it is a file name).
fn check_name(name: &str) -> Result<(), ContextError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.contains("..") {
        "it contains `..`"
    } else if name.contains(['/', '\\']) {
        "it contains `/` or `\\`"
    } else {
        return Ok(());
    };
    Err(ContextError::InvalidName {
        name: name.to_owned(),
        why,
    })
}

/// A context file's fields, as `nats context save` writes them (every field present, unset
/// ones as empty strings). Unknown fields are ignored, as the nats CLI does, so a context
/// written by a newer nats CLI still reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct ContextFile {
    url: String,
    user: String,
    password: String,
    token: String,
    creds: String,
    nkey: String,
    cert: String,
    key: String,
    ca: String,
    inbox_prefix: String,
    socks_proxy: String,
    nsc: String,
    user_jwt: String,
    user_seed: String,
    jetstream_domain: String,
    jetstream_api_prefix: String,
    tls_first: bool,
    windows_cert_store: String,
    windows_cert_match: String,
    windows_ca_certs_match: Option<Vec<String>>,
}

/// One nats context, read from its file.
#[derive(Debug, Clone)]
pub struct NatsContext {
    path: PathBuf,
    file: ContextFile,
}

impl NatsContext {
    /// Reads and parses the context file at `path`.
    pub fn read(path: &Path) -> Result<Self, ContextError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContextError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses a context file's text; `path` is where it came from, for messages and relative
    /// references.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ContextError> {
        let file = serde_json::from_str(text).map_err(|source| ContextError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// The connection options this context gives; refuses a field sandbus cannot honour.
    pub fn options(&self) -> Result<NatsOptions, ContextError> {
        self.refuse_unsupported()?;
        let f = &self.file;
        Ok(NatsOptions {
            url: set(&f.url),
            user: set(&f.user),
            password: self.secret("password", &f.password)?,
            token: self.secret("token", &f.token)?,
            nkey: self.file_path("nkey", &f.nkey)?,
            creds: self.file_path("creds", &f.creds)?,
            tls_ca: self.file_path("ca", &f.ca)?,
            tls_cert: self.file_path("cert", &f.cert)?,
            tls_key: self.file_path("key", &f.key)?,
            tls_required: false,
            inbox_prefix: set(&f.inbox_prefix),
        })
    }

    fn refuse_unsupported(&self) -> Result<(), ContextError> {
        let f = &self.file;
        let refusals: [(bool, &'static str, &'static str); 9] = [
            (
                !f.nsc.is_empty(),
                "nsc",
                "run `nsc generate creds` and set `creds` to the file it writes",
            ),
            (
                !f.user_jwt.is_empty(),
                "user_jwt",
                "put the JWT and its seed in a .creds file and set `creds` to it",
            ),
            (
                !f.user_seed.is_empty(),
                "user_seed",
                "put the JWT and its seed in a .creds file and set `creds` to it",
            ),
            (
                !f.socks_proxy.is_empty(),
                "socks_proxy",
                "sandbus connects directly; reach the server without the proxy",
            ),
            (
                f.tls_first,
                "tls_first",
                "sandbus does not do the TLS handshake first; use a server port that greets first",
            ),
            (
                !f.jetstream_domain.is_empty(),
                "jetstream_domain",
                "sandbus uses the JetStream of the account it connects to; connect to that domain's servers",
            ),
            (
                !f.jetstream_api_prefix.is_empty(),
                "jetstream_api_prefix",
                "sandbus uses the JetStream of the account it connects to; connect to that account",
            ),
            (
                !f.windows_cert_store.is_empty() || !f.windows_cert_match.is_empty(),
                "windows_cert_store",
                "give the certificate and key as files (`cert`, `key`)",
            ),
            (
                f.windows_ca_certs_match
                    .as_ref()
                    .is_some_and(|m| !m.is_empty()),
                "windows_ca_certs_match",
                "give the CA as a file (`ca`)",
            ),
        ];
        match refusals.into_iter().find(|(refused, _, _)| *refused) {
            Some((_, field, fix)) => Err(self.unsupported(field, fix)),
            None => Ok(()),
        }
    }

    fn unsupported(&self, field: &'static str, fix: &'static str) -> ContextError {
        ContextError::Unsupported {
            path: self.path.clone(),
            field,
            fix,
        }
    }

    /// A password or token: literal, `env://VAR` or `file://PATH` (the file's text without
    /// its trailing line ends, as the nats CLI reads it).
    fn secret(&self, field: &'static str, value: &str) -> Result<Option<String>, ContextError> {
        match Reference::of(value) {
            Reference::Unset => Ok(None),
            Reference::Literal(text) => Ok(Some(text.to_owned())),
            Reference::Env(var) => match std::env::var(var) {
                Ok(text) => Ok(Some(text)),
                Err(_) => Err(ContextError::MissingVariable {
                    path: self.path.clone(),
                    field,
                    var: var.to_owned(),
                }),
            },
            Reference::File(path) => {
                let path = expand_path(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ContextError::Read { path, source })?;
                Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
            }
            Reference::Elsewhere => Err(self.unsupported(
                field,
                "sandbus reads credentials only as text, env://VAR or file://PATH",
            )),
        }
    }

    /// A file the context names (creds, nkey, TLS files): a path, or `file://PATH`; `~` and
    /// `$VAR` expanded.
    fn file_path(&self, field: &'static str, value: &str) -> Result<Option<PathBuf>, ContextError> {
        match Reference::of(value) {
            Reference::Unset => Ok(None),
            Reference::Literal(path) | Reference::File(path) => Ok(Some(expand_path(path))),
            Reference::Env(_) | Reference::Elsewhere => Err(self.unsupported(
                field,
                "sandbus reads this only from a file: give its path (or file://PATH)",
            )),
        }
    }
}

/// A value that may refer to where the real one is, by the nats CLI's resolver schemes.
enum Reference<'a> {
    Unset,
    Literal(&'a str),
    Env(&'a str),
    File(&'a str),
    /// `op://`, `nsc://` or `data:`: a resolver sandbus does not have.
    Elsewhere,
}

impl<'a> Reference<'a> {
    fn of(value: &'a str) -> Self {
        if value.is_empty() {
            return Self::Unset;
        }
        // Only the full scheme is a reference: a password that merely starts `env:` is one.
        let has = |prefix: &str| {
            value
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        if has("env://") {
            Self::Env(strip_prefix_ignoring_case(value, "env://"))
        } else if has("file://") {
            Self::File(strip_prefix_ignoring_case(value, "file://"))
        } else if has("op://") || has("nsc://") || has("data:") {
            Self::Elsewhere
        } else {
            Self::Literal(value)
        }
    }
}

fn strip_prefix_ignoring_case<'a>(value: &'a str, prefix: &str) -> &'a str {
    match value.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => &value[prefix.len()..],
        _ => value,
    }
}

/// `~` and `$VAR` expanded as the nats CLI does (an unset variable becomes empty).
fn expand_path(path: &str) -> PathBuf {
    let expanded = shellexpand::full_with_context_no_errors(
        path,
        || std::env::var("HOME").ok(),
        |var| Some(std::env::var(var).unwrap_or_default()),
    );
    PathBuf::from(expanded.as_ref())
}

/// `Some` for a non-empty string: the nats CLI writes unset fields as `""`.
fn set(value: &str) -> Option<String> {
    Some(value.to_owned()).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `nats context save` writes: every field, unset ones empty.
    fn saved(overrides: &[(&str, serde_json::Value)]) -> String {
        let mut file = serde_json::json!({
            "description": "", "url": "", "socks_proxy": "", "token": "", "user": "",
            "password": "", "creds": "", "nkey": "", "cert": "", "key": "", "ca": "",
            "nsc": "", "jetstream_domain": "", "jetstream_api_prefix": "",
            "jetstream_event_prefix": "", "inbox_prefix": "", "user_jwt": "", "user_seed": "",
            "color_scheme": "", "tls_first": false, "windows_cert_store": "",
            "windows_cert_match_by": "", "windows_cert_match": "",
            "windows_ca_certs_match": null
        });
        for (field, value) in overrides {
            file[*field] = value.clone();
        }
        file.to_string()
    }

    fn options(overrides: &[(&str, serde_json::Value)]) -> Result<NatsOptions, ContextError> {
        NatsContext::parse(Path::new("/ctx/lab.json"), &saved(overrides))?.options()
    }

    #[test]
    fn a_saved_context_gives_its_url_user_password_and_tls_files_and_nothing_for_empty_fields() {
        let got = options(&[
            ("url", "nats://bus:4222".into()),
            ("user", "lab".into()),
            ("password", "s3cret".into()),
            ("ca", "/etc/nats/ca.pem".into()),
            ("inbox_prefix", "_INBOX_viewer".into()),
            ("description", "the lab".into()),
            ("color_scheme", "nord".into()),
        ])
        .unwrap();
        assert_eq!(
            got,
            NatsOptions {
                url: Some("nats://bus:4222".into()),
                user: Some("lab".into()),
                password: Some("s3cret".into()),
                tls_ca: Some("/etc/nats/ca.pem".into()),
                inbox_prefix: Some("_INBOX_viewer".into()),
                ..NatsOptions::default()
            }
        );
    }

    #[test]
    fn a_context_of_only_a_url_and_unknown_fields_reads() {
        let context = NatsContext::parse(
            Path::new("/ctx/demo.json"),
            r#"{"url": "demo.nats.io", "a_field_of_tomorrow": 1}"#,
        )
        .unwrap();
        assert_eq!(
            context.options().unwrap().url.as_deref(),
            Some("demo.nats.io")
        );
    }

    #[test]
    fn paths_expand_tilde_and_variables_and_secrets_come_from_env_or_file_references() {
        let home = std::env::var("HOME").unwrap_or_default();
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "t0ken\n").unwrap();
        let got = options(&[
            ("creds", "~/lab.creds".into()),
            ("token", format!("file://{}", token_file.display()).into()),
        ])
        .unwrap();
        assert_eq!(got.creds, Some(PathBuf::from(format!("{home}/lab.creds"))));
        assert_eq!(got.token.as_deref(), Some("t0ken"));

        let got = options(&[("nkey", "$HOME/lab.nk".into())]).unwrap();
        assert_eq!(got.nkey, Some(PathBuf::from(format!("{home}/lab.nk"))));

        let missing = options(&[("password", "env://SANDBUS_TEST_NO_SUCH_VARIABLE".into())]);
        assert!(
            matches!(&missing, Err(ContextError::MissingVariable { var, .. }) if var == "SANDBUS_TEST_NO_SUCH_VARIABLE"),
            "{missing:?}"
        );
    }

    #[test]
    fn fields_sandbus_cannot_honour_are_refused_by_name() {
        for (field, value) in [
            ("nsc", serde_json::Value::from("nsc://op/acct/user")),
            ("user_jwt", "eyJ0...".into()),
            ("socks_proxy", "socks5://proxy:1080".into()),
            ("tls_first", true.into()),
            ("jetstream_domain", "hub".into()),
            ("windows_ca_certs_match", serde_json::json!(["Lab CA"])),
            ("password", "op://vault/item/password".into()),
        ] {
            let err = options(&[("user", "u".into()), (field, value)]).unwrap_err();
            let ContextError::Unsupported { field: named, .. } = &err else {
                panic!("{field}: {err:?}");
            };
            assert_eq!(*named, field);
            assert!(err.to_string().contains("/ctx/lab.json"), "{err}");
        }
    }

    #[test]
    fn only_a_full_scheme_makes_a_secret_a_reference() {
        assert!(matches!(
            Reference::of("env://PASS"),
            Reference::Env("PASS")
        ));
        assert!(matches!(
            Reference::of("FILE:///tmp/p"),
            Reference::File("/tmp/p")
        ));
        assert!(matches!(
            Reference::of("op://vault/item"),
            Reference::Elsewhere
        ));
        for literal in ["env:secret", "file:notes", "data-and-more", "op:x"] {
            assert!(
                matches!(Reference::of(literal), Reference::Literal(v) if v == literal),
                "{literal}"
            );
        }
    }

    #[test]
    fn a_context_that_is_not_json_is_a_parse_error_naming_the_file() {
        let err = NatsContext::parse(Path::new("/ctx/bad.json"), "url = x").unwrap_err();
        assert!(matches!(err, ContextError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("/ctx/bad.json"), "{err}");
    }

    #[test]
    fn the_store_finds_named_and_selected_contexts_and_names_the_missing_one() {
        let config = tempfile::tempdir().unwrap();
        let store = ContextStore::in_config_dir(config.path());
        assert_eq!(store.selected().unwrap(), None);

        let dir = config.path().join("nats").join("context");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("lab.json"), r#"{"url": "nats://lab:4222"}"#).unwrap();
        std::fs::write(config.path().join("nats").join("context.txt"), "lab\n").unwrap();
        assert_eq!(store.selected().unwrap().as_deref(), Some("lab"));
        let lab = store.load("lab").unwrap().options().unwrap();
        assert_eq!(lab.url.as_deref(), Some("nats://lab:4222"));

        let by_file = store.load(dir.join("lab.json").to_str().unwrap()).unwrap();
        assert_eq!(
            by_file.options().unwrap().url.as_deref(),
            Some("nats://lab:4222")
        );

        let err = store.load("prod").unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, ContextError::NotFound { .. }), "{err:?}");
        assert!(message.contains(&dir.join("prod.json").display().to_string()));
        assert!(message.contains("nats context ls"), "{message}");

        for bad in ["", "../lab", "a/b"] {
            assert!(
                matches!(store.load(bad), Err(ContextError::InvalidName { .. })),
                "{bad}"
            );
        }
    }
}
