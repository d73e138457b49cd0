//! A small binary codec for snapshot files: big-endian fixed-width integers and length-prefixed
//! strings, read back with bounds checks. Shared by the log's snapshot framing and stream index and
//! by the domain's write model, so that none of them needs a serialization dependency, and decoding a
//! million entries costs no parsing.

/// Appends fixed-width values and length-prefixed strings to a buffer.
pub trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_i64(&mut self, v: i64);
    /// A string of at most `u16::MAX` bytes (longer ones are an encoding bug: they panic in tests
    /// and are cut in release, which the reader then refuses as malformed).
    fn put_str16(&mut self, s: &str);
    /// A string of at most `u32::MAX` bytes.
    fn put_str32(&mut self, s: &str);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_i64(&mut self, v: i64) {
        self.extend_from_slice(&v.to_be_bytes());
    }
    fn put_str16(&mut self, s: &str) {
        debug_assert!(s.len() <= usize::from(u16::MAX));
        self.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
        self.extend_from_slice(s.as_bytes());
    }
    fn put_str32(&mut self, s: &str) {
        debug_assert!(u32::try_from(s.len()).is_ok());
        self.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.extend_from_slice(s.as_bytes());
    }
}

/// Reads what [`Put`] wrote; every read fails with "truncated" past the end.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("truncated".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    pub fn bytes16(&mut self) -> Result<[u8; 16], String> {
        self.array()
    }
    pub fn bytes32(&mut self) -> Result<[u8; 32], String> {
        self.array()
    }
    pub fn str16(&mut self) -> Result<&'a str, String> {
        let n = usize::from(self.u16()?);
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("not UTF-8: {e}"))
    }
    pub fn str32(&mut self) -> Result<&'a str, String> {
        let n = usize::try_from(self.u32()?).map_err(|_| "length overflows".to_string())?;
        std::str::from_utf8(self.take(n)?).map_err(|e| format!("not UTF-8: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_reads_past_the_end_fail() {
        let mut b = Vec::new();
        b.put_u8(7);
        b.put_u16(513);
        b.put_u32(70_000);
        b.put_u64(u64::MAX - 1);
        b.put_i64(-5);
        b.put_str16("Росси́я");
        b.put_str32("");
        let mut r = Reader::new(&b);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u16(), Ok(513));
        assert_eq!(r.u32(), Ok(70_000));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.i64(), Ok(-5));
        assert_eq!(r.str16(), Ok("Росси́я"));
        assert_eq!(r.str32(), Ok(""));
        assert!(r.is_empty());
        assert_eq!(r.u8(), Err("truncated".to_string()));
        // The last length prefix cut short.
        let mut cut = Reader::new(&b[..b.len() - 3]);
        cut.take(23).expect("the integers");
        assert_eq!(cut.str16(), Ok("Росси́я"));
        assert_eq!(cut.str32(), Err("truncated".to_string()));
    }
}
