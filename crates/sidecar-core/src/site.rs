//! Field paths that are formatted only when a message needs them.
//!
//! The engine records where every name, port and path it checks comes from, but almost every
//! render succeeds, so building those strings eagerly would dominate its cost.

use std::fmt;

/// A path like `spec.template.spec.containers[0].ports[1]` or `spec.pod.labels["team"]`, kept as
/// its parts.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Site<'a> {
    base: &'static str,
    index: Option<usize>,
    member: &'static str,
    sub: Option<usize>,
    leaf: &'static str,
    key: Option<&'a str>,
}

impl<'a> Site<'a> {
    /// `base` alone, e.g. `spec.pod.shareProcessNamespace`.
    pub(crate) const fn at(base: &'static str) -> Self {
        Site {
            base,
            index: None,
            member: "",
            sub: None,
            leaf: "",
            key: None,
        }
    }

    /// `base[index]`.
    pub(crate) const fn item(base: &'static str, index: usize) -> Self {
        Site {
            base,
            index: Some(index),
            member: "",
            sub: None,
            leaf: "",
            key: None,
        }
    }

    /// `base["key"]`.
    pub(crate) const fn key(base: &'static str, key: &'a str) -> Self {
        Site {
            base,
            index: None,
            member: "",
            sub: None,
            leaf: "",
            key: Some(key),
        }
    }

    /// Whether this path starts at `base`.
    pub(crate) fn is_in(&self, base: &str) -> bool {
        self.base == base
    }

    /// This path followed by `member`, e.g. `.name`.
    pub(crate) const fn field(self, member: &'static str) -> Self {
        Site { member, ..self }
    }

    /// This path followed by `member[sub]`, e.g. `.ports[1]`.
    pub(crate) const fn nested(self, member: &'static str, sub: usize) -> Self {
        Site {
            member,
            sub: Some(sub),
            ..self
        }
    }

    /// This nested path followed by `leaf`, e.g. `.mountPath`.
    pub(crate) const fn leaf(self, leaf: &'static str) -> Self {
        Site { leaf, ..self }
    }
}

impl fmt::Display for Site<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.base)?;
        if let Some(index) = self.index {
            write!(f, "[{index}]")?;
        }
        f.write_str(self.member)?;
        if let Some(sub) = self.sub {
            write!(f, "[{sub}]")?;
        }
        f.write_str(self.leaf)?;
        if let Some(key) = self.key {
            write!(f, "[{key:?}]")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Site;

    #[test]
    fn formats_like_json_paths() {
        let c = Site::item("spec.template.spec.containers", 0);
        assert_eq!(c.to_string(), "spec.template.spec.containers[0]");
        assert_eq!(
            c.nested(".ports", 1).to_string(),
            "spec.template.spec.containers[0].ports[1]"
        );
        assert_eq!(
            c.field(".name").to_string(),
            "spec.template.spec.containers[0].name"
        );
        let mount = Site::item("spec.appContainers", 2)
            .nested(".volumeMounts", 0)
            .leaf(".mountPath");
        assert_eq!(
            mount.to_string(),
            "spec.appContainers[2].volumeMounts[0].mountPath"
        );
        assert_eq!(
            Site::key("spec.pod.labels", "team").to_string(),
            "spec.pod.labels[\"team\"]"
        );
        assert_eq!(
            Site::at("spec.pod.shareProcessNamespace").to_string(),
            "spec.pod.shareProcessNamespace"
        );
    }
}
