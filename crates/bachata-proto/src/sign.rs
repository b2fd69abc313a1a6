//! Message signatures (protocol.md section 6), after the seed's `sign` field.
//!
//! - A channel's secret is `hex(HMAC-SHA256(key = server key, msg = channel))`,
//!   so an application backend that knows the server key can hand each user
//!   their secret at login, and the server can put it in the ready message.
//! - A data message's `sign` is `hex(HMAC-SHA256(key = secret as UTF-8 hex
//!   text, msg = id "\n" type "\n" dest "\n" data))`, where absent fields are
//!   empty and `data` is the exact JSON text of the `data` value as received.
//!
//! Verification decodes the given hex and compares MACs in constant time
//! (`Mac::verify_slice`), so timing tells an attacker nothing about how much
//! of a forged signature was right.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::DataMessage;

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of every length"),
    }
}

/// The signing secret of `channel` under the server key: lowercase hex.
pub fn channel_secret(server_key: &[u8], channel: &str) -> String {
    hmac_hex(server_key, channel.as_bytes())
}

/// `hex(HMAC-SHA256(key, data))`, lowercase: also the `X-Bachata-Signature`
/// of a hook request's body (protocol.md section 10).
pub fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let mut m = mac(key);
    m.update(data);
    hex::encode(m.finalize().into_bytes())
}

fn message_mac(secret: &str, msg: &DataMessage) -> HmacSha256 {
    let mut m = mac(secret.as_bytes());
    m.update(msg.id.as_ref().map_or("", |id| id.as_str()).as_bytes());
    m.update(b"\n");
    m.update(msg.kind.as_bytes());
    m.update(b"\n");
    m.update(msg.dest.as_deref().unwrap_or("").as_bytes());
    m.update(b"\n");
    m.update(msg.data_text().as_bytes());
    m
}

/// The `sign` a client with `secret` puts on `msg`: lowercase hex.
pub fn message_signature(secret: &str, msg: &DataMessage) -> String {
    hex::encode(message_mac(secret, msg).finalize().into_bytes())
}

/// True when `msg.sign` is the right signature under `secret`. Upper- or
/// lowercase hex is accepted; anything else, or no `sign`, is false.
pub fn verify(secret: &str, msg: &DataMessage) -> bool {
    let Some(sign) = msg.sign.as_deref() else {
        return false;
    };
    let Ok(given) = hex::decode(sign) else {
        return false;
    };
    message_mac(secret, msg).verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Inbound, Limits, parse_frame};

    fn data(text: &str) -> DataMessage {
        match parse_frame(text, &Limits::default()) {
            Ok(Inbound::Data(m)) => m,
            other => panic!("not a data message: {other:?}"),
        }
    }

    #[test]
    fn secrets_follow_the_spec_formula() {
        // Independent check of the formula with a known HMAC-SHA256 vector
        // (RFC 4231 test case 2: key "Jefe").
        assert_eq!(
            channel_secret(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let s = channel_secret(b"server-key", "alice");
        assert_eq!(s.len(), 64);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_ne!(s, channel_secret(b"server-key", "bob"));
    }

    #[test]
    fn sign_and_verify() {
        let secret = channel_secret(b"k", "alice");
        let mut m = data(r#"{"id":"1","type":"direct","dest":"bob","data":{"a": 1}}"#);
        let sign = message_signature(&secret, &m);
        // The message text is id \n type \n dest \n data-as-received.
        let mut manual = mac(secret.as_bytes());
        manual.update(b"1\ndirect\nbob\n{\"a\": 1}");
        assert_eq!(sign, hex::encode(manual.finalize().into_bytes()));
        m.sign = Some(sign.clone());
        assert!(verify(&secret, &m));
        m.sign = Some(sign.to_uppercase());
        assert!(verify(&secret, &m), "uppercase hex is accepted");
        m.sign = Some(sign[..62].to_owned());
        assert!(!verify(&secret, &m), "truncated");
        m.sign = Some("zz".repeat(32));
        assert!(!verify(&secret, &m), "not hex");
        m.sign = None;
        assert!(!verify(&secret, &m), "missing");
        m.sign = Some(sign);
        assert!(
            !verify(&channel_secret(b"k", "mallory"), &m),
            "other secret"
        );
        // Respacing data changes the signed text.
        let mut other = data(r#"{"id":"1","type":"direct","dest":"bob","data":{"a":1}}"#);
        other.sign = m.sign.clone();
        assert!(!verify(&secret, &other));
    }

    #[test]
    fn absent_fields_are_empty() {
        let secret = "s";
        let m = data(r#"{"type":"ping"}"#);
        let mut manual = mac(b"s");
        manual.update(b"\nping\n\n");
        assert_eq!(
            message_signature(secret, &m),
            hex::encode(manual.finalize().into_bytes())
        );
    }
}
