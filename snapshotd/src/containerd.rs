//! containerd's configuration for snapshotd: what goes into `/etc/containerd/config.toml`
//! so containerd loads snapshotd as a proxy snapshotter. `snapshotd
//! --print-containerd-config 1|2` prints it for the daemon's backend, root and socket; the
//! end-to-end tests run containerd 1.6 and 2.x on exactly this text.
//!
//! containerd 1.x reads a version 2 file, containerd 2.x a version 3 file. In 2.x:
//! - containerd never asks a proxy what it can do: the entry's `capabilities` (`rebase`,
//!   `remap-ids`) and `exports` (`root`, `enable_remote_snapshot_annotations`) become the
//!   plugin's metadata, which clients read (`ctr plugins ls -d id==NAME`);
//! - pulls and imports go through the transfer service, which unpacks only into the
//!   snapshotters its `unpack_config` names (else "no unpack platforms defined").
//!
//! CRI passes `containerd.io/snapshot/cri.*` labels (the image reference and layer digest
//! of each unpack Prepare) to snapshotters only with `disable_snapshot_annotations = false`
//! (in 1.x under `[plugins."io.containerd.grpc.v1.cri".containerd]`, in 2.x under
//! `[plugins."io.containerd.cri.v1.images"]`; 2.x also honours the proxy's
//! `enable_remote_snapshot_annotations` export).

use std::fmt::Write as _;
use std::path::Path;

#[cfg(doc)]
use snapshots::Backend;

/// What the configuration describes.
#[derive(Debug, Clone, Copy)]
pub struct ProxyEntry<'a> {
    /// The snapshotter's name in containerd (`--snapshotter NAME`).
    pub name: &'a str,
    /// snapshotd's socket.
    pub address: &'a Path,
    /// The capabilities to declare: the backend's on this machine,
    /// [`Backend::capabilities`].
    pub capabilities: &'a [&'a str],
    /// snapshotd's root (the `root` export).
    pub root: &'a Path,
}

/// containerd's major version, which fixes the configuration's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// containerd 1.x: config version 2.
    V1,
    /// containerd 2.x: config version 3.
    V2,
}

impl Release {
    /// `1` or `2` (also `1.6`, `1.7`, `2.0`, `2.1`, …).
    ///
    /// # Errors
    /// A message naming the value and what is accepted.
    pub fn parse(s: &str) -> Result<Release, String> {
        match s.split('.').next() {
            Some("1") => Ok(Release::V1),
            Some("2") => Ok(Release::V2),
            _ => Err(format!(
                "containerd release {s:?}: give its major version, 1 (config version 2) or 2 \
                 (config version 3)"
            )),
        }
    }
}

/// containerd's name for this machine's architecture in a platform (`linux/amd64`).
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        "s390x" => "s390x",
        other => other,
    };
    format!("linux/{arch}")
}

/// The configuration text for `release`: the proxy entry, and for 2.x the transfer
/// service's unpack entry; the CRI setting that lets `cri.*` labels through. Every line
/// containerd needs to run a container on snapshotd; the file's other settings are the
/// machine's own.
pub fn config(release: Release, e: &ProxyEntry<'_>) -> String {
    let name = e.name;
    let mut s = String::new();
    match release {
        Release::V1 => {
            s.push_str("version = 2\n\n");
            writeln!(s, "[proxy_plugins.{name}]").unwrap();
            s.push_str("  type = \"snapshot\"\n");
            writeln!(s, "  address = {}", quote(e.address)).unwrap();
            s.push('\n');
            s.push_str(
                "# CRI: pass the containerd.io/snapshot/cri.* labels of unpack Prepares\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
                 disable_snapshot_annotations = false\n",
            );
        }
        Release::V2 => {
            s.push_str("version = 3\n\n");
            writeln!(s, "[proxy_plugins.{name}]").unwrap();
            s.push_str("  type = \"snapshot\"\n");
            writeln!(s, "  address = {}", quote(e.address)).unwrap();
            let caps: Vec<String> = e.capabilities.iter().map(|c| format!("{c:?}")).collect();
            writeln!(s, "  capabilities = [{}]", caps.join(", ")).unwrap();
            writeln!(s, "  [proxy_plugins.{name}.exports]").unwrap();
            writeln!(s, "    root = {}", quote(e.root)).unwrap();
            s.push_str("    enable_remote_snapshot_annotations = \"true\"\n\n");
            s.push_str(
                "# The transfer service (pulls, imports) unpacks only into the snapshotters\n\
                 # listed here. The list replaces containerd's default (overlayfs): add an\n\
                 # entry for every other snapshotter you pull into.\n\
                 [[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n",
            );
            writeln!(s, "  platform = \"{}\"", platform()).unwrap();
            writeln!(s, "  snapshotter = \"{name}\"").unwrap();
            s.push_str("  differ = \"walking\"\n\n");
            s.push_str(
                "# CRI: pass the containerd.io/snapshot/cri.* labels of unpack Prepares\n\
                 [plugins.\"io.containerd.cri.v1.images\"]\n  \
                 disable_snapshot_annotations = false\n",
            );
        }
    }
    s
}

/// A TOML basic string of a path.
fn quote(p: &Path) -> String {
    let mut out = String::from("\"");
    for c in p.to_string_lossy().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", c as u32).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use snapshots::Backend;

    const OVERLAY_CAPS: &[&str] = &["rebase", "remap-ids"];

    fn entry(caps: &'static [&'static str]) -> ProxyEntry<'static> {
        ProxyEntry {
            name: "snapshotd",
            address: Path::new(crate::config::DEFAULT_ADDRESS),
            capabilities: caps,
            root: Path::new(crate::config::DEFAULT_ROOT),
        }
    }

    /// The README shows what `--print-containerd-config` prints for the defaults (overlay
    /// on Linux 5.19+, amd64).
    #[test]
    fn readme_shows_the_printed_configurations() {
        let readme = include_str!("../../README.md");
        for release in [Release::V1, Release::V2] {
            let text = config(release, &entry(OVERLAY_CAPS))
                .replace(&format!("\"{}\"", platform()), "\"linux/amd64\"");
            assert!(
                readme.contains(&format!("```toml\n{text}```")),
                "README.md lacks, as a toml block:\n{text}"
            );
        }
    }

    #[test]
    fn both_releases_parse_as_toml_with_the_proxy_entry() {
        for release in [Release::V1, Release::V2] {
            let text = config(release, &entry(OVERLAY_CAPS));
            let v: toml::Value = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            let proxy = &v["proxy_plugins"]["snapshotd"];
            assert_eq!(proxy["type"].as_str(), Some("snapshot"));
            assert_eq!(
                proxy["address"].as_str(),
                Some(crate::config::DEFAULT_ADDRESS)
            );
            let version = v["version"].as_integer().unwrap();
            match release {
                Release::V1 => {
                    assert_eq!(version, 2);
                    assert!(proxy.get("capabilities").is_none());
                }
                Release::V2 => {
                    assert_eq!(version, 3);
                    let caps: Vec<&str> = proxy["capabilities"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|c| c.as_str().unwrap())
                        .collect();
                    assert_eq!(caps, OVERLAY_CAPS);
                    assert_eq!(
                        proxy["exports"]["root"].as_str(),
                        Some(crate::config::DEFAULT_ROOT)
                    );
                    let unpack =
                        &v["plugins"]["io.containerd.transfer.v1.local"]["unpack_config"][0];
                    assert_eq!(unpack["snapshotter"].as_str(), Some("snapshotd"));
                    assert_eq!(unpack["platform"].as_str(), Some(platform().as_str()));
                }
            }
        }
    }

    #[test]
    fn native_offers_no_capabilities_and_paths_are_quoted() {
        let native = Backend::Native.capabilities();
        assert!(native.is_empty());
        let mut e = entry(&[]);
        e.root = Path::new("/srv/a \"b\"\\c");
        let text = config(Release::V2, &e);
        let v: toml::Value = toml::from_str(&text).unwrap();
        let proxy = &v["proxy_plugins"]["snapshotd"];
        assert!(proxy["capabilities"].as_array().unwrap().is_empty());
        assert_eq!(proxy["exports"]["root"].as_str(), Some("/srv/a \"b\"\\c"));
    }

    #[test]
    fn releases_parse_by_major_version() {
        assert_eq!(Release::parse("1.6"), Ok(Release::V1));
        assert_eq!(Release::parse("2"), Ok(Release::V2));
        assert_eq!(Release::parse("2.1.9"), Ok(Release::V2));
        assert!(Release::parse("3").unwrap_err().contains("\"3\""));
    }
}
