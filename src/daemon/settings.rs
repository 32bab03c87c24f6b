//! What a mount daemon needs to know, as one value: built by the CLI from its flags, and sent
//! as JSON to a background daemon (`background.rs`), so the daemon gets no command line to parse.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fuse::{MountOptions, Transport};

/// A mount's settings: the volume, where to mount it, the mount options, where to log and
/// how much. Holds no secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSettings {
    /// An initialised volume (BACKING), as given (relative to the working directory).
    #[serde(with = "wire_path")]
    pub backing: PathBuf,
    /// An existing empty directory.
    #[serde(with = "wire_path")]
    pub mountpoint: PathBuf,
    /// Let other users use the mount (`allow_other`).
    pub allow_other: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// Request-handling threads.
    pub threads: usize,
    /// The request transport (absent in settings written by older builds: auto).
    #[serde(default)]
    pub transport: Transport,
    /// Keep the kernel's page cache of a file across opens.
    pub kernel_cache: bool,
    /// The kernel buffers writes (FUSE_WRITEBACK_CACHE).
    pub writeback_cache: bool,
    /// Extended attributes on.
    pub xattrs: bool,
    /// Honour setuid/setgid bits and file capabilities (root only).
    pub suid: bool,
    /// Honour device nodes (root only).
    pub dev: bool,
    /// Append the daemon's log (its stderr) to this file.
    #[serde(with = "wire_path::option")]
    pub log_file: Option<PathBuf>,
    /// `-v` count: 1 info, 2 or more debug.
    pub verbose: u8,
    /// Only errors.
    pub quiet: bool,
}

impl DaemonSettings {
    /// Settings for mounting `backing` at `mountpoint` with the default options.
    pub fn new(backing: PathBuf, mountpoint: PathBuf) -> Self {
        let d = MountOptions::default();
        DaemonSettings {
            backing,
            mountpoint,
            allow_other: d.allow_other,
            read_only: d.read_only,
            threads: d.threads,
            transport: d.transport,
            kernel_cache: d.kernel_cache,
            writeback_cache: d.writeback_cache,
            xattrs: d.xattrs,
            suid: d.suid,
            dev: d.dev,
            log_file: None,
            verbose: 0,
            quiet: false,
        }
    }

    /// The adapter's options. The source name shown in /proc/mounts is BACKING's canonical
    /// path, so tools (reencrypt) find the mount of a volume.
    pub(crate) fn mount_options(&self) -> MountOptions {
        MountOptions {
            allow_other: self.allow_other,
            threads: self.threads,
            transport: self.transport,
            fsname: std::fs::canonicalize(&self.backing)
                .unwrap_or_else(|_| self.backing.clone())
                .display()
                .to_string(),
            read_only: self.read_only,
            kernel_cache: self.kernel_cache,
            writeback_cache: self.writeback_cache,
            xattrs: self.xattrs,
            suid: self.suid,
            dev: self.dev,
            ..MountOptions::default()
        }
    }
}

/// Paths in JSON: a string when the path is UTF-8, else an array of its bytes, so any path a
/// command line can carry survives the trip.
mod wire_path {
    use std::ffi::OsString;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Wire<'a> {
        Text(std::borrow::Cow<'a, str>),
        Bytes(Vec<u8>),
    }

    impl<'a> Wire<'a> {
        fn of(p: &'a Path) -> Self {
            match p.to_str() {
                Some(s) => Wire::Text(s.into()),
                None => Wire::Bytes(p.as_os_str().as_bytes().to_vec()),
            }
        }

        fn into_path(self) -> PathBuf {
            match self {
                Wire::Text(s) => PathBuf::from(s.into_owned()),
                Wire::Bytes(b) => PathBuf::from(OsString::from_vec(b)),
            }
        }
    }

    pub(crate) fn serialize<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        Wire::of(p).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        Wire::deserialize(d).map(Wire::into_path)
    }

    pub mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            p: &Option<PathBuf>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            p.as_deref().map(Wire::of).serialize(s)
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<PathBuf>, D::Error> {
            Option::<Wire>::deserialize(d).map(|w| w.map(Wire::into_path))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;

    #[test]
    fn settings_survive_json_with_any_path() {
        let odd = PathBuf::from(OsString::from_vec(b"/tmp/b\xff\n \"x".to_vec()));
        let mut s = DaemonSettings::new(odd.clone(), "m n/é".into());
        s.log_file = Some(odd);
        s.verbose = 2;
        s.xattrs = false;
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains('\n'), "one line: {json}");
        assert!(
            json.contains("\"m n/é\""),
            "UTF-8 paths stay readable: {json}"
        );
        assert_eq!(serde_json::from_str::<DaemonSettings>(&json).unwrap(), s);
        let none = DaemonSettings::new("b".into(), "m".into());
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(serde_json::from_str::<DaemonSettings>(&json).unwrap(), none);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = serde_json::to_string(&DaemonSettings::new("b".into(), "m".into())).unwrap();
        let extra = json.replacen('{', "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<DaemonSettings>(&extra).is_err());
    }

    #[test]
    fn mount_options_carry_every_flag() {
        let mut s = DaemonSettings::new("/nonexistent/b".into(), "m".into());
        (s.allow_other, s.read_only, s.threads) = (true, true, 7);
        (s.kernel_cache, s.writeback_cache, s.xattrs) = (false, false, false);
        (s.suid, s.dev) = (true, true);
        let o = s.mount_options();
        assert!(o.allow_other && o.read_only && o.suid && o.dev);
        assert!(!o.kernel_cache && !o.writeback_cache && !o.xattrs);
        assert_eq!((o.threads, o.fsname.as_str()), (7, "/nonexistent/b"));
    }
}
