//! Text that Signet prints in lists and writes to the audit log, given by an operator.

/// A control character, or one that changes how the text around it reads while showing
/// nothing itself: soft hyphen, zero-width and direction marks, line and paragraph
/// separators, bidirectional embeddings and isolates, word joiners, the byte-order mark.
pub fn is_control_or_invisible(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00AD}' | '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
}
