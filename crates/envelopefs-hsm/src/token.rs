//! [`Token`]: one logged-in PKCS#11 token, and its [`Custody`] implementation.
//!
//! One session, logged in as the token user, behind a mutex; a call that fails because the
//! session or the device went away (session closed or invalid, device error or removed, token
//! not present, not logged in) drops the session, opens and logs in a new one and runs once
//! more; if that fails too, the call fails with [`KeyError::Unavailable`] (EIO for the
//! filesystem) and the next call tries to reconnect again. Nothing blocks for longer than the
//! module takes to answer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use envelopefs_kms::custody::{Custody, CustodyInfo, WRAPPED_LEN};
use envelopefs_kms::{KeyError, KeyId};

/// A token PIN. Zeroized on drop; its `Debug` prints nothing of it.
pub struct Pin(AuthPin, Zeroizing<Vec<u8>>);

impl Pin {
    /// Takes the PIN's bytes (UTF-8; one trailing newline, as a PIN file has, is dropped).
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let mut b = bytes;
        while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
            b.pop();
        }
        if b.is_empty() {
            return Err(KeyError::InvalidArgument("the token PIN is empty".into()));
        }
        let s = std::str::from_utf8(&b)
            .map_err(|_| KeyError::InvalidArgument("the token PIN is not UTF-8 text".into()))?;
        Ok(Pin(AuthPin::from(s), b))
    }

    fn auth(&self) -> &AuthPin {
        &self.0
    }

    /// The PIN's bytes (to seal it for a crypto user).
    pub fn expose_secret(&self) -> &[u8] {
        &self.1
    }

    /// `(NAME, PASSWORD)` when the PIN has CloudHSM's crypto-user form `NAME:PASSWORD`.
    pub fn crypto_user(&self) -> Option<(&str, &[u8])> {
        let i = self.1.iter().position(|&c| c == b':')?;
        let name = std::str::from_utf8(&self.1[..i]).ok()?;
        Some((name, &self.1[i + 1..]))
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin([REDACTED])")
    }
}

/// One PKCS#11 token, found by label and logged in as its user.
pub struct Token {
    ctx: Pkcs11,
    module: PathBuf,
    label: String,
    pin: Pin,
    /// New keys are extractable only under a trusted wrapping key (backup-capable).
    backup: AtomicBool,
    /// Guards the one session (`None` after a token error, until the next call reconnects)
    /// and the object handles found through it (cleared with it).
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    handles: HashMap<String, ObjectHandle>,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("module", &self.module)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// The loaded modules, one context each (a module is initialized once per process).
static MODULES: Mutex<Vec<(PathBuf, Pkcs11)>> = Mutex::new(Vec::new());

fn module_context(module: &Path) -> Result<Pkcs11, KeyError> {
    let mut loaded = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, ctx)) = loaded.iter().find(|(p, _)| p == module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| {
        KeyError::Unavailable(format!(
            "cannot load the PKCS#11 module {}: {e}; install it (SoftHSM2: apt-get install \
             libsofthsm2, module /usr/lib/softhsm/libsofthsm2.so) or give its path with \
             --hsm-module",
            module.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(KeyError::Unavailable(format!(
                "cannot initialize the PKCS#11 module {}: {e}",
                module.display()
            )));
        }
    }
    loaded.push((module.to_owned(), ctx.clone()));
    Ok(ctx)
}

/// Whether `e` means the session or the device went away (reconnecting may help).
fn is_connection_error(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError,
            _
        )
    )
}

/// Whether `e` means a cached object handle is stale (the object was destroyed).
fn is_stale_handle(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid, _)
    )
}

/// What a call inside a session failed with.
enum CallError {
    /// A PKCS#11 error (reconnect on a connection error, refind on a stale handle).
    Ck(CkError),
    /// A decided answer (missing object, bad ciphertext): returned as is.
    Key(KeyError),
}

impl From<CkError> for CallError {
    fn from(e: CkError) -> Self {
        CallError::Ck(e)
    }
}

impl Token {
    /// Loads `module`, finds the token labelled `label` and logs in as its user with `pin`.
    pub fn open(module: &Path, label: &str, pin: Pin) -> Result<Self, KeyError> {
        let ctx = module_context(module)?;
        let token = Token {
            ctx,
            module: module.to_owned(),
            label: label.to_owned(),
            pin,
            backup: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        };
        token.lock().session = Some(token.connect()?);
        log::info!(
            "logged in to PKCS#11 token {label:?} (module {})",
            module.display()
        );
        Ok(token)
    }

    /// Checks `so_pin`, the token's security officer PIN (the crypto officer's), by logging in
    /// as the SO in a session of its own and out again. Call it before any [`Token::open`] in
    /// the process: PKCS#11 logs a whole process in, as one user at a time.
    pub fn check_officer(module: &Path, label: &str, so_pin: &Pin) -> Result<(), KeyError> {
        let (probe, session) = Self::bare_session(module, label)?;
        match session.login(UserType::So, Some(so_pin.auth())) {
            Ok(()) => {
                let _ = session.logout();
                log::info!("checked the security officer PIN of PKCS#11 token {label:?}");
                Ok(())
            }
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(wrong_so(label)),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(KeyError::AccessDenied {
                key_id: format!("(token {label})"),
                reason: "the token's SO PIN is locked".into(),
            }),
            Err(e) => Err(probe.unavailable("cannot log in as the security officer", &e)),
        }
    }

    /// A token handle that has not logged in, and a new read-write session on it (for the
    /// officer's operations, which log in and out themselves).
    pub(crate) fn bare_session(module: &Path, label: &str) -> Result<(Token, Session), KeyError> {
        let probe = Token {
            ctx: module_context(module)?,
            module: module.to_owned(),
            label: label.to_owned(),
            pin: Pin(AuthPin::from(""), Zeroizing::new(Vec::new())),
            backup: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        };
        let slot = probe.slot()?;
        let session = probe
            .ctx
            .open_rw_session(slot)
            .map_err(|e| probe.unavailable("cannot open a session", &e))?;
        Ok((probe, session))
    }

    /// Logs `session` in as the token user with this token's PIN or `pin`.
    pub(crate) fn login_user(&self, session: &Session, pin: &Pin) -> Result<(), KeyError> {
        match session.login(UserType::User, Some(pin.auth())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(KeyError::AccessDenied {
                key_id: format!("(token {})", self.label),
                reason: "wrong PIN for the token's user; give the right one with --pin-file, \
                         ENVELOPEFS_HSM_PIN or the terminal"
                    .into(),
            }),
            Err(e) => Err(self.unavailable("cannot log in", &e)),
        }
    }

    /// Logs `session` in as the security officer with `so_pin`.
    pub(crate) fn login_so(&self, session: &Session, so_pin: &Pin) -> Result<(), KeyError> {
        match session.login(UserType::So, Some(so_pin.auth())) {
            Ok(()) => Ok(()),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(wrong_so(&self.label)),
            Err(e) => Err(self.unavailable("cannot log in as the security officer", &e)),
        }
    }

    /// A PKCS#11 error as [`KeyError::Unavailable`] naming the token.
    pub(crate) fn error(&self, what: &str, e: &CkError) -> KeyError {
        self.unavailable(what, e)
    }

    /// Whether new CMK versions are made extractable by a trusted key only, for backups
    /// (`init --hsm-backup`; found from the keystore object at every open).
    pub fn backup_capable(&self) -> bool {
        self.backup.load(Ordering::Relaxed)
    }

    /// Makes new CMK versions (and the keystore object) backup-capable.
    pub fn set_backup_capable(&self, on: bool) {
        self.backup.store(on, Ordering::Relaxed);
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every call leaves the state consistent (a session or none; handles it found).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn unavailable(&self, what: &str, e: &CkError) -> KeyError {
        KeyError::Unavailable(format!(
            "PKCS#11 token {:?} (module {}): {what}: {e}; check that the token is present and \
             its module works (pkcs11-tool --module {} --list-token-slots)",
            self.label,
            self.module.display(),
            self.module.display()
        ))
    }

    /// The slot holding the token labelled `self.label`.
    fn slot(&self) -> Result<Slot, KeyError> {
        let slots = self
            .ctx
            .get_slots_with_token()
            .map_err(|e| self.unavailable("cannot list slots", &e))?;
        for slot in slots {
            if let Ok(info) = self.ctx.get_token_info(slot)
                && info.label().trim_end() == self.label
            {
                return Ok(slot);
            }
        }
        Err(KeyError::Unavailable(format!(
            "no token labelled {:?} in PKCS#11 module {}; list the tokens with `pkcs11-tool \
             --module {} --list-token-slots` (SoftHSM2: softhsm2-util --show-slots)",
            self.label,
            self.module.display(),
            self.module.display()
        )))
    }

    /// Opens a read-write session on the token and logs in as its user.
    fn connect(&self) -> Result<Session, KeyError> {
        let slot = self.slot()?;
        let session = self
            .ctx
            .open_rw_session(slot)
            .map_err(|e| self.unavailable("cannot open a session", &e))?;
        match session.login(UserType::User, Some(self.pin.auth())) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(KeyError::AccessDenied {
                key_id: format!("(token {})", self.label),
                reason: "wrong PIN for the token's user; give the right one with --pin-file, \
                         ENVELOPEFS_HSM_PIN or the terminal"
                    .into(),
            }),
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(KeyError::AccessDenied {
                key_id: format!("(token {})", self.label),
                reason: "the token's user PIN is locked; its security officer must reset it".into(),
            }),
            Err(e) => Err(self.unavailable("cannot log in", &e)),
        }
    }

    /// Runs `f` in the session, reconnecting once after a connection error and refinding
    /// objects once after a stale handle.
    fn call<T>(
        &self,
        what: &str,
        f: impl Fn(&Session, &mut HashMap<String, ObjectHandle>) -> Result<T, CallError>,
    ) -> Result<T, KeyError> {
        let mut state = self.lock();
        let mut last = None;
        // At most: a stale handle, then a lost login, then the call that succeeds.
        for _ in 0..3 {
            if state.session.is_none() {
                state.handles.clear();
                state.session = Some(self.connect()?);
            }
            let State { session, handles } = &mut *state;
            let session = session.as_ref().expect("connected above");
            match f(session, handles) {
                Ok(t) => return Ok(t),
                Err(CallError::Key(e)) => return Err(e),
                Err(CallError::Ck(e)) if is_stale_handle(&e) => {
                    handles.clear();
                    last = Some(e);
                }
                Err(CallError::Ck(e)) if is_connection_error(&e) => {
                    log::warn!("PKCS#11 token {:?}: {what}: {e}; reconnecting", self.label);
                    state.session = None;
                    last = Some(e);
                }
                Err(CallError::Ck(e)) => return Err(self.unavailable(what, &e)),
            }
        }
        let e = last.expect("a retry follows an error");
        if is_connection_error(&e) {
            state.session = None;
        }
        Err(self.unavailable(what, &e))
    }

    /// The handle of the secret key labelled `label` (cached), or `None` if there is none.
    fn find(
        session: &Session,
        handles: &mut HashMap<String, ObjectHandle>,
        label: &str,
    ) -> Result<Option<ObjectHandle>, CkError> {
        if let Some(h) = handles.get(label) {
            return Ok(Some(*h));
        }
        let found = session.find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?;
        let h = found.first().copied();
        if let Some(h) = h {
            handles.insert(label.to_owned(), h);
        }
        Ok(h)
    }

    fn must_find(
        &self,
        session: &Session,
        handles: &mut HashMap<String, ObjectHandle>,
        label: &str,
    ) -> Result<ObjectHandle, CallError> {
        if let Some(h) = Self::find(session, handles, label)? {
            return Ok(h);
        }
        // Private objects are invisible to a session that lost its login: reconnect first.
        let state = session.get_session_info()?.session_state();
        if !matches!(state, SessionState::RwUser | SessionState::RoUser) {
            return Err(CallError::Ck(CkError::Pkcs11(
                RvError::UserNotLoggedIn,
                cryptoki::context::Function::FindObjects,
            )));
        }
        Err({
            let e = KeyError::InvalidState {
                key_id: label.to_owned(),
                state: format!(
                    "missing from PKCS#11 token {:?} (destroyed in the token, or another \
                     token); restore the token from its backup",
                    self.label
                ),
            };
            log::error!("{e}");
            CallError::Key(e)
        })
    }

    /// Generates a non-extractable AES-256 key labelled `label` that may do `usage`.
    fn generate_aes(&self, label: &str, usage: &[Attribute]) -> Result<(), KeyError> {
        self.call("cannot generate a key", |s, handles| {
            if Self::find(s, handles, label)?.is_some() {
                return Err(CallError::Key(KeyError::AlreadyExists(format!(
                    "token object {label:?} in token {:?}",
                    self.label
                ))));
            }
            let mut template = vec![
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Label(label.as_bytes().to_vec()),
            ];
            // A backup-capable key leaves the token only wrapped by a key with CKA_TRUSTED,
            // which only the security officer can make (docs/KEYS.md §2c).
            match self.backup_capable() {
                true => template.extend([
                    Attribute::Extractable(true),
                    Attribute::WrapWithTrusted(true),
                ]),
                false => template.push(Attribute::Extractable(false)),
            }
            template.extend_from_slice(usage);
            let h = s.generate_key(&Mechanism::AesKeyGen, &template)?;
            handles.insert(label.to_owned(), h);
            Ok(())
        })
    }
}

fn wrong_so(label: &str) -> KeyError {
    KeyError::AccessDenied {
        key_id: format!("(token {label})"),
        reason: "wrong security officer (crypto officer) PIN; give the token's SO PIN with \
                 --so-pin-file or ENVELOPEFS_HSM_SO_PIN"
            .into(),
    }
}

/// The label of the token object holding version `version` of CMK `id`.
pub(crate) fn cmk_label(id: &KeyId, version: u32) -> String {
    format!("envelopefs cmk {id} v{version}")
}

impl Custody for Token {
    fn info(&self) -> CustodyInfo {
        CustodyInfo {
            module: self.module.to_string_lossy().into_owned(),
            token_label: self.label.clone(),
        }
    }

    fn generate(&self, id: &KeyId, version: u32) -> Result<String, KeyError> {
        let label = cmk_label(id, version);
        self.generate_aes(
            &label,
            &[
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Wrap(false),
                Attribute::Unwrap(false),
                Attribute::Sign(false),
                Attribute::Derive(false),
            ],
        )?;
        log::debug!("generated {label:?} in PKCS#11 token {:?}", self.label);
        Ok(label)
    }

    fn wrap(&self, label: &str, dek: &[u8; 32], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.call("cannot wrap a data key", |s, handles| {
            let key = self.must_find(s, handles, label)?;
            let mut iv = [0u8; 12];
            s.generate_random_slice(&mut iv)?;
            let mut iv_param = iv;
            let params = GcmParams::new(&mut iv_param, aad, 128.into())?;
            let ct = s.encrypt(&Mechanism::AesGcm(params), key, dek)?;
            let mut blob = Vec::with_capacity(WRAPPED_LEN);
            blob.extend_from_slice(&iv);
            blob.extend_from_slice(&ct);
            Ok(blob)
        })
    }

    fn unwrap(&self, label: &str, blob: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        if blob.len() != WRAPPED_LEN {
            return Err(KeyError::InvalidCiphertext);
        }
        self.call("cannot unwrap a data key", |s, handles| {
            let key = self.must_find(s, handles, label)?;
            let mut iv: [u8; 12] = blob[..12].try_into().expect("length checked");
            let params = GcmParams::new(&mut iv, aad, 128.into())?;
            match s.decrypt(&Mechanism::AesGcm(params), key, &blob[12..]) {
                Ok(plain) => Ok(Zeroizing::new(plain)),
                // SoftHSM2 reports a GCM tag that does not verify as CKR_GENERAL_ERROR.
                Err(CkError::Pkcs11(RvError::GeneralError, _)) => {
                    Err(CallError::Key(KeyError::InvalidCiphertext))
                }
                Err(e) if is_connection_error(&e) || is_stale_handle(&e) => Err(e.into()),
                // A tag that does not verify (the blob, the key or the context changed).
                Err(_) => Err(CallError::Key(KeyError::InvalidCiphertext)),
            }
        })
    }

    fn destroy(&self, label: &str) -> Result<(), KeyError> {
        self.call("cannot destroy a key", |s, handles| {
            if let Some(h) = Self::find(s, handles, label)? {
                s.destroy_object(h)?;
                handles.remove(label);
                log::info!("destroyed {label:?} in PKCS#11 token {:?}", self.label);
            }
            Ok(())
        })
    }

    fn keystore_secret(
        &self,
        label: &str,
        salt: &[u8; 16],
        create: bool,
    ) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        if create {
            self.generate_aes(
                label,
                &[
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                ],
            )?;
        }
        let mut input = [0u8; 32];
        input[..16].copy_from_slice(salt);
        for (o, s) in input[16..].iter_mut().zip(salt) {
            *o = !s;
        }
        self.call("cannot compute the keystore key", |s, handles| {
            let key = self.must_find(s, handles, label)?;
            if !create {
                // The keystore object says whether this volume's keys are backup-capable.
                let attrs = s.get_attributes(key, &[AttributeType::WrapWithTrusted])?;
                let on = attrs
                    .iter()
                    .any(|a| matches!(a, Attribute::WrapWithTrusted(true)));
                self.set_backup_capable(on);
            }
            let out = Zeroizing::new(s.encrypt(&Mechanism::AesEcb, key, &input)?);
            let mut secret = Zeroizing::new([0u8; 32]);
            if out.len() != 32 {
                return Err(CallError::Key(KeyError::Internal(
                    "the token's AES-ECB returned a wrong length".into(),
                )));
            }
            secret.copy_from_slice(&out);
            Ok(secret)
        })
    }
}
