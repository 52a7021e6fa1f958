//! Text from strangers, bounded before it is echoed back.
//!
//! Names, reasons and messages that a guest, an uploader or an API client wrote end up in
//! replies, NATS headers, events and logs. Each of those has a size limit (a reply over the
//! server's max payload is never delivered; a header holds one line), so such text is cut to
//! a known size, saying how long it was, and kept to one line where a line is all that fits.

/// `text` cut to at most `max` bytes (at a character boundary), followed by
/// `… (N bytes in all)` when it was cut, so the reader knows something is missing and how much.
pub fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..cut], text.len())
}

/// `text` with every control character (line breaks included) replaced by a space: what a
/// NATS header value or a one-line message can hold.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A name as echoed in an error message: escaped (so it cannot forge lines or colour a
/// terminal) and clipped to 80 bytes.
pub fn echo(name: &str) -> String {
    clip(&name.escape_debug().to_string(), 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_saying_how_long_it_was() {
        assert_eq!(clip("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = clip(&long, 101);
        assert!(cut.starts_with(&"é".repeat(50)), "{cut}");
        assert!(cut.ends_with("… (2000 bytes in all)"), "{cut}");
        assert!(cut.len() < 101 + 30);
    }

    #[test]
    fn control_characters_become_spaces_and_names_are_escaped() {
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
        assert_eq!(echo("a\nb"), "a\\nb");
        assert!(echo(&"x".repeat(10_000)).ends_with("(10000 bytes in all)"));
    }
}
