//! Cutting text a peer sent to a bound: at most `max` bytes, never inside a character.

/// `s`, or its longest prefix of at most `max` bytes that ends on a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cut_never_splits_a_character() {
        assert_eq!(super::cut("héllo", 2), "h");
        assert_eq!(super::cut("héllo", 3), "hé");
        assert_eq!(super::cut("hé", 10), "hé");
        assert_eq!(super::cut("", 0), "");
    }
}
