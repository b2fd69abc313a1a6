//! The frame header of RFC 6455 section 5.2, as the server reads it from a
//! client and writes it to one.

use super::Error;

/// The opcodes of RFC 6455 section 5.2.
pub(super) const CONTINUATION: u8 = 0x0;
pub(super) const TEXT: u8 = 0x1;
pub(super) const BINARY: u8 = 0x2;
pub(super) const CLOSE: u8 = 0x8;
pub(super) const PING: u8 = 0x9;
pub(super) const PONG: u8 = 0xA;

/// The longest header: two bytes, an 8-byte length and a 4-byte mask.
pub(super) const MAX_HEAD: usize = 14;

/// The longest header the server writes (no mask).
pub(super) const MAX_OUT_HEAD: usize = 10;

/// The largest payload of a control frame (section 5.5).
pub(super) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A client frame's header, checked against the rules that need no
/// state: reserved bits, opcodes, masking, control frame size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) fin: bool,
    pub(super) opcode: u8,
    pub(super) mask: [u8; 4],
    pub(super) len: u64,
}

impl Header {
    pub(super) fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// How long the header that starts with `head` is; `head` holds at least
/// its first two bytes.
pub(super) fn head_len(head: &[u8]) -> usize {
    let length_bytes = match head[1] & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    // A client's frames are masked (section 5.3); one that is not is an
    // error `parse` reports, after its header is read the same way.
    let mask_bytes = if head[1] & 0x80 != 0 { 4 } else { 0 };
    2 + length_bytes + mask_bytes
}

/// Parses a whole header (`head_len(head)` bytes).
pub(super) fn parse(head: &[u8]) -> Result<Header, Error> {
    let fin = head[0] & 0x80 != 0;
    if head[0] & 0x70 != 0 {
        // No extension was negotiated, so no reserved bit may be set.
        return Err(Error::Protocol("reserved bits set"));
    }
    let opcode = head[0] & 0x0F;
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(Error::Protocol("unknown opcode"));
    }
    if head[1] & 0x80 == 0 {
        return Err(Error::Protocol("client frame not masked"));
    }
    let (len, rest) = match head[1] & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes([head[2], head[3]])),
            &head[4..],
        ),
        127 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&head[2..10]);
            let len = u64::from_be_bytes(bytes);
            if len >> 63 != 0 {
                return Err(Error::Protocol("payload length with its top bit set"));
            }
            (len, &head[10..])
        }
        len => (u64::from(len), &head[2..]),
    };
    let mut mask = [0; 4];
    mask.copy_from_slice(&rest[..4]);
    let header = Header {
        fin,
        opcode,
        mask,
        len,
    };
    if header.is_control() {
        if !fin {
            return Err(Error::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(Error::Protocol("control frame larger than 125 bytes"));
        }
    }
    Ok(header)
}

/// Unmasks a client frame's payload in place (section 5.3).
pub(super) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    // Four bytes at a time, as one word: the compiler makes wide XORs of
    // this, where a byte loop indexing the mask stays a byte loop.
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let mut bytes = [0; 4];
        bytes.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u32::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// Appends a server frame (final, unmasked) to `out`.
pub(super) fn write(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// The bytes [`write`] appends for a payload of `len` bytes.
pub(super) fn encoded_len(len: usize) -> usize {
    let head = match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => MAX_OUT_HEAD,
    };
    head + len
}

/// Close codes a peer may send (section 7.4): the defined ones that are
/// not reserved for "no code" (1005), "abnormal" (1006) or TLS (1015),
/// and those registered for libraries and applications.
pub(super) fn is_allowed_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1013 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Header, Error> {
        assert_eq!(head_len(bytes), bytes.len(), "the whole header");
        parse(bytes)
    }

    #[test]
    fn reads_each_length_form() {
        let mask = [1, 2, 3, 4];
        let short = head(&[0x81, 0x80 | 5, 1, 2, 3, 4]).expect("a valid header");
        assert_eq!(
            (short.fin, short.opcode, short.len, short.mask),
            (true, TEXT, 5, mask)
        );
        let medium = head(&[0x02, 0x80 | 126, 0x01, 0x00, 1, 2, 3, 4]).expect("a valid header");
        assert_eq!(
            (medium.fin, medium.opcode, medium.len),
            (false, BINARY, 256)
        );
        let long = head(&[0x80, 0xFF, 0, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4]).expect("a valid header");
        assert_eq!((long.opcode, long.len), (CONTINUATION, 65536));
    }

    #[test]
    fn refuses_what_the_rfc_forbids() {
        let refused = |bytes: &[u8], why: &str| {
            assert!(
                matches!(head(bytes), Err(Error::Protocol(_))),
                "{why}: {bytes:?}"
            );
        };
        refused(&[0xC1, 0x80, 0, 0, 0, 0], "RSV1 without an extension");
        refused(&[0x83, 0x80, 0, 0, 0, 0], "reserved data opcode");
        refused(&[0x8B, 0x80, 0, 0, 0, 0], "reserved control opcode");
        refused(&[0x81, 0x00], "unmasked client frame");
        refused(&[0x09, 0x80, 0, 0, 0, 0], "fragmented ping");
        refused(&[0x89, 0x80 | 126, 0, 126, 0, 0, 0, 0], "126-byte ping");
        refused(
            &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            "length with its top bit set",
        );
    }

    #[test]
    fn unmasking_twice_gives_the_payload_back() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(1031).collect();
        for len in [0, 1, 3, 4, 5, 8, 1031] {
            let mut data = payload[..len].to_vec();
            unmask(&mut data, [0xA1, 0x0B, 0x77, 0xFF]);
            if len > 0 {
                assert_ne!(data, payload[..len]);
            }
            // Byte by byte, the mask cycles through its four bytes.
            for (i, byte) in data.iter().enumerate() {
                assert_eq!(*byte ^ [0xA1, 0x0B, 0x77, 0xFF][i % 4], payload[i]);
            }
            unmask(&mut data, [0xA1, 0x0B, 0x77, 0xFF]);
            assert_eq!(data, payload[..len]);
        }
    }

    #[test]
    fn writes_each_length_form() {
        for (len, head_bytes) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            write(&mut out, TEXT, &vec![b'x'; len]);
            assert_eq!(out.len(), encoded_len(len));
            assert_eq!(out.len(), head_bytes + len);
            assert_eq!(out[0], 0x81);
        }
        let mut out = Vec::new();
        write(&mut out, BINARY, &[7; 300]);
        assert_eq!(&out[..4], &[0x82, 126, 0x01, 0x2C]);
    }

    #[test]
    fn close_codes() {
        for code in [1000, 1001, 1002, 1003, 1007, 1011, 1013, 3000, 4999] {
            assert!(is_allowed_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1014, 1015, 1016, 2999, 5000] {
            assert!(!is_allowed_close_code(code), "{code}");
        }
    }
}
