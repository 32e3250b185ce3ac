//! The `bpf(2)` map operations, on raw bytes: the one place that calls the syscall for map
//! elements, so keys and values of any size (a runtime's own maps, whose types only its
//! plug-in knows) go through the same checked path.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `BPF_ANY`: create or update.
pub(crate) const BPF_ANY: u64 = 0;

/// The part of `union bpf_attr` the element commands use.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn elem_op(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    key: &[u8],
    value: u64,
    flags: u64,
) -> io::Result<()> {
    elem_op_raw(cmd, fd, key.as_ptr() as u64, value, flags)
}

fn elem_op_raw(
    cmd: libc::c_long,
    fd: BorrowedFd<'_>,
    key: u64,
    value: u64,
    flags: u64,
) -> io::Result<()> {
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key,
        value,
        flags,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for the element commands, alive for the call;
    // the kernel reads key_size bytes at `key` (0: none, for the first key) and reads or
    // writes value_size bytes (key_size for GET_NEXT_KEY) at `value`, which the callers size
    // from the map's own key and value sizes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const ElemAttr,
            size_of::<ElemAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A map's key and value sizes, checked before every operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    pub key: u32,
    pub value: u32,
}

fn check(sizes: Sizes, key: &[u8], value: Option<&[u8]>) -> io::Result<()> {
    let bad =
        key.len() != sizes.key as usize || value.is_some_and(|v| v.len() != sizes.value as usize);
    if bad {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "key of {} bytes and value of {:?} bytes for a map with {}-byte keys and {}-byte values",
                key.len(),
                value.map(<[u8]>::len),
                sizes.key,
                sizes.value
            ),
        ));
    }
    Ok(())
}

/// Creates or replaces `key`'s value.
pub(crate) fn update(
    fd: BorrowedFd<'_>,
    sizes: Sizes,
    key: &[u8],
    value: &[u8],
    flags: u64,
) -> io::Result<()> {
    check(sizes, key, Some(value))?;
    elem_op(BPF_MAP_UPDATE_ELEM, fd, key, value.as_ptr() as u64, flags)
}

/// Deletes `key`; a key that is not there is not an error.
pub(crate) fn delete(fd: BorrowedFd<'_>, sizes: Sizes, key: &[u8]) -> io::Result<()> {
    check(sizes, key, None)?;
    match elem_op(BPF_MAP_DELETE_ELEM, fd, key, 0, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// Reads `key`'s value into `value`; false when the key is not there.
pub(crate) fn lookup(
    fd: BorrowedFd<'_>,
    sizes: Sizes,
    key: &[u8],
    value: &mut [u8],
) -> io::Result<bool> {
    check(sizes, key, Some(value))?;
    match elem_op(BPF_MAP_LOOKUP_ELEM, fd, key, value.as_mut_ptr() as u64, 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Writes the key after `key` (the first key with `None`) into `next`; false past the last.
pub(crate) fn next_key(
    fd: BorrowedFd<'_>,
    sizes: Sizes,
    key: Option<&[u8]>,
    next: &mut [u8],
) -> io::Result<bool> {
    if let Some(key) = key {
        check(sizes, key, None)?;
    }
    if next.len() != sizes.key as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a next key of {} bytes for {}-byte keys",
                next.len(),
                sizes.key
            ),
        ));
    }
    let key = key.map_or(0, |k| k.as_ptr() as u64);
    match elem_op_raw(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr() as u64, 0) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
