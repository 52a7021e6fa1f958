//! How a command reaches NATS, the way users of the `nats` CLI expect: global flags
//! (`sandbus -s URL ls` and `sandbus ls -s URL` alike), the nats CLI's environment variables,
//! and its contexts.
//!
//! Each setting comes from the first of these that gives it:
//! 1. a flag, or its `SANDBUS_NATS_*` environment variable;
//! 2. the nats CLI's environment variable (`NATS_URL`, `NATS_USER`, `NATS_PASSWORD`,
//!    `NATS_TOKEN`, `NATS_CREDS`, `NATS_NKEY`, `NATS_CA`, `NATS_CERT`, `NATS_KEY`);
//! 3. the nats context: the one `--context` (or `NATS_CONTEXT`) names, else, for client
//!    commands only, the one `nats context select` selected;
//! 4. for the daemon, its configuration file; then the defaults.
//!
//! Authentication is taken whole from one level: a level that names a way to authenticate
//! (user, token, nkey or creds) hides the ones below it, so `--creds` over a context with a
//! user and password uses the creds alone. (A password can still come from below for a user
//! named above, to keep it out of the command line.)

use std::path::PathBuf;

use clap::Args;

use sandbus::bus::NatsOptions;

use super::nats_context::{ContextError, ContextStore};

/// How to reach NATS. Every flag is global: it may come before or after the subcommand.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "NATS connection")]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated. First of: this flag, SANDBUS_NATS_URL, NATS_URL,
    /// the nats context's url, nats://127.0.0.1:4222 (`--nats` is its older name).
    #[arg(
        short = 's',
        long = "server",
        visible_alias = "nats",
        value_name = "URL",
        env = "SANDBUS_NATS_URL",
        global = true
    )]
    pub url: Option<String>,
    /// Use this nats CLI context (a name, or the path of a .json file) under the flags and
    /// environment [default: the selected one, `nats context select`; the daemon: none].
    #[arg(long, value_name = "NAME", env = "NATS_CONTEXT", global = true)]
    pub context: Option<String>,
    /// Use no nats CLI context: not the selected one, nor one NATS_CONTEXT names.
    #[arg(long, global = true)]
    pub no_context: bool,
    /// User name (with --password) [else NATS_USER].
    #[arg(long, env = "SANDBUS_NATS_USER", global = true)]
    pub user: Option<String>,
    /// Password (with --user) [else NATS_PASSWORD].
    #[arg(
        long,
        env = "SANDBUS_NATS_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub password: Option<String>,
    /// Authentication token [else NATS_TOKEN].
    #[arg(
        long,
        env = "SANDBUS_NATS_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// File holding an nkey seed [else NATS_NKEY].
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_NKEY", global = true)]
    pub nkey: Option<PathBuf>,
    /// A .creds file (JWT + nkey seed) [else NATS_CREDS].
    #[arg(long, value_name = "FILE", env = "SANDBUS_NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) for the server's TLS certificate [else NATS_CA]. The nats CLI's
    /// `--tlsca` works too.
    #[arg(
        long,
        alias = "tlsca",
        value_name = "FILE",
        env = "SANDBUS_NATS_TLS_CA",
        global = true
    )]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS (with --tls-key) [else NATS_CERT]. The nats
    /// CLI's `--tlscert` works too.
    #[arg(
        long,
        alias = "tlscert",
        value_name = "FILE",
        env = "SANDBUS_NATS_TLS_CERT",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS [else NATS_KEY]. The nats CLI's `--tlskey` works too.
    #[arg(
        long,
        alias = "tlskey",
        value_name = "FILE",
        env = "SANDBUS_NATS_TLS_KEY",
        global = true
    )]
    pub tls_key: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[arg(long, global = true)]
    pub tls_required: bool,
    /// Prefix of the reply subjects [default: _INBOX]. A NATS user with role permissions
    /// from `sandbus permissions` receives replies only on its role's inbox, e.g.
    /// _INBOX_viewer.
    #[arg(
        long,
        value_name = "PREFIX",
        env = "SANDBUS_INBOX_PREFIX",
        global = true
    )]
    pub inbox_prefix: Option<String>,
}

/// Whether the context `nats context select` chose is used when `--context` names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectedContext {
    /// Client commands: like the nats CLI, use it.
    Follow,
    /// The daemon: a service does not change servers because a user selected a context.
    Ignore,
}

/// Why the connection settings cannot be worked out.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The nats context cannot be used.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A nats CLI environment variable asks for something sandbus cannot do.
    #[error("{var} is set, which sandbus cannot use: {fix}")]
    UnsupportedVariable {
        /// The variable.
        var: &'static str,
        /// What to do instead.
        fix: &'static str,
    },
}

/// nats CLI variables that change how it connects in ways sandbus cannot follow.
const UNSUPPORTED_VARIABLES: [(&str, &str); 3] = [
    (
        "NATS_JWT",
        "put the JWT and its seed in a .creds file and give it with --creds or NATS_CREDS",
    ),
    (
        "NATS_SEED",
        "put the JWT and its seed in a .creds file and give it with --creds or NATS_CREDS",
    ),
    (
        "NATS_SOCKS_PROXY",
        "sandbus connects directly; unset it for sandbus",
    ),
];

impl NatsArgs {
    /// The connection settings: these flags over the nats CLI's environment variables over
    /// the nats context (see the module's documentation).
    pub fn settings(&self, selected: SelectedContext) -> Result<NatsOptions, SettingsError> {
        self.resolve(
            &|var| std::env::var(var).ok(),
            ContextStore::from_env,
            selected,
        )
    }

    /// [`settings`](Self::settings) with the environment read through `env` and the
    /// contexts found by `store`.
    fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        store: impl FnOnce() -> Result<ContextStore, ContextError>,
        selected: SelectedContext,
    ) -> Result<NatsOptions, SettingsError> {
        let mut options = over(self.flag_options(), env_options(env)?);
        let context = match (self.no_context, &self.context, selected) {
            (true, _, _) | (false, None, SelectedContext::Ignore) => None,
            (false, Some(name), _) => Some(store()?.load(name)?),
            (false, None, SelectedContext::Follow) => match store() {
                // No home: nothing can be selected.
                Err(ContextError::NoConfigDir) => None,
                Err(e) => return Err(e.into()),
                Ok(store) => match store.selected()? {
                    Some(name) => Some(store.load(&name)?),
                    None => None,
                },
            },
        };
        if let Some(context) = context {
            options = over(options, context.options()?);
        }
        Ok(options)
    }

    /// What the flags (and their `SANDBUS_NATS_*` variables) give.
    fn flag_options(&self) -> NatsOptions {
        NatsOptions {
            url: self.url.clone(),
            user: self.user.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            nkey: self.nkey.clone(),
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_required: self.tls_required,
            inbox_prefix: self.inbox_prefix.clone(),
        }
    }
}

/// What the nats CLI's environment variables give, read as it reads them: an empty variable
/// is unset, and `NATS_USER` without `NATS_PASSWORD` is a token.
fn env_options(env: &dyn Fn(&str) -> Option<String>) -> Result<NatsOptions, SettingsError> {
    let var = |name: &str| env(name).filter(|value| !value.is_empty());
    if let Some((var, fix)) = UNSUPPORTED_VARIABLES
        .into_iter()
        .find(|(name, _)| var(name).is_some())
    {
        return Err(SettingsError::UnsupportedVariable { var, fix });
    }
    let (user, password, user_as_token) = match (var("NATS_USER"), var("NATS_PASSWORD")) {
        (Some(user), None) => (None, None, Some(user)),
        (user, password) => (user, password, None),
    };
    Ok(NatsOptions {
        url: var("NATS_URL"),
        user,
        password,
        token: var("NATS_TOKEN").or(user_as_token),
        nkey: var("NATS_NKEY").map(PathBuf::from),
        creds: var("NATS_CREDS").map(PathBuf::from),
        tls_ca: var("NATS_CA").map(PathBuf::from),
        tls_cert: var("NATS_CERT").map(PathBuf::from),
        tls_key: var("NATS_KEY").map(PathBuf::from),
        tls_required: false,
        inbox_prefix: None,
    })
}

/// `upper` with what it leaves unset taken from `lower`; authentication whole from the
/// higher level that names a way to authenticate (see the module's documentation).
pub fn over(upper: NatsOptions, mut lower: NatsOptions) -> NatsOptions {
    let names_a_method = upper.user.is_some()
        || upper.token.is_some()
        || upper.nkey.is_some()
        || upper.creds.is_some();
    if names_a_method {
        // A user named above may take its password from below; nothing else crosses.
        if upper.user.is_none() || lower.user.is_some() && lower.user != upper.user {
            lower.password = None;
        }
        lower.user = None;
        lower.token = None;
        lower.nkey = None;
        lower.creds = None;
    }
    upper.or(lower)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        nats: NatsArgs,
    }

    fn args(flags: &[&str]) -> NatsArgs {
        let mut all = vec!["sandbus"];
        all.extend(flags);
        Command::try_parse_from(all).unwrap().nats
    }

    /// A config directory holding `contexts` (name, JSON) and, if given, `context.txt`.
    fn contexts(contexts: &[(&str, &str)], selected: Option<&str>) -> tempfile::TempDir {
        let config = tempfile::tempdir().unwrap();
        let dir = config.path().join("nats").join("context");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, json) in contexts {
            std::fs::write(dir.join(format!("{name}.json")), json).unwrap();
        }
        if let Some(name) = selected {
            std::fs::write(config.path().join("nats").join("context.txt"), name).unwrap();
        }
        config
    }

    fn resolve(
        args: &NatsArgs,
        env: &[(&str, &str)],
        config: &Path,
        selected: SelectedContext,
    ) -> Result<NatsOptions, SettingsError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        args.resolve(
            &|var| env.get(var).cloned(),
            || Ok(ContextStore::in_config_dir(config)),
            selected,
        )
    }

    const LAB: &str = r#"{"url": "nats://lab:4222", "user": "lab", "password": "s3cret",
                          "ca": "/lab/ca.pem"}"#;

    #[test]
    fn the_server_flag_is_short_long_or_its_older_name() {
        for flag in ["-s", "--server", "--nats"] {
            assert_eq!(
                args(&[flag, "nats://a:4222"]).url.as_deref(),
                Some("nats://a:4222")
            );
        }
    }

    #[test]
    fn a_flag_beats_nats_url_which_beats_the_selected_context() {
        let config = contexts(&[("lab", LAB)], Some("lab"));
        let env = [("NATS_URL", "nats://env:4222")];
        let follow = SelectedContext::Follow;

        let flagged = resolve(
            &args(&["-s", "nats://flag:4222"]),
            &env,
            config.path(),
            follow,
        );
        assert_eq!(flagged.unwrap().url.as_deref(), Some("nats://flag:4222"));

        let from_env = resolve(&args(&[]), &env, config.path(), follow).unwrap();
        assert_eq!(from_env.url.as_deref(), Some("nats://env:4222"));
        // What the environment leaves unset still comes from the context.
        assert_eq!(from_env.user.as_deref(), Some("lab"));
        assert_eq!(from_env.tls_ca, Some(PathBuf::from("/lab/ca.pem")));

        let from_context = resolve(&args(&[]), &[], config.path(), follow).unwrap();
        assert_eq!(from_context.url.as_deref(), Some("nats://lab:4222"));
        assert_eq!(from_context.password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn the_selected_context_is_for_clients_and_can_be_switched_off() {
        let config = contexts(&[("lab", LAB)], Some("lab"));
        let daemon = resolve(&args(&[]), &[], config.path(), SelectedContext::Ignore).unwrap();
        assert_eq!(daemon, NatsOptions::default());
        let off = resolve(
            &args(&["--no-context"]),
            &[],
            config.path(),
            SelectedContext::Follow,
        )
        .unwrap();
        assert_eq!(off, NatsOptions::default());
        let off = resolve(
            &args(&["--context", "lab", "--no-context"]),
            &[],
            config.path(),
            SelectedContext::Follow,
        )
        .unwrap();
        assert_eq!(off, NatsOptions::default(), "--no-context wins");
        // A named context is used by the daemon too.
        let named = resolve(
            &args(&["--context", "lab"]),
            &[],
            config.path(),
            SelectedContext::Ignore,
        )
        .unwrap();
        assert_eq!(named.url.as_deref(), Some("nats://lab:4222"));
    }

    #[test]
    fn a_named_context_beats_the_selected_one_and_a_missing_one_is_an_error() {
        let config = contexts(
            &[("lab", LAB), ("prod", r#"{"url": "nats://prod:4222"}"#)],
            Some("lab"),
        );
        let prod = resolve(
            &args(&["--context", "prod"]),
            &[],
            config.path(),
            SelectedContext::Follow,
        )
        .unwrap();
        assert_eq!(prod.url.as_deref(), Some("nats://prod:4222"));
        assert_eq!(prod.user, None);

        let missing = resolve(
            &args(&["--context", "staging"]),
            &[],
            config.path(),
            SelectedContext::Follow,
        );
        assert!(
            matches!(
                missing,
                Err(SettingsError::Context(ContextError::NotFound { .. }))
            ),
            "{missing:?}"
        );
        // A selection naming a context that is gone is an error too, not a silent default.
        let dangling = contexts(&[], Some("gone"));
        let missing = resolve(&args(&[]), &[], dangling.path(), SelectedContext::Follow);
        assert!(missing.is_err(), "{missing:?}");
    }

    #[test]
    fn authentication_comes_whole_from_the_highest_level_that_names_one() {
        let config = contexts(&[("lab", LAB)], Some("lab"));
        let follow = SelectedContext::Follow;
        let creds = resolve(&args(&["--creds", "/me.creds"]), &[], config.path(), follow);
        let creds = creds.unwrap();
        assert_eq!(creds.creds, Some(PathBuf::from("/me.creds")));
        assert!(creds.validate().is_ok());
        assert_eq!((creds.user, creds.password), (None, None));

        // NATS_TOKEN over the context's user and password.
        let token = resolve(&args(&[]), &[("NATS_TOKEN", "t")], config.path(), follow);
        let token = token.unwrap();
        assert_eq!((token.token.as_deref(), token.user), (Some("t"), None));

        // A user named by flag takes its password from the environment.
        let env = [("NATS_PASSWORD", "pw")];
        let user = resolve(&args(&["--user", "me"]), &env, config.path(), follow).unwrap();
        assert_eq!(user.user.as_deref(), Some("me"));
        assert_eq!(user.password.as_deref(), Some("pw"));

        // ... but not another user's password from the context.
        let other = resolve(&args(&["--user", "me"]), &[], config.path(), follow).unwrap();
        assert_eq!(other.password, None);
    }

    #[test]
    fn the_environment_is_read_as_the_nats_cli_reads_it() {
        let none = tempfile::tempdir().unwrap();
        let follow = SelectedContext::Follow;
        let env = [
            ("NATS_USER", "t0ken"),
            ("NATS_URL", ""),
            ("NATS_CREDS", "/a.creds"),
        ];
        let got = resolve(&args(&[]), &env, none.path(), follow).unwrap();
        assert_eq!(got.token.as_deref(), Some("t0ken"));
        assert_eq!(got.user, None);
        assert_eq!(got.url, None);
        assert_eq!(got.creds, Some(PathBuf::from("/a.creds")));

        let env = [
            ("NATS_USER", "u"),
            ("NATS_PASSWORD", "p"),
            ("NATS_CA", "/ca"),
        ];
        let got = resolve(&args(&[]), &env, none.path(), follow).unwrap();
        assert_eq!(got.user.as_deref(), Some("u"));
        assert_eq!(got.password.as_deref(), Some("p"));
        assert_eq!(got.tls_ca, Some(PathBuf::from("/ca")));

        let jwt = resolve(&args(&[]), &[("NATS_JWT", "eyJ")], none.path(), follow);
        assert!(
            matches!(
                jwt,
                Err(SettingsError::UnsupportedVariable {
                    var: "NATS_JWT",
                    ..
                })
            ),
            "{jwt:?}"
        );
    }
}
