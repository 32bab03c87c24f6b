//! The mount's control socket: how a user gives the daemon their customer key (SSE-C) and
//! takes it back (`envelopefs ssec`). One Unix stream socket per mount, in a runtime directory
//! (`/run/envelopefs/` for a root daemon, `$XDG_RUNTIME_DIR/envelopefs/` or
//! `/tmp/envelopefs-UID/` otherwise), named after the mount point. Anyone may connect; the
//! daemon takes the caller's identity from `SO_PEERCRED` (set by the kernel, unforgeable), so a
//! request can only ever concern the caller's own keys.
//!
//! One request per connection:
//! ```text
//! u32 (big-endian) n ‖ n bytes of JSON {"version":1,"op":"add"|"forget"|"status"|"rotate",
//!                                       "default":bool,"recovery":bool,"idle_secs":u64|null,
//!                                       "key_id":string|null}
//! u32 m ‖ m bytes of secret: empty, one 32-byte key (add), or old ‖ new (rotate)
//! ```
//! answered by one JSON line `{"ok":true,...}` or `{"ok":false,"error":"..."}`. The secret is
//! read into a zeroizing buffer and never logged.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::fs::EncFs;
use crate::keys::Caller;

/// Protocol version.
const VERSION: u32 = 1;
/// Longest JSON part of a request.
const MAX_REQUEST: u32 = 4096;

/// A request (the JSON part).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Request {
    pub(crate) version: u32,
    pub(crate) op: String,
    #[serde(default)]
    pub(crate) default: bool,
    #[serde(default)]
    pub(crate) recovery: bool,
    #[serde(default)]
    pub(crate) idle_secs: Option<u64>,
    #[serde(default)]
    pub(crate) key_id: Option<String>,
}

/// The runtime directory of a daemon run by `uid`.
fn runtime_dir(uid: u32) -> PathBuf {
    if uid == 0 {
        return PathBuf::from("/run/envelopefs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("envelopefs"),
        _ => PathBuf::from(format!("/tmp/envelopefs-{uid}")),
    }
}

/// The socket name of a mount point (canonical path).
fn socket_name(mountpoint: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let h = blake3::hash(mountpoint.as_os_str().as_bytes());
    format!("{}.sock", &h.to_hex()[..24])
}

/// Where a daemon run by `uid` serving `mountpoint` listens.
pub(crate) fn socket_path(mountpoint: &Path, uid: u32) -> PathBuf {
    runtime_dir(uid).join(socket_name(mountpoint))
}

/// The listening socket; removed when dropped.
pub(crate) struct ControlSocket {
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens for `ssec` requests on `fs`'s behalf; serves them on a thread until the process
/// ends. Also drops idle customer keys every few seconds.
pub(crate) fn spawn(fs: Arc<EncFs>, mountpoint: &Path) -> std::io::Result<ControlSocket> {
    let uid = crate::store::sys::geteuid();
    let path = socket_path(mountpoint, uid);
    let dir = path.parent().expect("socket in a directory");
    std::fs::create_dir_all(dir)?;
    if uid != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // A socket left by a daemon that was killed: nothing listens there any more.
    if UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path)?;
    // Everyone may connect (the answer depends only on who they are).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    let fs2 = fs.clone();
    std::thread::Builder::new()
        .name("ssec-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => serve(&fs2, s),
                    Err(e) => log::warn!("control socket: {e}"),
                }
            }
        })?;
    std::thread::Builder::new()
        .name("ssec-expiry".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(2));
                fs.customer_keys().expire();
            }
        })?;
    log::info!("control socket for `envelopefs ssec`: {}", path.display());
    Ok(ControlSocket { path })
}

fn read_frame(s: &mut UnixStream, max: u32) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let n = u32::from_be_bytes(len);
    if n > max {
        return Err(std::io::Error::other(format!(
            "frame of {n} bytes (at most {max})"
        )));
    }
    let mut buf = Zeroizing::new(vec![0u8; n as usize]);
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn serve(fs: &EncFs, mut s: UnixStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
    let caller = match crate::store::sys::peer_cred(&s) {
        Ok((pid, uid, gid)) => Caller { uid, gid, pid },
        Err(e) => {
            log::warn!("control socket: no peer credentials: {e}");
            return;
        }
    };
    let reply = match read_frame(&mut s, MAX_REQUEST).and_then(|j| Ok((j, read_frame(&mut s, 64)?)))
    {
        Ok((json, secret)) => match serde_json::from_slice::<Request>(&json) {
            Ok(r) if r.version == VERSION => handle(fs, &caller, &r, &secret),
            Ok(r) => Err(format!(
                "protocol version {} (this daemon speaks {VERSION})",
                r.version
            )),
            Err(e) => Err(format!("malformed request: {e}")),
        },
        Err(e) => Err(format!("cannot read the request: {e}")),
    };
    let out = match reply {
        Ok(mut v) => {
            v["ok"] = true.into();
            v
        }
        Err(e) => serde_json::json!({"ok": false, "error": e}),
    };
    let _ = writeln!(s, "{out}");
}

fn key32(b: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    let a: [u8; 32] = b
        .try_into()
        .map_err(|_| "a customer key is exactly 32 bytes".to_owned())?;
    Ok(Zeroizing::new(a))
}

fn handle(
    fs: &EncFs,
    caller: &Caller,
    r: &Request,
    secret: &[u8],
) -> Result<serde_json::Value, String> {
    let t = fs.customer_keys();
    match r.op.as_str() {
        "add" => {
            let k = key32(secret)?;
            if r.default {
                fs.enable_customer_keys().map_err(|e| {
                    format!("cannot record the sse-c feature in the volume config: {e}")
                })?;
            }
            let id = t.add(
                caller,
                &k,
                r.default,
                r.recovery,
                r.idle_secs.map(Duration::from_secs),
            );
            log::info!("uid {} loaded customer key {id}", caller.uid);
            Ok(serde_json::json!({ "key_id": id }))
        }
        "forget" => {
            let n = t.forget(caller, r.key_id.as_deref());
            log::info!("uid {} dropped {n} customer key(s)", caller.uid);
            Ok(serde_json::json!({ "forgotten": n }))
        }
        "status" => Ok(serde_json::json!({ "uid": caller.uid, "status": t.status(caller) })),
        "rotate" => {
            if secret.len() != 64 {
                return Err("rotate needs the old and the new key (32 bytes each)".into());
            }
            let (old, new) = (key32(&secret[..32])?, key32(&secret[32..])?);
            // Both loaded, the new one newest; the old one is dropped once its files moved.
            let old_id = t.add(caller, &old, false, false, None);
            let new_id = t.add(caller, &new, false, false, None);
            if old_id == new_id {
                return Err("the old and the new key are the same key".into());
            }
            let summary = fs
                .rotate_customer_key(caller, &old_id)
                .map_err(|e| e.to_string())?;
            t.forget(caller, Some(&old_id));
            log::info!(
                "uid {} rotated customer key {old_id} to {new_id}: {} files re-wrapped",
                caller.uid,
                summary.rewrapped
            );
            Ok(serde_json::json!({
                "old_key_id": old_id, "new_key_id": new_id,
                "rewrapped": summary.rewrapped, "failed": summary.failed,
            }))
        }
        other => Err(format!("unknown operation {other:?}")),
    }
}

/// Sends one request to the daemon serving `mountpoint` and returns its answer (the CLI side).
pub(crate) fn request(
    mountpoint: &Path,
    req: &Request,
    secret: &[u8],
) -> Result<serde_json::Value, String> {
    let mnt =
        std::fs::canonicalize(mountpoint).map_err(|e| format!("{}: {e}", mountpoint.display()))?;
    let me = crate::store::sys::geteuid();
    let mut candidates = vec![socket_path(&mnt, 0)];
    if me != 0 {
        candidates.push(socket_path(&mnt, me));
    }
    let mut s = candidates
        .iter()
        .find_map(|p| UnixStream::connect(p).ok())
        .ok_or_else(|| {
            format!(
                "no envelopefs daemon serves {} (no control socket at {}); is it mounted, by \
                 this version of envelopefs?",
                mnt.display(),
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(600)));
    let json = serde_json::to_vec(req).expect("request serialises");
    let mut msg = Zeroizing::new(Vec::with_capacity(8 + json.len() + secret.len()));
    msg.extend_from_slice(&(json.len() as u32).to_be_bytes());
    msg.extend_from_slice(&json);
    msg.extend_from_slice(&(secret.len() as u32).to_be_bytes());
    msg.extend_from_slice(secret);
    s.write_all(&msg)
        .map_err(|e| format!("control socket: {e}"))?;
    let mut line = String::new();
    s.read_to_string(&mut line)
        .map_err(|e| format!("control socket: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .map_err(|e| format!("bad answer from the daemon: {e}"))?;
    if v["ok"] == true {
        Ok(v)
    } else {
        Err(v["error"]
            .as_str()
            .unwrap_or("the daemon refused")
            .to_owned())
    }
}
