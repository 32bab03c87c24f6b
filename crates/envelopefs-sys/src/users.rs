//! User and group lookups through the system's NSS databases (`getpwuid_r` and friends), with
//! the buffer grown on ERANGE. Callers cache.

use std::ffi::CStr;

/// Largest buffer offered to `getpwuid_r`/`getgrgid_r` (a group with many members needs a lot).
const MAX_NSS_BUF: usize = 1 << 20;

/// The name of user `uid` from the password database (no cache).
pub fn lookup_user_name(uid: u32) -> Option<String> {
    // SAFETY: `passwd` is a plain C struct of integers and pointers; all-zero is valid.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    nss_name(
        &mut pwd,
        |pwd, buf, len, result| {
            // SAFETY: every pointer is valid for the call and `len` is the true length of
            // `buf`; getpwuid_r writes only into `pwd`, `buf` and `result`.
            unsafe { libc::getpwuid_r(uid, pwd, buf, len, result) }
        },
        |pwd| pwd.pw_name,
    )
}

/// The name of group `gid` from the group database (no cache).
pub fn lookup_group_name(gid: u32) -> Option<String> {
    // SAFETY: `group` is a plain C struct of integers and pointers; all-zero is valid.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    nss_name(
        &mut grp,
        |grp, buf, len, result| {
            // SAFETY: every pointer is valid for the call and `len` is the true length of
            // `buf`; getgrgid_r writes only into `grp`, `buf` and `result`.
            unsafe { libc::getgrgid_r(gid, grp, buf, len, result) }
        },
        |grp| grp.gr_name,
    )
}

/// The uid of user `name`, or `None` when the password database does not know it.
pub fn user_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `passwd` is a plain C struct of integers and pointers; all-zero is valid.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    nss_lookup(
        &mut pwd,
        |pwd, buf, len, result| {
            // SAFETY: `name` is NUL-terminated, every pointer is valid for the call and `len`
            // is the true length of `buf`; getpwnam_r writes only into `pwd`, `buf`, `result`.
            unsafe { libc::getpwnam_r(name.as_ptr(), pwd, buf, len, result) }
        },
        |pwd| Some(pwd.pw_uid),
    )
}

/// The gid of group `name`, or `None` when the group database does not know it.
pub fn group_id(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `group` is a plain C struct of integers and pointers; all-zero is valid.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    nss_lookup(
        &mut grp,
        |grp, buf, len, result| {
            // SAFETY: `name` is NUL-terminated, every pointer is valid for the call and `len`
            // is the true length of `buf`; getgrnam_r writes only into `grp`, `buf`, `result`.
            unsafe { libc::getgrnam_r(name.as_ptr(), grp, buf, len, result) }
        },
        |grp| Some(grp.gr_gid),
    )
}

/// Runs a reentrant NSS lookup (`getpwuid_r`, `getgrnam_r`, ...: `call(entry, buf, len,
/// result)`), growing the buffer on ERANGE up to [`MAX_NSS_BUF`], and returns what `field_of`
/// takes from the entry found, while the buffer its strings point into is still alive.
fn nss_lookup<T, F>(
    entry: &mut T,
    mut call: impl FnMut(&mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
    field_of: impl Fn(&T) -> Option<F>,
) -> Option<F> {
    let mut buf = vec![0u8; 1024];
    loop {
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(entry, buf.as_mut_ptr().cast(), buf.len(), &mut result);
        if rc == libc::ERANGE && buf.len() < MAX_NSS_BUF {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        return field_of(entry);
    }
}

/// [`nss_lookup`] of the name `name_of` points to in the entry found.
fn nss_name<T>(
    entry: &mut T,
    call: impl FnMut(&mut T, *mut libc::c_char, usize, *mut *mut T) -> libc::c_int,
    name_of: impl Fn(&T) -> *const libc::c_char,
) -> Option<String> {
    nss_lookup(entry, call, |e| {
        let name = name_of(e);
        if name.is_null() {
            return None;
        }
        // SAFETY: on success the name points to a NUL-terminated string inside the lookup's
        // buffer, which is alive and unchanged while `field_of` runs.
        Some(
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned(),
        )
    })
}
