//! The entry point for fuzzing the telnet decoder (`fuzz/fuzz_targets/telnet_decoder.rs`,
//! docs/config.md "Fuzzing the telnet decoder"): arbitrary client bytes, cut into reads where
//! the input says, through the real [`Decoder`], checking what the front end relies on. Any
//! panic is a bug.

use super::telnet::{self, Decoder, IAC, ToBoard};

/// Runs one input: the first byte is a read length (1 to 256), the rest the client's bytes,
/// decoded in reads of that length and again in one read. Returns the data bytes for the
/// board.
pub fn telnet_decoder(data: &[u8]) -> usize {
    let Some((&first, input)) = data.split_first() else {
        return 0;
    };
    let step = usize::from(first) + 1;
    let mut pieces = Decoder::new();
    let (mut data, mut reply, mut breaks) = (Vec::new(), Vec::new(), 0usize);
    for read in input.chunks(step) {
        let d = pieces.decode(read);
        assert!(
            d.reply.len() <= read.len() + 2,
            "one read's answers are at most 2 bytes longer than the read"
        );
        assert!(
            d.data.len() <= read.len(),
            "data never longer than the read"
        );
        assert!(
            d.breaks.windows(2).all(|w| matches!(w, [a, b] if a <= b))
                && d.breaks.iter().all(|&b| b <= d.data.len()),
            "breaks are in order, inside the data"
        );
        let steps = d.input();
        let rebuilt: Vec<u8> = steps
            .iter()
            .filter_map(|s| match s {
                ToBoard::Data(d) => Some(d.to_vec()),
                ToBoard::Break => None,
            })
            .flatten()
            .collect();
        assert_eq!(rebuilt, d.data, "the steps carry the data, in order");
        assert!(
            steps
                .windows(2)
                .all(|w| w != [ToBoard::Break, ToBoard::Break]),
            "consecutive breaks are one"
        );
        breaks += d.breaks.len();
        data.extend_from_slice(&d.data);
        reply.extend_from_slice(&d.reply);
    }
    assert!(
        reply.len() <= input.len(),
        "answers never outgrow the input"
    );
    assert!(
        reply.chunks(3).all(|c| matches!(
            c,
            [
                IAC,
                telnet::WILL | telnet::WONT | telnet::DO | telnet::DONT,
                _
            ]
        )),
        "answers are whole option commands: {reply:?}"
    );
    // Where the reads were cut makes no difference.
    let whole = Decoder::new().decode(input);
    assert_eq!(whole.data, data, "the cuts changed the data");
    assert_eq!(whole.reply, reply, "the cuts changed the answers");
    assert_eq!(whole.breaks.len(), breaks, "the cuts changed the breaks");
    // What the board prints reaches a telnet client unchanged: escaping then decoding gives
    // it back (but for CR NUL, which telnet reads as a bare CR).
    if !data.contains(&b'\r') {
        let back = Decoder::new().decode(&telnet::escape(&data));
        assert_eq!(back.data, data, "escape and decode are not inverse");
    }
    data.len()
}
