//! A script's `--arg name=value` pairs, read strictly: an unknown or repeated name, a
//! missing required one or a value that does not parse is an error naming the argument, so
//! the script ends at once with verdict `error` instead of testing the wrong thing.

use std::fmt;
use std::str::FromStr;

/// Why the arguments are unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgError {
    /// A name the script does not take.
    Unknown {
        /// The name given.
        name: String,
        /// The names the script takes.
        known: Vec<&'static str>,
    },
    /// A name given twice.
    Repeated {
        /// The name.
        name: String,
    },
    /// A required argument is missing.
    Missing {
        /// The name.
        name: &'static str,
        /// What it is.
        expected: &'static str,
    },
    /// A value that does not parse.
    Malformed {
        /// The name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown { name, known } => write!(
                f,
                "unknown argument `{name}`; this script takes {}",
                known.join(", ")
            ),
            Self::Repeated { name } => write!(f, "argument `{name}` is given twice"),
            Self::Missing { name, expected } => {
                write!(f, "argument `{name}` is required ({expected})")
            }
            Self::Malformed {
                name,
                value,
                expected,
            } => write!(f, "argument `{name}`: `{value}` is not {expected}"),
        }
    }
}

impl std::error::Error for ArgError {}

/// The run's arguments, checked against the names a script takes.
#[derive(Debug, Clone)]
pub struct ScriptArgs<'a> {
    pairs: &'a [(String, String)],
}

impl<'a> ScriptArgs<'a> {
    /// Checks every name is one of `known` and none is repeated.
    pub fn new(pairs: &'a [(String, String)], known: &[&'static str]) -> Result<Self, ArgError> {
        for (at, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                return Err(ArgError::Unknown {
                    name: name.clone(),
                    known: known.to_vec(),
                });
            }
            if pairs[..at].iter().any(|(earlier, _)| earlier == name) {
                return Err(ArgError::Repeated { name: name.clone() });
            }
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, if given.
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, which must be given and not empty.
    pub fn required_text(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<&'a str, ArgError> {
        match self.text(name) {
            None => Err(ArgError::Missing { name, expected }),
            Some("") => Err(ArgError::Malformed {
                name,
                value: String::new(),
                expected,
            }),
            Some(value) => Ok(value),
        }
    }

    /// The value of `name` parsed (decimal for numbers), if given.
    pub fn parsed<T: FromStr>(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, ArgError> {
        self.text(name)
            .map(|value| {
                value.parse().map_err(|_| ArgError::Malformed {
                    name,
                    value: value.to_string(),
                    expected,
                })
            })
            .transpose()
    }

    /// The value of `name` parsed, which must be given.
    pub fn required<T: FromStr>(
        &self,
        name: &'static str,
        expected: &'static str,
    ) -> Result<T, ArgError> {
        self.parsed(name, expected)?
            .ok_or(ArgError::Missing { name, expected })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::args as pairs;

    #[test]
    fn known_arguments_are_read_and_parsed() {
        let given = pairs(&[("blocks", "2048"), ("vendor", "QEMU")]);
        let args = ScriptArgs::new(&given, &["vendor", "blocks", "scratch-lba"]).unwrap();
        assert_eq!(args.required_text("vendor", "text").unwrap(), "QEMU");
        assert_eq!(args.required::<u64>("blocks", "a number").unwrap(), 2048);
        assert_eq!(args.parsed::<u64>("scratch-lba", "a number").unwrap(), None);
    }

    #[test]
    fn unknown_repeated_missing_and_malformed_arguments_are_named() {
        let known = ["vendor", "blocks"];
        let given = pairs(&[("colour", "red")]);
        let error = ScriptArgs::new(&given, &known).unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown argument `colour`; this script takes vendor, blocks"
        );
        let given = pairs(&[("vendor", "a"), ("vendor", "b")]);
        assert_eq!(
            ScriptArgs::new(&given, &known).unwrap_err(),
            ArgError::Repeated {
                name: "vendor".into()
            }
        );
        let given = pairs(&[("blocks", "many"), ("vendor", "")]);
        let args = ScriptArgs::new(&given, &known).unwrap();
        let error = args
            .required::<u64>("blocks", "a decimal number")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "argument `blocks`: `many` is not a decimal number"
        );
        assert!(matches!(
            args.required_text("vendor", "text"),
            Err(ArgError::Malformed { name: "vendor", .. })
        ));
        let given = pairs(&[]);
        let args = ScriptArgs::new(&given, &known).unwrap();
        assert_eq!(
            args.required_text("vendor", "the INQUIRY vendor"),
            Err(ArgError::Missing {
                name: "vendor",
                expected: "the INQUIRY vendor"
            })
        );
    }
}
