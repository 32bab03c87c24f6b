//! The keystore's operations on CMK material: making, sealing, installing and destroying it,
//! and the keyed helpers of import (material fingerprints, import-token MACs, sealed secrets).
//! All of them change memory only; callers run them inside [`Keystore::transact`], which saves.

use std::collections::BTreeMap;

use crate::keystore::{
    DeletedKey, KeyRecord, Keystore, Origin, RotationType, VersionRecord, material_aad,
};
use crate::secret::{self, KeyMaterial, seal32};
use crate::{KeyError, KeyId};
use envelopefs_format::context::hex;

impl Keystore {
    /// Seals `m` as the material of version `version` of `id` (hex for the key record).
    pub(super) fn seal_material(
        &self,
        id: &KeyId,
        version: u32,
        m: &KeyMaterial,
    ) -> Result<String, KeyError> {
        let sealed = seal32(
            self.keys.wrap.expose_secret(),
            &material_aad(id, version),
            m.expose_secret(),
        )?;
        Ok(hex(&sealed))
    }

    /// Makes `m` the in-memory material of (`id`, `version`).
    pub(super) fn install_material(&mut self, id: &KeyId, version: u32, m: KeyMaterial) {
        self.materials.insert((*id, version), m);
    }

    /// Forgets the in-memory material of every version of `id` for which `drop_it` holds.
    pub(super) fn forget_materials(&mut self, id: &KeyId, drop_it: impl Fn(u32) -> bool) {
        self.materials.retain(|(k, v), _| k != id || !drop_it(*v));
    }

    /// A keyed fingerprint of imported material for `id`: lets a re-import be checked to be
    /// the same material without keeping the material (hex).
    pub(super) fn material_digest(&self, id: &KeyId, m: &KeyMaterial) -> String {
        let mut h = blake3::Hasher::new_keyed(self.keys.digest.expose_secret());
        h.update(&id.0);
        h.update(m.expose_secret());
        h.finalize().to_hex().to_string()
    }

    /// MAC of an import token's body.
    pub(super) fn token_mac(&self, body: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(self.keys.token.expose_secret(), body).as_bytes()
    }

    /// Seals a secret of any length under the wrap key (hex), bound to `aad`.
    pub(super) fn seal_secret(&self, aad: &[u8], secret: &[u8]) -> Result<String, KeyError> {
        Ok(hex(&secret::seal_bytes(
            self.keys.wrap.expose_secret(),
            aad,
            secret,
        )?))
    }

    /// Opens what [`Keystore::seal_secret`] made.
    pub(super) fn open_secret(
        &self,
        aad: &[u8],
        sealed_hex: &str,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        let blob = secret::unhex_vec(sealed_hex).ok_or(KeyError::InvalidCiphertext)?;
        secret::open_bytes(self.keys.wrap.expose_secret(), aad, &blob)
    }

    /// Makes fresh material for version `version` of `id`: kept decrypted in memory, returned
    /// sealed; or, when a token holds the keystore's CMKs, generated in the token.
    fn new_version(
        &mut self,
        id: &KeyId,
        version: u32,
        how: Option<RotationType>,
        now: u64,
    ) -> Result<VersionRecord, KeyError> {
        let (material, token_object) = match &self.custody {
            Some(c) => (None, Some(c.generate(id, version)?)),
            None => {
                let m = KeyMaterial::random();
                let sealed = self.seal_material(id, version, &m)?;
                self.materials.insert((*id, version), m);
                (Some(sealed), None)
            }
        };
        Ok(VersionRecord {
            version,
            created: now,
            rotation_type: how,
            material,
            digest: None,
            token_object,
            extra: BTreeMap::new(),
        })
    }

    /// Appends a fresh material version to `id`, in memory only. Returns its number.
    pub(super) fn push_version(
        &mut self,
        id: &KeyId,
        how: RotationType,
        now: u64,
    ) -> Result<u32, KeyError> {
        let next = self.record_mut(id)?.current_version() + 1;
        let version = self.new_version(id, next, Some(how), now)?;
        let rec = self.record_mut(id)?;
        rec.last_rotation = now;
        rec.versions.push(version);
        Ok(next)
    }

    /// Adds a key, in memory only: Enabled with fresh material, or (EXTERNAL) PendingImport
    /// with none.
    pub(super) fn add_key(
        &mut self,
        description: &str,
        origin: Origin,
        now: u64,
    ) -> Result<KeyId, KeyError> {
        if origin == Origin::External && self.custody.is_some() {
            return Err(KeyError::Unsupported(
                "keys with imported material (origin EXTERNAL) cannot be made in a keystore \
                 whose keys live in a PKCS#11 token; import the material into the token with \
                 its own tools, or use a passphrase keystore"
                    .into(),
            ));
        }
        let id = KeyId(*uuid::Uuid::new_v4().as_bytes());
        let mut rec = KeyRecord::new(id, description, origin, now);
        if origin == Origin::AwsKms {
            rec.versions.push(self.new_version(&id, 1, None, now)?);
        }
        self.body.keys.push(rec);
        log::debug!("created key {id}");
        Ok(id)
    }

    /// Destroys a key for good, in memory only: its record and every material version are
    /// dropped, its aliases deleted, a tombstone kept.
    pub(super) fn destroy_key(&mut self, id: &KeyId, now: u64) -> Result<(), KeyError> {
        self.require_exists(id)?;
        let i = self
            .body
            .keys
            .iter()
            .position(|k| k.key_id == *id)
            .expect("exists");
        let rec = self.body.keys.remove(i);
        self.forget_materials(id, |_| true);
        let s = id.to_string();
        self.body.aliases.retain(|_, t| *t != s);
        self.body.deleted.push(DeletedKey {
            key_id: s,
            deletion_date: now,
            description: rec.description,
        });
        Ok(())
    }
}
