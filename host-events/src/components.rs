//! The component store's changes: `sandbus.component.added` and `sandbus.component.removed`.

use serde::{Deserialize, Serialize};

use crate::{HostEvent, Record};

/// `sandbus.component.added`: a component version was recorded (an upload, or a rollback,
/// which records the restored version anew). The data is the version's manifest, whole.
///
/// The manifest's type is the daemon's; a reader that is not the daemon reads it as a
/// [`serde_json::Value`] (the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ComponentAdded<Manifest = serde_json::Value> {
    /// The recorded version's manifest (name, version, digest, world, grants, limits...).
    pub manifest: Manifest,
}

impl<Manifest: Record> HostEvent for ComponentAdded<Manifest> {
    const TYPE: &'static str = "sandbus.component.added";
}

/// `sandbus.component.removed`: a component was removed. The data is the manifest of the
/// version that was current, whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ComponentRemoved<Manifest = serde_json::Value> {
    /// The removed component's last manifest.
    pub manifest: Manifest,
}

impl<Manifest: Record> HostEvent for ComponentRemoved<Manifest> {
    const TYPE: &'static str = "sandbus.component.removed";
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A manifest as the daemon's own type would be, field order and all.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Manifest {
        name: String,
        version: u64,
        digest: String,
        restored_from: Option<u64>,
    }

    fn manifest() -> Manifest {
        Manifest {
            name: "billing".into(),
            version: 3,
            digest: "ab12".into(),
            restored_from: None,
        }
    }

    #[test]
    fn component_added_and_removed_are_the_manifest_itself() {
        let manifest = manifest();
        // The daemon's call site: `serde_json::to_value(manifest)`.
        let before = serde_json::to_value(&manifest).unwrap();
        assert_eq!(
            before,
            json!({ "name": "billing", "version": 3, "digest": "ab12", "restored_from": null })
        );
        crate::testing::assert_same_json(
            &ComponentAdded {
                manifest: manifest.clone(),
            },
            before.clone(),
        );
        crate::testing::assert_same_json(&ComponentRemoved { manifest }, before);
    }

    #[test]
    fn a_reader_without_the_manifest_type_reads_it_as_a_value() {
        let data = ComponentAdded {
            manifest: manifest(),
        }
        .to_data()
        .unwrap();
        let read: ComponentAdded = serde_json::from_slice(&data).unwrap();
        assert_eq!(read.manifest["name"], "billing");
        assert_eq!(read.manifest["version"], 3);
    }
}
