//! [`LocalKms`]: the embedded key service, modelled on AWS KMS, over a [`Keystore`] file.
//!
//! # Wrapped data key (the `blob` of a [`WrappedKey`]), version 1
//!
//! For a data key `DEK` (32 B) wrapped under version `v` of CMK `K` (material `M`, 32 B):
//!
//! ```text
//! kek   = blake3::derive_key("envelopefs cmk wrap v1", M)               (32 B)
//! blob  = nonce (12 B, random) ‖ AES-256-GCM-SIV_kek(DEK) (32 B) ‖ tag (16 B)    = 60 B
//! associated data = "envelopefs wrapped dek v1" (25 B ASCII)
//!                 ‖ K (16 raw UUID bytes) ‖ v (u32 BE) ‖ EncryptionContext::encode()
//! ```
//!
//! `K` and `v` travel beside the blob (in [`WrappedKey`], i.e. in the file header's key slot);
//! being in the associated data, a blob moved to another key, version or context fails to open.
//!
//! # Errors, in the order they are checked (as KMS does)
//!
//! unknown key or alias → `NotFound`; caller not allowed → `AccessDenied` (not yet enforced);
//! key Disabled → `Disabled`; PendingDeletion → `PendingDeletion`; PendingImport →
//! `InvalidState`; unknown version, blob length ≠ 60, or authentication failure →
//! `InvalidCiphertext`.

use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::format::context::EncryptionContext;
use crate::keys::keystore::{self, Keystore, Origin};
use crate::keys::secret::{self, KeyMaterial, Unlock};
use crate::keys::{
    Caller, DataKey, KeyError, KeyId, KeyMetadata, KeyService, KeyState, WrappedKey,
};

/// Domain-separation prefix of a wrapped data key's associated data.
const DEK_AAD: &[u8] = b"envelopefs wrapped dek v1";
/// blake3 `derive_key` context for the key-encryption key of one CMK version.
const KEK_CONTEXT: &str = "envelopefs cmk wrap v1";
/// How long a key stays PendingDeletion when `set_state` schedules its deletion (KMS default).
pub const DEFAULT_DELETION_WINDOW_DAYS: u64 = 30;

/// What a caller asks to do; the unit of authorization (and, later, of audit records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    GenerateDataKey,
    Decrypt,
    ReEncryptFrom,
    ReEncryptTo,
    DescribeKey,
    ListKeys,
    CreateKey,
    RotateKey,
    SetKeyState,
    CreateAlias,
}

/// The embedded key service. `Send + Sync`; share it behind an `Arc`.
pub struct LocalKms {
    /// Guards the keystore: key records, aliases and decrypted CMK material. Wrap, unwrap,
    /// describe and list hold it shared; mutations (create_key, rotate, set_state,
    /// create_alias) hold it exclusively across the keystore's atomic save, so no operation
    /// sees a state that is not also on disk.
    store: RwLock<Keystore>,
}

impl std::fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKms")
            .field("keystore", &self.read().path().map(Path::to_owned))
            .finish()
    }
}

impl LocalKms {
    /// Opens the keystore at `path` (runs the passphrase KDF once).
    pub fn open(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        Ok(Self::from_keystore(Keystore::open(path, unlock)?))
    }

    /// Creates a new keystore at `path` with one CMK aliased `alias/default`.
    pub fn create(path: &Path, unlock: &Unlock) -> Result<Self, KeyError> {
        Ok(Self::from_keystore(Keystore::create(path, unlock)?))
    }

    /// Serves an already opened keystore.
    pub fn from_keystore(keystore: Keystore) -> Self {
        LocalKms {
            store: RwLock::new(keystore),
        }
    }

    /// An in-memory service with a random root key and one Enabled CMK aliased
    /// `alias/default`; nothing touches the disk and no KDF runs. For tests.
    pub fn in_memory_for_tests() -> Self {
        Self::from_keystore(Keystore::in_memory())
    }

    /// Metadata of every CMK, in creation order.
    pub fn list_keys(&self) -> Vec<KeyMetadata> {
        let ks = self.read();
        let _ = authorize(Op::ListKeys, None, None);
        ks.keys()
            .iter()
            .map(|r| metadata(&ks, &r.key_id()))
            .collect()
    }

    /// Creates an Enabled CMK with fresh material and saves the keystore.
    pub fn create_key(&self, description: &str, caller: &Caller) -> Result<KeyMetadata, KeyError> {
        let mut ks = self.write();
        authorize(Op::CreateKey, None, Some(caller))?;
        let id = ks.create_key(description)?;
        Ok(metadata(&ks, &id))
    }

    /// Adds a material version to `key` (on-demand rotation). New wraps use it; data keys
    /// wrapped under older versions still unwrap. Returns the new version number.
    pub fn rotate(&self, key: &str, caller: &Caller) -> Result<u32, KeyError> {
        let mut ks = self.write();
        let id = ks.resolve(key)?;
        authorize(Op::RotateKey, Some(&id), Some(caller))?;
        let rec = ks.key(&id).expect("resolved");
        require_usable(rec.state, &id)?;
        if rec.origin != Origin::AwsKms {
            return Err(KeyError::Unsupported(format!(
                "key {id} has imported material and cannot be rotated"
            )));
        }
        let v = ks.add_version(&id)?;
        log::debug!("rotated key {id} to version {v}");
        Ok(v)
    }

    /// Enables or disables `key`, schedules its deletion (`PendingDeletion`, in
    /// [`DEFAULT_DELETION_WINDOW_DAYS`] days) or cancels it (`Disabled`, as KMS's
    /// CancelKeyDeletion does). Saves the keystore.
    pub fn set_state(
        &self,
        key: &str,
        state: KeyState,
        caller: &Caller,
    ) -> Result<KeyMetadata, KeyError> {
        let mut ks = self.write();
        let id = ks.resolve(key)?;
        authorize(Op::SetKeyState, Some(&id), Some(caller))?;
        ks.update_key(&id, |rec| {
            match (rec.state, state) {
                (_, KeyState::PendingImport) => {
                    return Err(KeyError::InvalidArgument(
                        "a key cannot be put into state PendingImport".into(),
                    ));
                }
                (KeyState::PendingImport, _) => {
                    return Err(KeyError::InvalidState {
                        key_id: id.to_string(),
                        state: "PendingImport".into(),
                    });
                }
                (KeyState::PendingDeletion, KeyState::Enabled) => {
                    return Err(KeyError::PendingDeletion {
                        key_id: id.to_string(),
                    });
                }
                (_, KeyState::PendingDeletion) => {
                    let window = DEFAULT_DELETION_WINDOW_DAYS * 86_400;
                    rec.deletion_date
                        .get_or_insert(keystore::now_secs() + window);
                }
                _ => rec.deletion_date = None,
            }
            rec.state = state;
            Ok(())
        })?;
        log::debug!("key {id} is now {state:?}");
        Ok(metadata(&ks, &id))
    }

    /// Creates `alias` (`alias/` + 1–250 of `[A-Za-z0-9:/_-]`, not `alias/aws/...`) pointing
    /// at `key` (a key id or another alias). Saves the keystore.
    pub fn create_alias(&self, alias: &str, key: &str, caller: &Caller) -> Result<(), KeyError> {
        let mut ks = self.write();
        let name = alias.strip_prefix("alias/").unwrap_or("");
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_-:".contains(&b));
        if name.is_empty() || alias.len() > 256 || !valid_chars || name.starts_with("aws/") {
            return Err(KeyError::InvalidArgument(format!(
                "alias name {alias:?}: use alias/ followed by letters, digits, '/', '_', '-' or ':' \
                 (at most 256 characters; alias/aws/ is reserved)"
            )));
        }
        if ks.aliases().contains_key(alias) {
            return Err(KeyError::AlreadyExists(format!("alias {alias}")));
        }
        let id = ks.resolve(key)?;
        authorize(Op::CreateAlias, Some(&id), Some(caller))?;
        ks.set_alias(alias, Some(&id))?;
        log::debug!("alias {alias} now points at key {id}");
        Ok(())
    }

    fn read(&self) -> RwLockReadGuard<'_, Keystore> {
        // A panic while holding the lock cannot leave the keystore half-changed: every mutation
        // is transactional (Keystore::transact), so a poisoned lock is still safe to use.
        self.store.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keystore> {
        self.store.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyService for LocalKms {
    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<(DataKey, WrappedKey), KeyError> {
        let ks = self.read();
        let id = ks.resolve(key)?;
        authorize(Op::GenerateDataKey, Some(&id), Some(caller))?;
        let dek = DataKey::random();
        let wrapped = wrap(&ks, &id, &dek, context)?;
        Ok((dek, wrapped))
    }

    fn decrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<DataKey, KeyError> {
        let ks = self.read();
        authorize(Op::Decrypt, Some(&wrapped.key_id), Some(caller))?;
        unwrap(&ks, wrapped, context)
    }

    fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        destination: &str,
        caller: &Caller,
    ) -> Result<WrappedKey, KeyError> {
        let ks = self.read();
        authorize(Op::ReEncryptFrom, Some(&wrapped.key_id), Some(caller))?;
        let dest = ks.resolve(destination)?;
        authorize(Op::ReEncryptTo, Some(&dest), Some(caller))?;
        let dek = unwrap(&ks, wrapped, context)?;
        wrap(&ks, &dest, &dek, context)
    }

    fn describe_key(&self, key: &str) -> Result<KeyMetadata, KeyError> {
        let ks = self.read();
        let id = ks.resolve(key)?;
        authorize(Op::DescribeKey, Some(&id), None)?;
        Ok(metadata(&ks, &id))
    }
}

/// The single place where every operation is checked before it runs.
///
/// TODO(KMS lifecycle issue: key policies, grants, audit log): evaluate the key policy and
/// grants for `caller` here, and emit the audit record for `op` from here too. Until then
/// every caller may do everything (the keystore passphrase is the only gate).
fn authorize(op: Op, key: Option<&KeyId>, caller: Option<&Caller>) -> Result<(), KeyError> {
    match (key, caller) {
        (Some(k), Some(c)) => log::debug!("{op:?} key {k} by uid {} pid {}", c.uid, c.pid),
        (Some(k), None) => log::debug!("{op:?} key {k}"),
        (None, _) => log::debug!("{op:?}"),
    }
    Ok(())
}

/// Fails unless a key in `state` may wrap or unwrap.
fn require_usable(state: KeyState, id: &KeyId) -> Result<(), KeyError> {
    let key_id = id.to_string();
    match state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KeyError::Disabled { key_id }),
        KeyState::PendingDeletion => Err(KeyError::PendingDeletion { key_id }),
        KeyState::PendingImport => Err(KeyError::InvalidState {
            key_id,
            state: "PendingImport".into(),
        }),
    }
}

fn dek_aad(id: &KeyId, version: u32, context: &EncryptionContext) -> Vec<u8> {
    [DEK_AAD, &id.0, &version.to_be_bytes(), &context.encode()].concat()
}

fn kek(material: &KeyMaterial) -> KeyMaterial {
    KeyMaterial::from_bytes(blake3::derive_key(KEK_CONTEXT, material.expose_secret()))
}

/// Wraps `dek` under the newest version of `id`.
fn wrap(
    ks: &Keystore,
    id: &KeyId,
    dek: &DataKey,
    context: &EncryptionContext,
) -> Result<WrappedKey, KeyError> {
    let rec = ks
        .key(id)
        .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
    require_usable(rec.state, id)?;
    let version = rec.current_version();
    let material = ks
        .material(id, version)
        .ok_or_else(|| KeyError::InvalidState {
            key_id: id.to_string(),
            state: "without material".into(),
        })?;
    let blob = secret::seal32(
        kek(material).expose_secret(),
        &dek_aad(id, version, context),
        dek.expose_secret(),
    )?;
    log::debug!("wrapped a data key under key {id} version {version}");
    Ok(WrappedKey {
        key_id: *id,
        version,
        blob: blob.to_vec(),
    })
}

/// Unwraps a data key after checking its CMK's state.
fn unwrap(
    ks: &Keystore,
    wrapped: &WrappedKey,
    context: &EncryptionContext,
) -> Result<DataKey, KeyError> {
    let id = &wrapped.key_id;
    let rec = ks
        .key(id)
        .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
    require_usable(rec.state, id)?;
    let material = ks
        .material(id, wrapped.version)
        .ok_or(KeyError::InvalidCiphertext)?;
    let mut dek = DataKey::zeroed();
    let aad = dek_aad(id, wrapped.version, context);
    secret::open32(
        kek(material).expose_secret(),
        &aad,
        &wrapped.blob,
        dek.expose_secret_mut(),
    )?;
    log::debug!(
        "unwrapped a data key under key {id} version {}",
        wrapped.version
    );
    Ok(dek)
}

fn metadata(ks: &Keystore, id: &KeyId) -> KeyMetadata {
    let rec = ks.key(id).expect("BUG: metadata of a resolved key");
    KeyMetadata {
        key_id: id.to_string(),
        aliases: ks.aliases_of(id),
        description: rec.description.clone(),
        creation_date: rec.creation_date,
        state: rec.state,
        current_version: rec.current_version(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Caller = Caller {
        uid: 1000,
        gid: 1000,
        pid: 1,
    };

    fn ctx(file: u8) -> EncryptionContext {
        EncryptionContext::for_file("vol-1", &[file; 16])
    }

    #[test]
    fn generate_then_decrypt_round_trips() {
        let kms = LocalKms::in_memory_for_tests();
        let (dek, w) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        assert_eq!((w.blob.len(), w.version), (60, 1));
        let back = kms.decrypt(&w, &ctx(1), &ME).unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
        let (dek2, w2) = kms
            .generate_data_key(&w.key_id.to_string(), &ctx(1), &ME)
            .unwrap();
        assert_ne!(dek2.expose_secret(), dek.expose_secret());
        assert_ne!(w2.blob, w.blob);
    }

    #[test]
    fn altered_context_blob_version_or_key_is_invalid_ciphertext() {
        let kms = LocalKms::in_memory_for_tests();
        let (_, w) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        let invalid = |w: &WrappedKey, c: &EncryptionContext| {
            matches!(kms.decrypt(w, c, &ME), Err(KeyError::InvalidCiphertext))
        };
        assert!(invalid(&w, &ctx(2)));
        assert!(invalid(&w, &EncryptionContext::new()));
        for i in 0..w.blob.len() {
            let mut bad = w.clone();
            bad.blob[i] ^= 0x80;
            assert!(invalid(&bad, &ctx(1)), "flipped byte {i}");
        }
        let mut short = w.clone();
        short.blob.pop();
        assert!(invalid(&short, &ctx(1)));
        let mut v2 = w.clone();
        v2.version = 2;
        assert!(invalid(&v2, &ctx(1)));
        let other = kms.create_key("other", &ME).unwrap();
        let mut moved = w.clone();
        moved.key_id = other.key_id.parse().unwrap();
        assert!(invalid(&moved, &ctx(1)));
        let mut unknown = w.clone();
        unknown.key_id = KeyId([0; 16]);
        assert!(matches!(
            kms.decrypt(&unknown, &ctx(1), &ME),
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            kms.generate_data_key("alias/nope", &ctx(1), &ME),
            Err(KeyError::NotFound(_))
        ));
        assert!(matches!(
            kms.describe_key("not-a-uuid"),
            Err(KeyError::NotFound(_))
        ));
    }

    #[test]
    fn disabled_and_pending_deletion_keys_refuse_work() {
        let kms = LocalKms::in_memory_for_tests();
        let (dek, w) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        kms.set_state("alias/default", KeyState::Disabled, &ME)
            .unwrap();
        assert!(matches!(
            kms.decrypt(&w, &ctx(1), &ME),
            Err(KeyError::Disabled { .. })
        ));
        assert!(matches!(
            kms.generate_data_key("alias/default", &ctx(1), &ME),
            Err(KeyError::Disabled { .. })
        ));
        assert!(matches!(
            kms.rotate("alias/default", &ME),
            Err(KeyError::Disabled { .. })
        ));
        let m = kms
            .set_state("alias/default", KeyState::PendingDeletion, &ME)
            .unwrap();
        assert_eq!(m.state, KeyState::PendingDeletion);
        assert!(matches!(
            kms.decrypt(&w, &ctx(1), &ME),
            Err(KeyError::PendingDeletion { .. })
        ));
        assert!(matches!(
            kms.set_state("alias/default", KeyState::Enabled, &ME),
            Err(KeyError::PendingDeletion { .. })
        ));
        kms.set_state("alias/default", KeyState::Disabled, &ME)
            .unwrap(); // cancel deletion
        kms.set_state("alias/default", KeyState::Enabled, &ME)
            .unwrap();
        assert_eq!(
            kms.decrypt(&w, &ctx(1), &ME).unwrap().expose_secret(),
            dek.expose_secret()
        );
    }

    #[test]
    fn rotation_adds_a_version_and_old_wraps_still_decrypt() {
        let kms = LocalKms::in_memory_for_tests();
        let (dek1, w1) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        assert_eq!(kms.rotate("alias/default", &ME).unwrap(), 2);
        let (dek2, w2) = kms
            .generate_data_key("alias/default", &ctx(2), &ME)
            .unwrap();
        assert_eq!((w1.version, w2.version), (1, 2));
        assert_eq!(
            kms.decrypt(&w1, &ctx(1), &ME).unwrap().expose_secret(),
            dek1.expose_secret()
        );
        assert_eq!(
            kms.decrypt(&w2, &ctx(2), &ME).unwrap().expose_secret(),
            dek2.expose_secret()
        );
        assert_eq!(
            kms.describe_key("alias/default").unwrap().current_version,
            2
        );
    }

    #[test]
    fn re_encrypt_moves_a_wrap_to_another_key() {
        let kms = LocalKms::in_memory_for_tests();
        let (dek, w) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        let other = kms.create_key("archive", &ME).unwrap();
        kms.create_alias("alias/archive", &other.key_id, &ME)
            .unwrap();
        let moved = kms.re_encrypt(&w, &ctx(1), "alias/archive", &ME).unwrap();
        assert_eq!(moved.key_id.to_string(), other.key_id);
        assert_eq!(
            kms.decrypt(&moved, &ctx(1), &ME).unwrap().expose_secret(),
            dek.expose_secret()
        );
        assert!(matches!(
            kms.re_encrypt(&w, &ctx(9), "alias/archive", &ME),
            Err(KeyError::InvalidCiphertext)
        ));
        kms.rotate("alias/default", &ME).unwrap();
        let same = kms.re_encrypt(&w, &ctx(1), "alias/default", &ME).unwrap();
        assert_eq!(same.version, 2);
        assert_eq!(
            kms.decrypt(&same, &ctx(1), &ME).unwrap().expose_secret(),
            dek.expose_secret()
        );
    }

    #[test]
    fn aliases_and_listing() {
        let kms = LocalKms::in_memory_for_tests();
        let k = kms.create_key("second", &ME).unwrap();
        kms.create_alias("alias/team-a/logs", &k.key_id, &ME)
            .unwrap();
        assert!(matches!(
            kms.create_alias("alias/team-a/logs", &k.key_id, &ME),
            Err(KeyError::AlreadyExists(_))
        ));
        for bad in ["team", "alias/", "alias/aws/x", "alias/sp ace"] {
            assert!(
                matches!(
                    kms.create_alias(bad, &k.key_id, &ME),
                    Err(KeyError::InvalidArgument(_))
                ),
                "{bad}"
            );
        }
        let list = kms.list_keys();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].aliases, vec!["alias/default".to_string()]);
        assert_eq!(list[1].aliases, vec!["alias/team-a/logs".to_string()]);
        assert_eq!(kms.describe_key("alias/team-a/logs").unwrap(), list[1]);
    }

    #[test]
    fn changes_persist_across_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keystore.json");
        let key = Unlock::random_keyfile();
        let kms = LocalKms::create(&p, &key).unwrap();
        let (dek1, w1) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        kms.rotate("alias/default", &ME).unwrap();
        let (dek2, w2) = kms
            .generate_data_key("alias/default", &ctx(1), &ME)
            .unwrap();
        let k = kms.create_key("x", &ME).unwrap();
        kms.set_state(&k.key_id, KeyState::Disabled, &ME).unwrap();
        drop(kms);
        let kms = LocalKms::open(&p, &key).unwrap();
        assert_eq!(
            kms.decrypt(&w1, &ctx(1), &ME).unwrap().expose_secret(),
            dek1.expose_secret()
        );
        assert_eq!(
            kms.decrypt(&w2, &ctx(1), &ME).unwrap().expose_secret(),
            dek2.expose_secret()
        );
        assert_eq!(
            kms.describe_key(&k.key_id).unwrap().state,
            KeyState::Disabled
        );
    }

    #[test]
    fn shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<LocalKms>();
        let kms = std::sync::Arc::new(LocalKms::in_memory_for_tests());
        let handles: Vec<_> = (0..4u8)
            .map(|i| {
                let kms = kms.clone();
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let (dek, w) = kms
                            .generate_data_key("alias/default", &ctx(i), &ME)
                            .unwrap();
                        assert_eq!(
                            kms.decrypt(&w, &ctx(i), &ME).unwrap().expose_secret(),
                            dek.expose_secret()
                        );
                    }
                })
            })
            .collect();
        kms.rotate("alias/default", &ME).unwrap();
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    /// The test vector in docs/FORMAT.md (its AES-GCM-SIV part was cross-checked against
    /// Python `cryptography`'s AESGCMSIV). Inputs: material 0x11×32, key id 0x22×16,
    /// version 3, context for_file("vol-1", 0x55×16), nonce 0x33×12, DEK 0x44×32.
    #[test]
    fn wrapped_key_test_vector() {
        use crate::format::context::hex;
        let k = kek(&KeyMaterial::from_bytes([0x11; 32]));
        assert_eq!(
            hex(k.expose_secret()),
            "07c505110be36527d4d5f052ed1ced2ebde440a9aaaae6cb2d07ce0cd8801af9"
        );
        let aad = dek_aad(
            &KeyId([0x22; 16]),
            3,
            &EncryptionContext::for_file("vol-1", &[0x55; 16]),
        );
        let blob =
            secret::seal32_with_nonce(k.expose_secret(), &aad, &[0x44; 32], [0x33; 12]).unwrap();
        assert_eq!(
            hex(&blob),
            "333333333333333333333333e193d2d6bf7e5258bac29c51538a2a2964b4359a\
             f8531e8aaca636850e10579db9cc04758f88637174027bf8f61f0b57"
        );
        let mut out = [0u8; 32];
        secret::open32(k.expose_secret(), &aad, &blob, &mut out).unwrap();
        assert_eq!(out, [0x44; 32]);
    }
}
