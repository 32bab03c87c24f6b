//! Customer-provided keys (SSE-C, docs/FORMAT.md §4.6): a header slot that wraps the file's
//! data key under a key the user holds and envelopefs never stores. The slot keeps only a
//! salted verifier of the key, so a later request with the right key is recognised.
//!
//! ```text
//! K        = the customer key (32 bytes)
//! kek      = derive_key("envelopefs sse-c kek v1", K)
//! vk       = derive_key("envelopefs sse-c verifier v1", K)
//! key id   = hex(keyed_hash(derive_key("envelopefs sse-c id v1", K), "")[0..8])
//! slot body (kind 2, 112 bytes) =
//!   uid (4) ‖ salt (16, random) ‖ verifier = keyed_hash(vk, salt ‖ uid) (32) ‖
//!   nonce (12, random) ‖ AES-256-GCM-SIV(kek, nonce, AD, DEK) ‖ tag (48)
//! AD       = "envelopefs sse-c slot v1" ‖ uid ‖ salt ‖ encoded encryption context (§5)
//! ```

use aes_gcm_siv::aead::{AeadInOut, KeyInit};
use aes_gcm_siv::{Nonce, Tag};

use crate::Aes256GcmSiv;
use zeroize::{Zeroize, Zeroizing};

use super::FormatError;

/// Slot kind of a customer-key slot.
pub const SLOT_KIND_CUSTOMER: u8 = 2;
/// Body length of a customer-key slot.
pub const CUSTOMER_SLOT_LEN: usize = 4 + 16 + 32 + 12 + 48;
const KEK_CONTEXT: &str = "envelopefs sse-c kek v1";
const VERIFIER_CONTEXT: &str = "envelopefs sse-c verifier v1";
const ID_CONTEXT: &str = "envelopefs sse-c id v1";
const SLOT_AD: &[u8] = b"envelopefs sse-c slot v1";

/// A customer-key slot: the data key wrapped for user `uid` under their key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CustomerSlot {
    /// The user whose key wraps the data key.
    pub uid: u32,
    /// Random salt of the verifier.
    pub salt: [u8; 16],
    /// keyed_hash(vk, salt ‖ uid).
    pub verifier: [u8; 32],
    /// Nonce of the wrap.
    pub nonce: [u8; 12],
    /// Wrapped data key and tag.
    pub sealed: [u8; 48],
}

impl CustomerSlot {
    /// The slot body.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CUSTOMER_SLOT_LEN);
        b.extend_from_slice(&self.uid.to_be_bytes());
        b.extend_from_slice(&self.salt);
        b.extend_from_slice(&self.verifier);
        b.extend_from_slice(&self.nonce);
        b.extend_from_slice(&self.sealed);
        b
    }

    /// Parses a slot body.
    pub fn parse(body: &[u8]) -> Result<Self, FormatError> {
        if body.len() != CUSTOMER_SLOT_LEN {
            return Err(FormatError::BadSlot(
                "customer-key slot body is not 112 bytes",
            ));
        }
        Ok(CustomerSlot {
            uid: u32::from_be_bytes(body[..4].try_into().expect("4")),
            salt: body[4..20].try_into().expect("16"),
            verifier: body[20..52].try_into().expect("32"),
            nonce: body[52..64].try_into().expect("12"),
            sealed: body[64..].try_into().expect("48"),
        })
    }
}

/// A customer key, held only in memory: the derived wrapping and verifier keys (the key
/// itself is not kept) and its public id.
pub struct CustomerKey {
    kek: Aes256GcmSiv,
    verifier_key: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CustomerKey({}, [REDACTED])", self.id)
    }
}

fn ad(uid: u32, salt: &[u8; 16], context: &[u8]) -> Vec<u8> {
    [SLOT_AD, &uid.to_be_bytes(), salt, context].concat()
}

impl CustomerKey {
    /// Derives what is kept of customer key `k` (the caller zeroizes `k`).
    pub fn new(k: &[u8; 32]) -> Self {
        let mut kek = blake3::derive_key(KEK_CONTEXT, k);
        let aead = Aes256GcmSiv::new_from_slice(&kek).expect("BUG: 32-byte key rejected");
        kek.zeroize();
        let mut idk = blake3::derive_key(ID_CONTEXT, k);
        let id = super::context::hex(&blake3::keyed_hash(&idk, b"").as_bytes()[..8]);
        idk.zeroize();
        CustomerKey {
            kek: aead,
            verifier_key: Zeroizing::new(blake3::derive_key(VERIFIER_CONTEXT, k)),
            id,
        }
    }

    /// The key's public id (16 hex digits): names it in audit records and `ssec status`.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn verifier(&self, uid: u32, salt: &[u8; 16]) -> blake3::Hash {
        blake3::keyed_hash(
            &self.verifier_key,
            &[salt.as_slice(), &uid.to_be_bytes()].concat(),
        )
    }

    /// Wraps `dek` for `uid` with a fresh `salt` and `nonce` (random; vectors pass fixed ones),
    /// binding the encoded encryption context `context`.
    pub fn wrap(
        &self,
        uid: u32,
        dek: &[u8; 32],
        context: &[u8],
        salt: [u8; 16],
        nonce: [u8; 12],
    ) -> CustomerSlot {
        let mut buf = *dek;
        let tag = self
            .kek
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                &ad(uid, &salt, context),
                (&mut buf[..]).into(),
            )
            .expect("BUG: wrap failed");
        let mut sealed = [0u8; 48];
        sealed[..32].copy_from_slice(&buf);
        sealed[32..].copy_from_slice(&tag);
        buf.zeroize();
        CustomerSlot {
            uid,
            salt,
            verifier: *self.verifier(uid, &salt).as_bytes(),
            nonce,
            sealed,
        }
    }

    /// Whether `slot` was made with this key (constant-time compare of the verifier).
    pub fn matches(&self, slot: &CustomerSlot) -> bool {
        self.verifier(slot.uid, &slot.salt) == blake3::Hash::from(slot.verifier)
    }

    /// Unwraps the data key of `slot` (made with this key for the context `context`).
    pub fn unwrap(
        &self,
        slot: &CustomerSlot,
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, FormatError> {
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&slot.sealed[..32]);
        let tag = Tag::from(<[u8; 16]>::try_from(&slot.sealed[32..]).expect("16"));
        self.kek
            .decrypt_inout_detached(
                &Nonce::from(slot.nonce),
                &ad(slot.uid, &slot.salt, context),
                (&mut out[..]).into(),
                &tag,
            )
            .map_err(|_| FormatError::HeaderAuthFailed)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_match_unwrap_and_what_fails() {
        let k = CustomerKey::new(&[1; 32]);
        let other = CustomerKey::new(&[2; 32]);
        assert_ne!(k.id(), other.id());
        assert_eq!(k.id().len(), 16);
        let s = k.wrap(1000, &[9; 32], b"ctx", [3; 16], [4; 12]);
        assert_eq!(CustomerSlot::parse(&s.encode()).unwrap(), s);
        assert!(k.matches(&s));
        assert!(!other.matches(&s));
        assert_eq!(*k.unwrap(&s, b"ctx").unwrap(), [9; 32]);
        assert!(k.unwrap(&s, b"other file").is_err(), "context bound");
        let mut moved = s.clone();
        moved.uid = 1001;
        assert!(!k.matches(&moved), "uid bound in the verifier");
        assert!(k.unwrap(&moved, b"ctx").is_err(), "uid bound in the AD");
        assert!(CustomerSlot::parse(&[0; 111]).is_err());
        assert!(!format!("{k:?}").contains("01"), "no key bytes in Debug");
    }
}
