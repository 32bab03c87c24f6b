//! Opening a volume's keystore in whichever custody holds its CMKs: the embedded service
//! (passphrase or key file) or a PKCS#11 token (`envelopefs-hsm`, the token's user PIN).
//! Every command and the daemon open keystores through [`open_kms`].

use std::path::Path;

use crate::keys::KeyError;
use crate::keys::local::LocalKms;
use crate::keys::secret::Unlock;

/// Opens the keystore at `path` with `unlock`: a token PIN goes to the PKCS#11 custody, a
/// passphrase or key file to the embedded service.
pub(crate) fn open_kms(path: &Path, unlock: &Unlock) -> Result<LocalKms, KeyError> {
    match unlock {
        Unlock::HsmPin(pin) => {
            let pin = envelopefs_hsm::Pin::from_bytes(pin.clone())?;
            envelopefs_hsm::open_kms(path, None, pin)
        }
        other => LocalKms::open(path, other),
    }
}

/// Creates a keystore at `path` whose CMKs live in the token labelled `token_label` of the
/// PKCS#11 `module`, logging in with the PIN in `unlock`; with `backup_capable`, its keys
/// may leave the token wrapped by a trusted key (`envelopefs hsm backup`).
pub(crate) fn create_hsm_kms(
    path: &Path,
    module: &Path,
    token_label: &str,
    unlock: &Unlock,
    backup_capable: bool,
) -> Result<LocalKms, KeyError> {
    let Unlock::HsmPin(pin) = unlock else {
        return Err(KeyError::InvalidArgument(
            "a keystore in a PKCS#11 token is unlocked by the token's PIN (--pin-file, \
             ENVELOPEFS_HSM_PIN or the terminal), not a passphrase or key file"
                .into(),
        ));
    };
    let pin = envelopefs_hsm::Pin::from_bytes(pin.clone())?;
    envelopefs_hsm::create_kms(path, module, token_label, pin, backup_capable)
}
