//! A stable content hash, 64-bit FNV-1a, for values that must be the same in every build
//! and every Rust release (std's hasher may change): image identifiers, DNS zone serials.

/// FNV-1a's offset basis: the hash of no bytes.
const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// The FNV-1a hash of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continue(OFFSET_BASIS, bytes)
}

/// FNV-1a of more bytes after a previous hash: `fnv1a_continue(fnv1a(a), b)` is the hash
/// of `a` followed by `b`.
pub fn fnv1a_continue(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a_values_and_continues() {
        // Test vectors of the FNV reference (draft-eastlake-fnv, 64-bit FNV-1a).
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a_continue(fnv1a(b"foo"), b"bar"), fnv1a(b"foobar"));
    }
}
