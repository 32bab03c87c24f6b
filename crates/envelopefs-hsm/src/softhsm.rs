//! Throwaway SoftHSM2 tokens for tests (this crate's and the mount tests'): a temporary
//! directory with its own `softhsm2.conf` (`directories.tokendir = <dir>/tokens`) and tokens
//! made with `softhsm2-util --init-token --free`. Nothing touches the system's tokens.
//!
//! When SoftHSM2 is not installed, [`TestToken::new`] prints why and returns `None`, so the
//! test can skip; with `ENVELOPEFS_REQUIRE_HSM=1` it panics instead.

use std::path::PathBuf;
use std::process::Command;

/// Where Debian and others install the SoftHSM2 module.
const MODULE_PATHS: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

/// The SoftHSM2 module, if installed.
pub fn module() -> Option<PathBuf> {
    MODULE_PATHS.iter().map(PathBuf::from).find(|p| p.exists())
}

/// The user PIN of every test token.
pub const USER_PIN: &str = "1234-user";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "5678-officer";

/// A directory of throwaway SoftHSM2 tokens; removed on drop.
#[derive(Debug)]
pub struct TestToken {
    /// The temporary directory (`softhsm2.conf`, `tokens/`).
    pub dir: PathBuf,
    /// Its `softhsm2.conf`: set `SOFTHSM2_CONF` to it in every process that uses the tokens.
    pub conf: PathBuf,
    /// The SoftHSM2 module.
    pub module: PathBuf,
    /// The label of the first token.
    pub label: String,
}

impl TestToken {
    /// A fresh directory with one token labelled `label` (PINs [`USER_PIN`], [`SO_PIN`]),
    /// or `None` (after saying why) when SoftHSM2 is not installed and
    /// `ENVELOPEFS_REQUIRE_HSM` is not `1`.
    pub fn new(label: &str) -> Option<Self> {
        let required = std::env::var("ENVELOPEFS_REQUIRE_HSM").is_ok_and(|v| v == "1");
        let util = Command::new("softhsm2-util").arg("--version").output();
        let (Some(module), Ok(_)) = (module(), util) else {
            assert!(
                !required,
                "ENVELOPEFS_REQUIRE_HSM=1 but SoftHSM2 is not installed (scripts/install-deps.sh)"
            );
            eprintln!(
                "SKIPPED: SoftHSM2 is not installed (apt-get install softhsm2 libsofthsm2); set \
                 ENVELOPEFS_REQUIRE_HSM=1 to make this a failure"
            );
            return None;
        };
        let mut rnd = [0u8; 8];
        getrandom_fill(&mut rnd);
        let dir = std::env::temp_dir().join(format!(
            "envelopefs-softhsm-{}-{}",
            std::process::id(),
            rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ));
        std::fs::create_dir_all(dir.join("tokens")).expect("create the token directory");
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .expect("write softhsm2.conf");
        let t = TestToken {
            dir,
            conf,
            module,
            label: label.to_owned(),
        };
        t.init_token(label);
        Some(t)
    }

    /// Makes another token labelled `label` in the same directory.
    pub fn init_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
            .output()
            .expect("run softhsm2-util");
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Deletes every token of the directory (as if the HSM were replaced by an empty one).
    pub fn wipe(&self) {
        let tokens = self.dir.join("tokens");
        std::fs::remove_dir_all(&tokens).expect("remove the tokens");
        std::fs::create_dir_all(&tokens).expect("recreate the token directory");
    }

    /// The token directory.
    pub fn token_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// Points this process's PKCS#11 module at this directory. Call it before the module is
    /// first loaded, from a test binary where nothing else reads or writes the environment
    /// concurrently in C code.
    pub fn use_in_this_process(&self) {
        // SAFETY: Rust's own environment accesses are serialized by std; the only C reader
        // of SOFTHSM2_CONF is the SoftHSM2 module, which reads it in C_Initialize, after this
        // call (the tests call this before opening any token).
        unsafe { std::env::set_var("SOFTHSM2_CONF", &self.conf) };
    }
}

impl Drop for TestToken {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Random bytes for a unique directory name, without a dependency (not secret).
fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> (i * 8)) as u8;
        }
    }
}
