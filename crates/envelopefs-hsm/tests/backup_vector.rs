//! Vector `hsm-backup-1` of docs/FORMAT.md §6.6 restored into a SoftHSM2 token: the token
//! unwraps the EBK under the backup key and the CMK under the EBK (RFC 5649, as OpenSSL
//! computed the vector), and the restored key encrypts as the vector's key does. A vector
//! with one flipped byte restores nothing.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use envelopefs_hsm::backup::{self, BackupKey};
use envelopefs_hsm::backup_file::{doc_vector, unhex};
use envelopefs_hsm::softhsm::{SO_PIN, TestToken, USER_PIN};

fn pin(s: &str) -> envelopefs_hsm::Pin {
    envelopefs_hsm::Pin::from_bytes(zeroize::Zeroizing::new(s.as_bytes().to_vec())).unwrap()
}

#[test]
fn the_vector_restores_into_a_token() {
    let Some(t) = TestToken::new("vector") else {
        return;
    };
    t.use_in_this_process();
    let v = doc_vector("hsm-backup-1");
    let file = unhex(&v["file"]);
    let bk = BackupKey::from_bytes(&unhex(&v["bk"])).unwrap();

    let mut bad = file.clone();
    bad[100] ^= 1;
    let e =
        backup::restore(&t.module, "vector", &pin(USER_PIN), &pin(SO_PIN), &bk, &bad).unwrap_err();
    assert!(e.to_string().contains("altered"), "{e}");

    let restored = backup::restore(
        &t.module,
        "vector",
        &pin(USER_PIN),
        &pin(SO_PIN),
        &bk,
        &file,
    )
    .unwrap();
    assert_eq!(restored, vec![v["label"].clone()]);

    let ctx = cryptoki::context::Pkcs11::new(&t.module).unwrap();
    // The module is already initialised by the restore (one context per process).
    let _ = ctx.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == "vector")
        .unwrap();
    let s = ctx.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap();
    let h = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(v["label"].as_bytes().to_vec()),
        ])
        .unwrap()[0];
    let out = s.encrypt(&Mechanism::AesEcb, h, &[0u8; 16]).unwrap();
    assert_eq!(out, unhex(&v["ecb_zero"]));
}
