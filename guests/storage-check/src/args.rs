//! The storage check's arguments.

use sandbus_usb::script::{ArgError, ScriptArgs};

/// What the check expects of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageArgs {
    /// INQUIRY vendor identification, compared trimmed.
    pub vendor: String,
    /// INQUIRY product identification, compared trimmed.
    pub product: String,
    /// Capacity in 512-byte blocks.
    pub blocks: u64,
    /// The block that starts with `marker`.
    pub marker_lba: u64,
    /// The text at the start of block `marker_lba`.
    pub marker: String,
    /// The block the check may overwrite; `None`: the last one.
    pub scratch_lba: Option<u64>,
}

const KNOWN: &[&str] = &[
    "vendor",
    "product",
    "blocks",
    "marker-lba",
    "marker",
    "scratch-lba",
];

impl StorageArgs {
    /// Reads the run's arguments; the error names the bad one.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, ArgError> {
        let args = ScriptArgs::new(pairs, KNOWN)?;
        let text = |name| args.required_text(name, "the expected INQUIRY text");
        Ok(Self {
            vendor: text("vendor")?.trim().to_string(),
            product: text("product")?.trim().to_string(),
            blocks: args.required("blocks", "a decimal count of 512-byte blocks")?,
            marker_lba: args.required("marker-lba", "a decimal block address")?,
            marker: args
                .required_text("marker", "the text the marker block starts with")?
                .to_string(),
            scratch_lba: args.parsed("scratch-lba", "a decimal block address")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use sandbus_usb::fakes::args as pairs;

    use super::*;

    fn complete() -> Vec<(String, String)> {
        pairs(&[
            ("vendor", "QEMU"),
            ("product", " QEMU HARDDISK "),
            ("blocks", "2048"),
            ("marker-lba", "7"),
            ("marker", "sandbus"),
        ])
    }

    #[test]
    fn every_argument_but_the_scratch_block_is_required() {
        let args = StorageArgs::parse(&complete()).unwrap();
        assert_eq!(args.product, "QEMU HARDDISK", "compared trimmed");
        assert_eq!(
            (args.blocks, args.marker_lba, args.scratch_lba),
            (2048, 7, None)
        );
        for missing in KNOWN.iter().filter(|n| **n != "scratch-lba") {
            let without: Vec<_> = complete()
                .into_iter()
                .filter(|(name, _)| name != missing)
                .collect();
            let error = StorageArgs::parse(&without).unwrap_err();
            assert!(matches!(error, ArgError::Missing { name, .. } if name == *missing));
        }
    }

    #[test]
    fn malformed_and_unknown_arguments_are_errors() {
        let mut given = complete();
        given.push(("scratch-lba".into(), "-1".into()));
        assert!(matches!(
            StorageArgs::parse(&given),
            Err(ArgError::Malformed {
                name: "scratch-lba",
                ..
            })
        ));
        let mut given = complete();
        given.push(("lun".into(), "1".into()));
        assert!(matches!(
            StorageArgs::parse(&given),
            Err(ArgError::Unknown { .. })
        ));
    }
}
