//! Plain-old-data: types whose bytes are the value, in both directions.

/// A `#[repr(C)]` type made only of integers, with no padding, so that its bytes can be
/// written to a map and read back as any bit pattern.
///
/// # Safety
///
/// Implement it only for `#[repr(C)]` types whose fields are integers or arrays of them,
/// laid out without padding bytes (the layout tests check each implementor against the C
/// header's BTF).
pub unsafe trait Plain: Copy + 'static {
    /// The value's bytes.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: Self is Plain: no padding, so every byte of the value is initialised, and
        // the slice covers exactly the value, borrowed for as long as `self`.
        unsafe { std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>()) }
    }

    /// A value from bytes; `None` unless `bytes` is exactly its size.
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size_of::<Self>() {
            return None;
        }
        // SAFETY: the length was checked; every bit pattern is a valid Self (Plain), and
        // read_unaligned copes with any alignment of `bytes`.
        Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) })
    }

    /// Reads a value from the start of `bytes`; `None` when they are too short.
    fn read_prefix(bytes: &[u8]) -> Option<Self> {
        Self::from_bytes(bytes.get(..size_of::<Self>())?)
    }
}

/// Aligns what it holds to 32 bytes (eBPF objects embedded with `include_bytes!`, which the
/// ELF parser reads in place).
#[repr(C, align(32))]
#[derive(Debug)]
pub struct Aligned<T: ?Sized>(pub T);

// SAFETY: integers have no padding and accept every bit pattern.
unsafe impl Plain for u32 {}
// SAFETY: as above.
unsafe impl Plain for u64 {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_lengths_are_checked() {
        let v: u64 = 0x0102_0304_0506_0708;
        assert_eq!(v.as_bytes(), &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(u64::from_bytes(v.as_bytes()), Some(v));
        assert_eq!(u64::from_bytes(&[1, 2, 3]), None);
        assert_eq!(u32::read_prefix(&[1, 0, 0, 0, 9]), Some(1));
        assert_eq!(u32::read_prefix(&[1, 0]), None);
    }
}
