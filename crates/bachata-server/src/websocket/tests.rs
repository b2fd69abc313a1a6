//! The WebSocket layer against a scripted client over an in-memory pipe.
//! (The Autobahn suite, `scripts/websocket-conformance.sh`, checks it
//! against the RFC case by case; the server's tests, through it.)

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use bachata_testkit::raw::{masked_frame as masked, payload_on_wire};

use super::*;

const LIMITS: Limits = Limits {
    max_message: 64 * 1024,
    write_buffer: 8 * 1024,
    max_write_buffer: 16 * 1024,
};

/// Writes a client's bytes to the pipe.
async fn send(client: &mut DuplexStream, bytes: &[u8]) {
    client.write_all(bytes).await.expect("written");
}

fn poll_now<T>(poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Option<T> {
    match poll(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

fn pair(pipe: usize) -> (WebSocket<DuplexStream>, DuplexStream) {
    let (server, client) = tokio::io::duplex(pipe);
    (WebSocket::new(server, LIMITS), client)
}

async fn next(ws: &mut WebSocket<DuplexStream>) -> Option<Result<Message, Error>> {
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message or an end within 5 s")
}

async fn message(ws: &mut WebSocket<DuplexStream>) -> Message {
    next(ws).await.expect("a message").expect("a valid message")
}

/// Reads one server frame: its first byte and its payload.
async fn server_frame(client: &mut DuplexStream) -> (u8, Vec<u8>) {
    let read = async {
        let mut head = [0; 2];
        client.read_exact(&mut head).await?;
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => usize::from(client.read_u16().await?),
            127 => client.read_u64().await? as usize,
            len => usize::from(len),
        };
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await?;
        io::Result::Ok((head[0], payload))
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a frame within 5 s")
        .expect("a whole frame")
}

/// Whether the server sent nothing more (reads until its side is gone).
async fn nothing_more(ws: WebSocket<DuplexStream>, client: &mut DuplexStream) -> bool {
    drop(ws);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.is_ok() && rest.is_empty()
}

#[tokio::test]
async fn reads_text_and_binary_messages_and_keeps_nothing_between_them() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x81, b"hello")).await;
    send(&mut client, &masked(0x82, &[0, 159, 255])).await;
    assert_eq!(message(&mut ws).await, Message::Text("hello".into()));
    assert_eq!(
        message(&mut ws).await,
        Message::Binary(Bytes::from_static(&[0, 159, 255]))
    );
    assert_eq!(ws.holds(), (0, false, false, 0), "no buffer between frames");
}

#[tokio::test]
async fn a_large_frame_leaves_no_buffer_behind() {
    // What tungstenite kept for the connection's life (docs/security.md):
    // its read buffer grew to the largest frame's size.
    let (mut ws, mut client) = pair(1 << 20);
    let big = "x".repeat(60_000);
    send(&mut client, &masked(0x81, big.as_bytes())).await;
    send(&mut client, &masked(0x81, b"small")).await;
    assert_eq!(message(&mut ws).await, Message::Text(big));
    assert_eq!(ws.holds(), (0, false, false, 0));
    assert_eq!(message(&mut ws).await, Message::Text("small".into()));
    assert_eq!(ws.holds(), (0, false, false, 0));
}

#[tokio::test]
async fn room_for_a_payload_grows_with_what_arrives() {
    // A client announces the largest frame and sends a few bytes of it:
    // the server must not hold the whole announced length for it.
    let (mut ws, mut client) = pair(1 << 20);
    let frame = masked(0x82, &vec![1; LIMITS.max_message]);
    send(&mut client, &frame[..14 + 10]).await;
    assert!(
        poll_now(|cx| ws.poll_next(cx)).is_none(),
        "waits for the rest"
    );
    let held = ws.payload.as_ref().map_or(0, |p| p.data.capacity());
    assert!(held > 0 && held <= FIRST_READ, "{held} bytes held");
    send(&mut client, &frame[14 + 10..]).await;
    assert_eq!(
        message(&mut ws).await,
        Message::Binary(Bytes::from(vec![1; LIMITS.max_message]))
    );
}

#[tokio::test]
async fn reads_frames_that_arrive_a_byte_at_a_time() {
    let (mut ws, mut client) = pair(1);
    let frames = [
        masked(0x81, b"one"),
        masked(0x82, &[7; 300]),
        masked(0x81, "é".repeat(30_000).as_bytes()),
    ]
    .concat();
    let writer = tokio::spawn(async move {
        send(&mut client, &frames).await;
        client
    });
    assert_eq!(message(&mut ws).await, Message::Text("one".into()));
    assert_eq!(
        message(&mut ws).await,
        Message::Binary(Bytes::from(vec![7; 300]))
    );
    assert_eq!(message(&mut ws).await, Message::Text("é".repeat(30_000)));
    drop(writer.await.expect("the writer finishes"));
    assert!(next(&mut ws).await.is_none(), "the socket ended");
}

#[tokio::test]
async fn joins_fragments_and_answers_a_ping_between_them() {
    let (mut ws, mut client) = pair(1 << 20);
    // "é" is split between the first two fragments: allowed mid-message.
    let text = "caf\u{e9} au lait";
    let bytes = text.as_bytes();
    send(&mut client, &masked(0x01, &bytes[..4])).await;
    send(&mut client, &masked(0x89, b"are you there")).await;
    send(&mut client, &masked(0x00, &bytes[4..8])).await;
    send(&mut client, &masked(0x80, &bytes[8..])).await;
    assert_eq!(message(&mut ws).await, Message::Ping);
    assert_eq!(message(&mut ws).await, Message::Text(text.into()));
    ws.flush().await.expect("written");
    assert_eq!(
        server_frame(&mut client).await,
        (0x8A, b"are you there".to_vec()),
        "the pong carries the ping's payload"
    );
    assert_eq!(ws.holds(), (0, false, false, 0));
}

#[tokio::test]
async fn invalid_utf8_fails_at_the_fragment_that_breaks_it() {
    let (mut ws, mut client) = pair(1 << 20);
    // The message is not finished; the error comes without waiting for it.
    send(&mut client, &masked(0x01, &[b'o', b'k', 0xC0, 0xAF])).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Utf8))));

    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x81, &[0xFF])).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Utf8))));

    // A character cut off by the final fragment.
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x01, b"ok")).await;
    send(&mut client, &masked(0x80, &[0xC3])).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Utf8))));
}

#[tokio::test]
async fn a_frame_over_the_limit_fails_before_its_payload_is_read() {
    let (mut ws, mut client) = pair(1 << 20);
    let head = &masked(0x82, &vec![0; LIMITS.max_message + 1])[..14];
    // Only the header is sent: the server must not wait for the payload.
    send(&mut client, head).await;
    assert!(matches!(
        next(&mut ws).await,
        Some(Err(Error::TooBig { max })) if max == LIMITS.max_message
    ));
    assert!(!ws.holds().1, "no room made for it");
}

#[tokio::test]
async fn fragments_together_over_the_limit_fail() {
    let (mut ws, mut client) = pair(1 << 20);
    let half = vec![b'a'; LIMITS.max_message / 2 + 1];
    send(&mut client, &masked(0x01, &half)).await;
    send(&mut client, &masked(0x80, &half)).await;
    assert!(matches!(
        next(&mut ws).await,
        Some(Err(Error::TooBig { .. }))
    ));
}

#[tokio::test]
async fn fragments_out_of_order_are_protocol_errors() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x80, b"x")).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))));

    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x01, b"x")).await;
    send(&mut client, &masked(0x81, b"y")).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))));

    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &[0x81, 0x01, b'x']).await;
    assert!(
        matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))),
        "unmasked"
    );
}

/// Autobahn case 5.10's shape: a continuation frame with no message to
/// continue is refused from its header, so its payload is never read. The
/// payload here looks like the header of a 4 KiB frame; read as the next
/// header, it would swallow the client's close that follows.
fn refused_frame_hiding_a_header() -> Vec<u8> {
    let hidden = [0x82, 0xFE, 0x10, 0x00, 1, 2, 3, 4];
    let mut wire = masked(0x80, &payload_on_wire(&hidden));
    assert_eq!(&wire[6..], &hidden);
    wire.extend_from_slice(&masked(0x88, &1000u16.to_be_bytes()));
    wire
}

#[tokio::test]
async fn nothing_is_read_after_an_error() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &refused_frame_hiding_a_header()).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))));
    assert!(
        matches!(poll_now(|cx| ws.poll_next(cx)), Some(None)),
        "the stream after an error is not read as frames"
    );
    let (head, payload, fragments, _) = ws.holds();
    assert_eq!((head, payload, fragments), (0, false, false));
}

#[tokio::test]
async fn failing_sends_the_close_ends_the_stream_and_discards_until_the_client_ends() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &refused_frame_hiding_a_header()).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))));
    let failing = tokio::spawn(async move { ws.fail(1002, "protocol error").await });
    let mut expected = 1002u16.to_be_bytes().to_vec();
    expected.extend_from_slice(b"protocol error");
    assert_eq!(server_frame(&mut client).await, (0x88, expected));
    let mut rest = Vec::new();
    client
        .read_to_end(&mut rest)
        .await
        .expect("the server's end");
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    // What the client still sends is read and dropped until it ends.
    send(&mut client, &masked(0x81, b"late")).await;
    assert!(!failing.is_finished(), "waits for the client's end");
    client.shutdown().await.expect("ended");
    let failed = tokio::time::timeout(Duration::from_secs(5), failing)
        .await
        .expect("returns once the client ends");
    assert!(matches!(failed, Ok(Ok(()))), "{failed:?}");
}

#[tokio::test]
async fn failing_discards_a_bounded_amount() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x80, b"x")).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))));
    // More than it discards (the message limit, 64 KiB here), and the
    // client never ends: failing returns anyway.
    send(&mut client, &vec![0; LIMITS.max_message + 4096]).await;
    let failed = tokio::time::timeout(Duration::from_secs(5), ws.fail(1002, ""))
        .await
        .expect("returns once the bound is read");
    assert!(failed.is_ok(), "{failed:?}");
}

#[tokio::test]
async fn answers_a_close_with_its_code_and_reads_no_further() {
    let (mut ws, mut client) = pair(1 << 20);
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    send(&mut client, &masked(0x88, &close)).await;
    send(&mut client, &masked(0x81, b"after")).await;
    assert_eq!(message(&mut ws).await, Message::Close);
    assert!(next(&mut ws).await.is_none(), "nothing after a close");
    assert!(matches!(ws.start_send(Outgoing::Ping), Err(Error::Closed)));
    ws.flush().await.expect("written");
    assert_eq!(server_frame(&mut client).await, (0x88, vec![0x03, 0xE8]));
    assert!(nothing_more(ws, &mut client).await);
}

#[tokio::test]
async fn a_close_code_a_peer_may_not_send_is_answered_with_1002() {
    for (payload, answer) in [
        (
            1005u16.to_be_bytes().to_vec(),
            1002u16.to_be_bytes().to_vec(),
        ),
        (
            999u16.to_be_bytes().to_vec(),
            1002u16.to_be_bytes().to_vec(),
        ),
        (
            4000u16.to_be_bytes().to_vec(),
            4000u16.to_be_bytes().to_vec(),
        ),
        (Vec::new(), Vec::new()),
    ] {
        let (mut ws, mut client) = pair(1 << 20);
        send(&mut client, &masked(0x88, &payload)).await;
        assert_eq!(message(&mut ws).await, Message::Close);
        ws.flush().await.expect("written");
        assert_eq!(
            server_frame(&mut client).await,
            (0x88, answer),
            "{payload:?}"
        );
    }
}

#[tokio::test]
async fn a_broken_close_frame_is_an_error() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x88, &[0x03])).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Protocol(_)))));

    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x88, &[0x03, 0xE8, 0xFF])).await;
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Utf8))));
    assert!(
        next(&mut ws).await.is_none(),
        "a broken close still ends the client's frames: the server's close answers it"
    );
}

#[tokio::test]
async fn the_server_closes_first_and_waits_for_the_answer() {
    let (mut ws, mut client) = pair(1 << 20);
    ws.close(4008, "slow consumer").await.expect("written");
    let mut expected = 4008u16.to_be_bytes().to_vec();
    expected.extend_from_slice(b"slow consumer");
    assert_eq!(server_frame(&mut client).await, (0x88, expected));
    assert!(matches!(
        ws.start_send(Outgoing::Text(Bytes::from_static(b"late"))),
        Err(Error::Closed)
    ));
    // The client's data before its answer is still read; its answer ends
    // the handshake with no second close from the server.
    send(&mut client, &masked(0x81, b"in flight")).await;
    send(&mut client, &masked(0x88, &4008u16.to_be_bytes())).await;
    assert_eq!(message(&mut ws).await, Message::Text("in flight".into()));
    assert_eq!(message(&mut ws).await, Message::Close);
    ws.flush().await.expect("written");
    assert!(nothing_more(ws, &mut client).await);
}

#[tokio::test]
async fn a_long_close_reason_is_cut_to_fit_a_control_frame() {
    let (mut ws, mut client) = pair(1 << 20);
    ws.close(1000, &"é".repeat(100)).await.expect("written");
    let (first, payload) = server_frame(&mut client).await;
    assert_eq!(first, 0x88);
    assert!(payload.len() <= 125);
    assert!(
        std::str::from_utf8(&payload[2..]).is_ok(),
        "cut at a character"
    );
}

#[tokio::test]
async fn writes_frames_and_frees_the_buffer_once_written() {
    let (mut ws, mut client) = pair(1 << 20);
    ws.feed(Outgoing::Text(Bytes::from_static(b"one")))
        .await
        .expect("written");
    assert!(matches!(
        ws.feed(Outgoing::Binary(Bytes::from(vec![9; 70_000])))
            .await,
        Err(Error::WriteBufferFull)
    ));
    ws.feed(Outgoing::Ping).await.expect("written");
    assert!(ws.holds().3 > 0);
    ws.flush().await.expect("written");
    assert_eq!(ws.holds().3, 0, "freed once written");
    assert_eq!(server_frame(&mut client).await, (0x81, b"one".to_vec()));
    assert_eq!(server_frame(&mut client).await, (0x89, Vec::new()));
}

#[tokio::test]
async fn a_client_that_does_not_read_fills_the_buffer_to_its_bound() {
    // A pipe of 1 KiB that nobody reads: writes stop there.
    let (mut ws, mut client) = pair(1024);
    let frame = Bytes::from(vec![b'x'; 1000]);
    let mut fed = 0;
    loop {
        let ready = poll_now(|cx| ws.poll_ready(cx));
        match ready {
            Some(Ok(())) => {}
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
        match ws.start_send(Outgoing::Text(frame.clone())) {
            Ok(()) => fed += 1,
            Err(e) => panic!("{e}"),
        }
        assert!(fed < 100, "bounded");
    }
    let unsent = ws.out.len() - ws.written;
    // It stopped with the pipe's 1 KiB written out of a full batch.
    assert!(unsent + 1024 >= LIMITS.write_buffer && unsent < LIMITS.write_buffer);
    // Past `write_buffer`, frames are refused at `max_write_buffer`...
    while ws.start_send(Outgoing::Text(frame.clone())).is_ok() {
        assert!(ws.out.len() - ws.written <= LIMITS.max_write_buffer);
    }
    assert!(matches!(
        ws.start_send(Outgoing::Text(frame.clone())),
        Err(Error::WriteBufferFull)
    ));
    // Filled to the byte with small frames...
    let small = Bytes::from_static(b"x");
    while ws.start_send(Outgoing::Text(small.clone())).is_ok() {}
    assert!(ws.out.len() - ws.written + 3 > LIMITS.max_write_buffer);
    // ...and a ping whose pong would go past the bound is an error: the
    // client does not read.
    send(&mut client, &masked(0x89, &[1; 125])).await;
    let before = ws.out.len();
    assert!(matches!(
        next(&mut ws).await,
        Some(Err(Error::WriteBufferFull))
    ));
    assert_eq!(ws.out.len(), before, "not queued");
}

#[tokio::test]
async fn the_socket_ending_inside_a_frame_is_an_error() {
    let (mut ws, mut client) = pair(1 << 20);
    send(&mut client, &masked(0x81, b"hello")[..8]).await;
    drop(client);
    assert!(matches!(next(&mut ws).await, Some(Err(Error::Io(_)))));
    assert!(next(&mut ws).await.is_none());
}

/// Property tests: whatever the split of the bytes on the wire, valid
/// frames read as the same messages, and no input makes the reader panic.
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A message as a client sends it: text or binary, in `fragments`
    /// frames, maybe after a ping.
    #[derive(Debug, Clone)]
    struct Sent {
        text: bool,
        payload: Vec<u8>,
        fragments: usize,
        ping_first: bool,
    }

    fn sent() -> impl Strategy<Value = Sent> {
        (
            any::<bool>(),
            prop_oneof![
                ".{0,40}".prop_map(String::into_bytes),
                "\\PC{0,600}".prop_map(String::into_bytes),
                proptest::collection::vec(any::<u8>(), 0..3000),
            ],
            1..4usize,
            any::<bool>(),
        )
            .prop_map(|(text, payload, fragments, ping_first)| Sent {
                // Arbitrary bytes are sent as binary; strings either way.
                text: text && std::str::from_utf8(&payload).is_ok(),
                payload,
                fragments,
                ping_first,
            })
    }

    /// The frames of `sent` (fragments cut at any byte, even inside a
    /// character) and the messages the reader must give for them.
    fn encode(sent: &[Sent]) -> (Vec<u8>, Vec<Message>) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for message in sent {
            if message.ping_first {
                wire.extend(masked(0x89, b"ping"));
                expected.push(Message::Ping);
            }
            let step = message.payload.len().div_ceil(message.fragments).max(1);
            let mut parts: Vec<&[u8]> = message.payload.chunks(step).collect();
            if parts.is_empty() {
                parts.push(&[]);
            }
            let last = parts.len() - 1;
            for (i, part) in parts.iter().enumerate() {
                let opcode = match (i, message.text) {
                    (0, true) => 0x1,
                    (0, false) => 0x2,
                    _ => 0x0,
                };
                let fin = if i == last { 0x80 } else { 0 };
                wire.extend(masked(fin | opcode, part));
            }
            expected.push(if message.text {
                Message::Text(String::from_utf8(message.payload.clone()).expect("checked"))
            } else {
                Message::Binary(Bytes::from(message.payload.clone()))
            });
        }
        (wire, expected)
    }

    /// Writes `wire` in pieces of the given sizes (in turn), then ends the
    /// stream; reads messages until the end. `None` if a read took over
    /// 5 s (a reader that hangs).
    fn read_all(wire: Vec<u8>, pieces: Vec<usize>) -> Option<Vec<Result<Message, String>>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let (mut ws, mut client) = pair(64);
            let writer = tokio::spawn(async move {
                let mut rest = &wire[..];
                for size in pieces.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (piece, after) = rest.split_at((*size).min(rest.len()));
                    if client.write_all(piece).await.is_err() {
                        break;
                    }
                    rest = after;
                }
            });
            let mut got = Vec::new();
            loop {
                let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
                    .await
                    .ok()?;
                match next {
                    None => break,
                    Some(Ok(message)) => got.push(Ok(message)),
                    Some(Err(e)) => {
                        got.push(Err(e.to_string()));
                        // After a protocol error the rest of the stream is
                        // not frames; the connection is closed.
                        break;
                    }
                }
                if got.len() > 10_000 {
                    break;
                }
            }
            drop(ws);
            let _ = writer.await;
            Some(got)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_split_of_valid_frames_reads_the_same_messages(
            sent in proptest::collection::vec(sent(), 0..6),
            pieces in proptest::collection::vec(1..200usize, 1..8),
        ) {
            let (wire, expected) = encode(&sent);
            let got = read_all(wire, pieces).expect("no read hangs");
            let expected: Vec<Result<Message, String>> = expected.into_iter().map(Ok).collect();
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn no_input_makes_the_reader_panic_or_hang(
            bytes in proptest::collection::vec(any::<u8>(), 0..4000),
            pieces in proptest::collection::vec(1..100usize, 1..4),
        ) {
            prop_assert!(read_all(bytes, pieces).is_some(), "a read hung");
        }
    }
}
