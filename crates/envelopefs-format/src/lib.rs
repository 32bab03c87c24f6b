//! The on-disk format, pure: bytes in, types out. No I/O, no fuser, no libc, no logging.
//! docs/FORMAT.md is the contract this module implements; `vectors` checks its test vectors.

pub mod block;
pub mod context;
pub mod customer;
pub mod error;
pub mod header;
pub mod layout;
pub mod names;
pub mod volume;

pub use error::FormatError;

/// AES-256-GCM-SIV (RFC 8452), the one AEAD of the format, over the encryption-only AES-256
/// key schedule: GCM-SIV runs AES forwards only (key derivation, counter mode, the tag), so
/// the inverse round keys that `aes::Aes256` would also expand for every nonce's derived key
/// are never needed. The bytes are those of `aes_gcm_siv::Aes256GcmSiv`. Round keys and the
/// POLYVAL key are wiped on drop (the `zeroize` features of `aes` and `polyval`).
pub type Aes256GcmSiv = aes_gcm_siv::AesGcmSiv<aes::Aes256Enc>;

#[cfg(test)]
mod tests {
    use aes_gcm_siv::aead::{AeadInOut, KeyInit};

    /// Fails to compile if the `aes` crate's `zeroize` feature is lost: aes-gcm-siv's own
    /// `zeroize` feature does not enable it, and without it the round keys of every file's
    /// block key are dropped unwiped.
    #[test]
    fn aead_round_keys_are_wiped_on_drop() {
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<aes::Aes256Enc>();
    }

    /// The encryption-only key schedule changes nothing on the wire: the same key, nonce, AD
    /// and message give the same ciphertext and tag as the crate's own `Aes256GcmSiv`, and
    /// each opens the other's.
    #[test]
    fn aead_is_the_crates_aes256gcmsiv() {
        let key = [7u8; 32];
        let nonce = [9u8; 12].into();
        for len in [0usize, 1, 16, 4095, 4096] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
            let (mut ours, mut theirs) = (msg.clone(), msg.clone());
            let tag = super::Aes256GcmSiv::new(&key.into())
                .encrypt_inout_detached(&nonce, b"ad", ours.as_mut_slice().into())
                .unwrap();
            let their_tag = aes_gcm_siv::Aes256GcmSiv::new(&key.into())
                .encrypt_inout_detached(&nonce, b"ad", theirs.as_mut_slice().into())
                .unwrap();
            assert_eq!((&ours, tag), (&theirs, their_tag), "{len}-byte message");
            aes_gcm_siv::Aes256GcmSiv::new(&key.into())
                .decrypt_inout_detached(&nonce, b"ad", ours.as_mut_slice().into(), &tag)
                .unwrap();
            assert_eq!(ours, msg);
        }
    }
}
