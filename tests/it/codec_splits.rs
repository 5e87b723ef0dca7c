//! Framing does not depend on how the bytes are cut into reads: for every built-in codec,
//! decoding an encoded stream fed in arbitrary chunks, the way the server feeds a
//! connection's input, gives the same requests as decoding the whole stream at once.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use reactor_pool::{Codec, DecodeError, LengthPrefixedCodec, LineCodec, Output, RawCodec};

/// What decoding produced: the requests, and the error that ended it, if any.
type Outcome<R> = (Vec<R>, Option<DecodeError>);

/// Feeds `chunks` to `codec` as the server does: accumulate the input, decode requests from
/// its front and remove the bytes they used, and on `None` wait for the next chunk. Stops at
/// the first error.
fn decode_in_chunks<C: Codec>(mut codec: C, chunks: &[&[u8]]) -> Outcome<C::Request> {
    let mut input: Vec<u8> = Vec::new();
    let mut requests = Vec::new();
    for chunk in chunks {
        input.extend_from_slice(chunk);
        loop {
            match codec.decode(&input) {
                Ok(Some((request, used))) => {
                    assert!(
                        used >= 1 && used <= input.len(),
                        "consumed {used} of {} bytes",
                        input.len()
                    );
                    requests.push(request);
                    input.drain(..used);
                }
                Ok(None) => break,
                Err(error) => return (requests, Some(error)),
            }
        }
    }
    (requests, None)
}

fn decode_whole<C: Codec>(codec: C, bytes: &[u8]) -> Outcome<C::Request> {
    decode_in_chunks(codec, &[bytes])
}

/// Cuts `bytes` at the given points (any order, duplicates allowed: empty reads are fine).
fn split<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

fn same_error_kind(a: &Option<DecodeError>, b: &Option<DecodeError>) -> bool {
    match (a, b) {
        (None, None) => true,
        // The size found depends on how much had arrived; the limit does not.
        (
            Some(DecodeError::FrameTooLarge { max: x, .. }),
            Some(DecodeError::FrameTooLarge { max: y, .. }),
        ) => x == y,
        (Some(DecodeError::Invalid(_)), Some(DecodeError::Invalid(_))) => true,
        _ => false,
    }
}

fn line_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    // Lines without `\r` or `\n`: their decoded form is exactly what was sent.
    vec(
        any::<u8>().prop_filter("no line ends", |b| *b != b'\n' && *b != b'\r'),
        0..max_len,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn raw_codec_chunks_concatenate_to_the_input(
        bytes in vec(any::<u8>(), 0..2000),
        cuts in vec(any::<Index>(), 0..20),
        max_frame in 1usize..300,
    ) {
        let chunks = split(&bytes, &cuts);
        let (frames, error) = decode_in_chunks(RawCodec::with_max_frame(max_frame), &chunks);
        prop_assert!(error.is_none());
        prop_assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= max_frame));
        prop_assert_eq!(frames.concat(), bytes.clone());

        let (whole, error) = decode_whole(RawCodec::with_max_frame(max_frame), &bytes);
        prop_assert!(error.is_none());
        prop_assert_eq!(whole.concat(), bytes);
    }

    #[test]
    fn line_codec_decodes_the_same_lines_however_the_stream_is_cut(
        lines in vec((line_bytes(60), any::<bool>()), 0..40),
        cuts in vec(any::<Index>(), 0..30),
    ) {
        let mut bytes = Vec::new();
        for (line, crlf) in &lines {
            bytes.extend_from_slice(line);
            bytes.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        let expected: Vec<Vec<u8>> = lines.iter().map(|(line, _)| line.clone()).collect();

        let whole = decode_whole(LineCodec::new(), &bytes);
        prop_assert_eq!(&whole, &(expected, None));
        let chunks = split(&bytes, &cuts);
        prop_assert_eq!(decode_in_chunks(LineCodec::new(), &chunks), whole);
    }

    #[test]
    fn line_codec_with_arbitrary_bytes_and_a_small_limit_agrees_with_whole_decoding(
        bytes in vec(prop_oneof![Just(b'\n'), Just(b'\r'), any::<u8>()], 0..600),
        cuts in vec(any::<Index>(), 0..30),
        max_line in 0usize..40,
    ) {
        let (whole, whole_error) = decode_whole(LineCodec::with_max_frame(max_line), &bytes);
        let chunks = split(&bytes, &cuts);
        let (split_lines, split_error) =
            decode_in_chunks(LineCodec::with_max_frame(max_line), &chunks);
        prop_assert_eq!(split_lines, whole);
        prop_assert!(
            same_error_kind(&split_error, &whole_error),
            "split: {:?}, whole: {:?}", split_error, whole_error
        );
    }

    #[test]
    fn length_prefixed_codec_decodes_the_same_frames_however_the_stream_is_cut(
        payloads in vec(vec(any::<u8>(), 0..300), 0..30),
        cuts in vec(any::<Index>(), 0..30),
    ) {
        let mut bytes = Vec::new();
        let mut encoder = LengthPrefixedCodec::new();
        for payload in &payloads {
            bytes.extend(Output::capture(|out| encoder.encode(payload.clone(), out)).0);
        }

        let whole = decode_whole(LengthPrefixedCodec::new(), &bytes);
        prop_assert_eq!(&whole, &(payloads, None));
        let chunks = split(&bytes, &cuts);
        prop_assert_eq!(decode_in_chunks(LengthPrefixedCodec::new(), &chunks), whole);
    }

    #[test]
    fn length_prefixed_codec_with_a_small_limit_agrees_with_whole_decoding(
        payloads in vec(vec(any::<u8>(), 0..80), 0..20),
        cuts in vec(any::<Index>(), 0..30),
        max_frame in 0usize..80,
    ) {
        let mut bytes = Vec::new();
        let mut encoder = LengthPrefixedCodec::new();
        for payload in &payloads {
            bytes.extend(Output::capture(|out| encoder.encode(payload.clone(), out)).0);
        }
        let (whole, whole_error) =
            decode_whole(LengthPrefixedCodec::with_max_frame(max_frame), &bytes);
        let expected: Vec<Vec<u8>> =
            payloads.iter().take_while(|p| p.len() <= max_frame).cloned().collect();
        prop_assert_eq!(&whole, &expected);
        prop_assert_eq!(whole_error.is_some(), expected.len() < payloads.len());

        let chunks = split(&bytes, &cuts);
        let (split_frames, split_error) =
            decode_in_chunks(LengthPrefixedCodec::with_max_frame(max_frame), &chunks);
        prop_assert_eq!(split_frames, whole);
        prop_assert!(
            same_error_kind(&split_error, &whole_error),
            "split: {:?}, whole: {:?}", split_error, whole_error
        );
    }
}
