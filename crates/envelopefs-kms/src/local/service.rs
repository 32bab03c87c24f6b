//! The data-key operations of [`LocalKms`] (the [`KeyService`] impl): a data key wrapped
//! under, unwrapped from or moved between CMK versions, in the blob layout described in
//! [`crate::local`].

use envelopefs_format::context::EncryptionContext;

use super::{Event, LocalKms, Op};
use crate::keystore::Keystore;
use crate::secret::KeyMaterial;
use crate::{Caller, DataKey, KeyError, KeyId, KeyMetadata, KeyService, KeyState, WrappedKey};

/// Domain-separation prefix of a wrapped data key's associated data.
const DEK_AAD: &[u8] = b"envelopefs wrapped dek v1";
/// blake3 `derive_key` context for the key-encryption key of one CMK version.
const KEK_CONTEXT: &str = "envelopefs cmk wrap v1";

impl KeyService for LocalKms {
    fn generate_data_key(
        &self,
        key: &str,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<(DataKey, WrappedKey), KeyError> {
        self.refresh_quietly();
        let ks = self.read();
        let mut ev = Event::key(key);
        ev.context = Some(context);
        let result = ks.resolve(key).and_then(|id| {
            ev.key = Some(id.to_string());
            ev.authorized_by =
                self.authorize(&ks, Op::GenerateDataKey, Some(&id), caller, context)?;
            let dek = DataKey::random();
            let wrapped = wrap(&ks, &id, &dek, context)?;
            Ok((dek, wrapped))
        });
        drop(ks);
        ev.version = result.as_ref().ok().map(|(_, w)| w.version);
        self.record(Op::GenerateDataKey, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    fn decrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        caller: &Caller,
    ) -> Result<DataKey, KeyError> {
        self.refresh_quietly();
        let ks = self.read();
        let mut by = None;
        let result = ks.require_exists(&wrapped.key_id).and_then(|()| {
            by = self.authorize(&ks, Op::Decrypt, Some(&wrapped.key_id), caller, context)?;
            unwrap(&ks, wrapped, context)
        });
        drop(ks);
        let ev = Event {
            key: Some(wrapped.key_id.to_string()),
            version: Some(wrapped.version),
            context: Some(context),
            authorized_by: by,
            ..Event::default()
        };
        self.record(Op::Decrypt, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    fn re_encrypt(
        &self,
        wrapped: &WrappedKey,
        context: &EncryptionContext,
        destination: &str,
        caller: &Caller,
    ) -> Result<WrappedKey, KeyError> {
        self.refresh_quietly();
        let ks = self.read();
        let mut by = None;
        let result = ks.require_exists(&wrapped.key_id).and_then(|()| {
            by = self.authorize(
                &ks,
                Op::ReEncryptFrom,
                Some(&wrapped.key_id),
                caller,
                context,
            )?;
            let dest = ks.resolve(destination)?;
            self.authorize(&ks, Op::ReEncryptTo, Some(&dest), caller, context)?;
            let dek = unwrap(&ks, wrapped, context)?;
            wrap(&ks, &dest, &dek, context)
        });
        drop(ks);
        let ev = Event {
            key: Some(wrapped.key_id.to_string()),
            version: Some(wrapped.version),
            context: Some(context),
            destination: Some(match &result {
                Ok(w) => (w.key_id.to_string(), Some(w.version)),
                Err(_) => (destination.to_owned(), None),
            }),
            authorized_by: by,
            ..Event::default()
        };
        self.record(Op::ReEncryptFrom, ev, caller, result.as_ref().map(|_| ()));
        result
    }

    fn describe_key(&self, key: &str) -> Result<KeyMetadata, KeyError> {
        self.describe(key, &Caller::current())
    }

    fn generation(&self) -> u64 {
        self.current_generation()
    }

    fn audit_customer_key(
        &self,
        event: &str,
        key_id: &str,
        context: Option<&EncryptionContext>,
        caller: &Caller,
        error: Option<&KeyError>,
    ) {
        self.record_customer(event, key_id, context, caller, error);
    }
}

/// Fails unless a key in `state` may wrap or unwrap; the message names the key, the reason
/// and what to do.
pub(crate) fn require_usable(state: KeyState, id: &KeyId) -> Result<(), KeyError> {
    let key_id = id.to_string();
    match state {
        KeyState::Enabled => Ok(()),
        KeyState::Disabled => Err(KeyError::Disabled { key_id }),
        KeyState::PendingDeletion => Err(KeyError::PendingDeletion { key_id }),
        KeyState::PendingImport => Err(KeyError::InvalidState {
            key_id,
            state: "PendingImport (it has no key material; import it with `envelopefs key import`)"
                .into(),
        }),
    }
}

pub(super) fn dek_aad(id: &KeyId, version: u32, context: &EncryptionContext) -> Vec<u8> {
    [DEK_AAD, &id.0, &version.to_be_bytes(), &context.encode()].concat()
}

pub(crate) fn kek(material: &KeyMaterial) -> KeyMaterial {
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
    let key = ks
        .version_key(id, version)
        .ok_or_else(|| KeyError::InvalidState {
            key_id: id.to_string(),
            state: "without material".into(),
        })?;
    let blob = key.wrap(dek, &dek_aad(id, version, context))?;
    log::debug!("wrapped a data key under key {id} version {version}");
    Ok(WrappedKey {
        key_id: *id,
        version,
        blob,
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
    let Some(key) = ks.version_key(id, wrapped.version) else {
        let deleted = rec
            .versions()
            .iter()
            .any(|v| v.version == wrapped.version && !v.has_material());
        if deleted {
            return Err(KeyError::InvalidState {
                key_id: id.to_string(),
                state: format!(
                    "Enabled, but the imported material of version {} was deleted; import it again with `envelopefs key import`",
                    wrapped.version
                ),
            });
        }
        return Err(KeyError::InvalidCiphertext);
    };
    let dek = key
        .unwrap(&wrapped.blob, &dek_aad(id, wrapped.version, context))
        .inspect_err(|e| {
            if matches!(e, KeyError::InvalidState { .. }) {
                log::error!("key {id} version {}: {e}", wrapped.version);
            }
        })?;
    log::debug!(
        "unwrapped a data key under key {id} version {}",
        wrapped.version
    );
    Ok(dek)
}
