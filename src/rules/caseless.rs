//! The caseless reading of a request path segment: how an upstream that matches paths
//! case-insensitively reads it, so that [`RouteIndex::find_case_checked`] can refuse a request
//! the two readings route differently.
//!
//! ASCII upstreams (IIS, some ASP.NET and Spring set-ups) fold `A`–`Z`. Unicode-aware ones
//! decode the escapes and compare the characters caselessly: .NET and Java per character (so the
//! Kelvin sign `K` U+212A is `k`, the long `ſ` U+017F is `s`, and the Turkish `İ` U+0130 and `ı`
//! U+0131 are `i`), ICU-style full case folding (`ﬁ` U+FB01 is `fi`, `ß` is `ss`), some after
//! compatibility normalisation (NFKC: the fullwidth `Ａ` U+FF21 is `A`), and culture-aware
//! comparisons (.NET's `InvariantCultureIgnoreCase` and culture-sensitive `StartsWith`, ICU
//! collation) ignore default-ignorable characters altogether (`ad\u{AD}min`, with a soft hyphen,
//! is `admin`; so are zero-width spaces and joiners, the BOM, variation selectors). Rule
//! literals are plain ASCII (no escapes, see `route`), so one reading covers them all: the
//! coarsest. ASCII letters are lower-cased; each run of escaped non-ASCII bytes is decoded and
//! read as Unicode's `NFKC_Casefold` does (default-ignorable characters removed, NFKC, full case
//! folding, NFKC again), with the Turkish `i` folded to `i`; escaped ASCII stays as it is.
//!
//! NFKC also turns some characters into path syntax: `／` U+FF0F is `/`, `‥` U+2025 is `..`,
//! `；` U+FF1B is `;`. A segment whose reading contains `/`, `\`, `;`, `%`, `?`, `#` or a
//! control character, or is `.`, `..` or empty (default-ignorables only, so `//` to the
//! upstream), cannot be matched the way such an upstream matches it:
//! [`read`] refuses it ([`DisguisedDelimiter`]) and the path normaliser refuses the request.
//!
//! [`RouteIndex::find_case_checked`]: super::matcher::RouteIndex::find_case_checked

use std::borrow::Cow;

use icu_normalizer::ComposingNormalizerBorrowed;
use icu_properties::props::DefaultIgnorableCodePoint;
use icu_properties::CodePointSetData;
use unicase::UniCase;

use super::route::hex_digit;

/// An escaped character that a normalising upstream reads as path syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an escaped character reads as '/', '\\', ';', '%', '?', '#', a control character, \
     '.', '..' or an empty segment after Unicode normalisation"
)]
pub struct DisguisedDelimiter;

/// Whether the caseless reading of `segment` may differ from it: it has an ASCII capital or an
/// escaped non-ASCII byte. A scan of the bytes; most request paths have neither.
pub fn may_differ(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if escapes_non_ascii(bytes, i) => return true,
            // An escape's hex digits are not letters.
            b'%' => i += 3,
            b if b.is_ascii_uppercase() => return true,
            _ => i += 1,
        }
    }
    false
}

/// Whether `segment` has an escaped non-ASCII byte (the only part of a normal-form segment that
/// Unicode normalisation can turn into path syntax).
pub fn has_escaped_non_ascii(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'%' && escapes_non_ascii(bytes, i))
}

/// The segment as a caseless upstream reads it, to be matched against rule literals in ASCII
/// lower case. `segment` is in normal form (escapes valid, runs of escapes valid UTF-8).
pub fn read(segment: &str) -> Result<Cow<'_, str>, DisguisedDelimiter> {
    if !may_differ(segment) {
        return Ok(Cow::Borrowed(segment));
    }
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && escapes_non_ascii(bytes, i) {
            let start = i;
            let mut run = Vec::new();
            while i < bytes.len() && bytes[i] == b'%' && escapes_non_ascii(bytes, i) {
                run.push(escaped_byte(bytes, i));
                i += 3;
            }
            match std::str::from_utf8(&run) {
                Ok(text) => {
                    let folded = fold_text(text);
                    if folded.chars().any(is_path_syntax) {
                        return Err(DisguisedDelimiter);
                    }
                    out.push_str(&folded);
                }
                // Not text to a Unicode upstream (the normaliser refuses it anyway): kept as is.
                Err(_) => out.push_str(&segment[start..i]),
            }
            continue;
        }
        if bytes[i] == b'%' {
            // Escaped ASCII stays escaped (its hex digits are not letters to fold).
            let end = (i + 3).min(bytes.len());
            out.push_str(&segment[i..end]);
            i = end;
        } else {
            out.push(char::from(bytes[i].to_ascii_lowercase()));
            i += 1;
        }
    }
    // A segment that reads as nothing (default-ignorables only) is an empty segment, `//`.
    if out.is_empty() || out == "." || out == ".." {
        return Err(DisguisedDelimiter);
    }
    Ok(Cow::Owned(out))
}

/// Default-ignorable characters removed, NFKC, full case folding with the Turkish `i` folded to
/// `i`, NFKC again, default-ignorable characters removed again (NFKC makes some: U+FFA0 HALFWIDTH
/// HANGUL FILLER is U+3164 HANGUL FILLER).
fn fold_text(text: &str) -> String {
    let nfkc = ComposingNormalizerBorrowed::new_nfkc();
    let visible = without_default_ignorables(text);
    let folded = UniCase::unicode(nfkc.normalize(&visible)).to_folded_case();
    // `İ` folds to `i` + U+0307 COMBINING DOT ABOVE; the Turkic mappings (and Java's and .NET's
    // per-character comparisons) make it `i`, and the dotless `ı` too.
    let turkic = folded.replace("i\u{307}", "i").replace('ı', "i");
    without_default_ignorables(&nfkc.normalize(&turkic)).into_owned()
}

/// `text` without its `Default_Ignorable_Code_Point` characters (Unicode's DerivedCoreProperties).
fn without_default_ignorables(text: &str) -> Cow<'_, str> {
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    if !text.chars().any(|c| ignorable.contains(c)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|c| !ignorable.contains(*c)).collect())
}

/// Characters that, read from an escape, would be path syntax to the upstream.
fn is_path_syntax(c: char) -> bool {
    matches!(c, '/' | '\\' | ';' | '%' | '?' | '#') || c.is_control()
}

fn escapes_non_ascii(bytes: &[u8], at: usize) -> bool {
    matches!(
        bytes.get(at + 1),
        Some(b'8'..=b'9' | b'A'..=b'F' | b'a'..=b'f')
    ) && bytes.get(at + 2).is_some_and(u8::is_ascii_hexdigit)
}

fn escaped_byte(bytes: &[u8], at: usize) -> u8 {
    let digit = |b: u8| hex_digit(b).unwrap_or(0);
    digit(bytes[at + 1]) << 4 | digit(bytes[at + 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(segment: &str) -> Result<String, DisguisedDelimiter> {
        read(segment).map(Cow::into_owned)
    }

    #[test]
    fn plain_lower_case_segments_are_their_own_reading() {
        for s in ["admin", "orders", "a%20b", "x%3F", "1.json"] {
            assert!(matches!(read(s), Ok(Cow::Borrowed(b)) if b == s), "{s}");
        }
    }

    #[test]
    fn ascii_letters_fold_and_escaped_ascii_stays() {
        assert_eq!(reading("ADMIN").unwrap(), "admin");
        assert_eq!(reading("Read%20Me").unwrap(), "read%20me");
        assert_eq!(reading("A%3F").unwrap(), "a%3F");
    }

    #[test]
    fn characters_that_fold_to_ascii_are_read_as_ascii() {
        let cases = [
            ("%E2%84%AAeys", "keys"),    // KELVIN SIGN
            ("order%C5%BF", "orders"),   // LATIN SMALL LETTER LONG S
            ("adm%C4%B1n", "admin"),     // LATIN SMALL LETTER DOTLESS I
            ("%C4%B0tems", "items"),     // LATIN CAPITAL LETTER I WITH DOT ABOVE
            ("%EF%BC%A1dmin", "admin"),  // FULLWIDTH LATIN CAPITAL LETTER A
            ("%EF%AC%81les", "files"),   // LATIN SMALL LIGATURE FI
            ("Stra%C3%9Fe", "strasse"),  // LATIN SMALL LETTER SHARP S
            ("%E2%85%A0", "i"),          // ROMAN NUMERAL ONE
            ("ad%C2%ADmin", "admin"),    // SOFT HYPHEN (default-ignorable)
            ("%E2%80%8Bkeys", "keys"),   // ZERO WIDTH SPACE
            ("adm%E2%80%8Din", "admin"), // ZERO WIDTH JOINER
            ("admin%EF%BB%BF", "admin"), // ZERO WIDTH NO-BREAK SPACE (BOM)
            ("a%EF%B8%8Fdmin", "admin"), // VARIATION SELECTOR-16
            ("admin%EF%BE%A0", "admin"), // HALFWIDTH HANGUL FILLER: NFKC makes it U+3164
            ("caf%C3%A9", "café"),       // stays non-ASCII: no ASCII literal matches it
            ("CAF%C3%89", "café"),
        ];
        for (segment, expected) in cases {
            assert_eq!(reading(segment).unwrap(), expected, "{segment}");
            assert!(may_differ(segment), "{segment}");
        }
    }

    #[test]
    fn escapes_that_normalise_to_path_syntax_are_refused() {
        for segment in [
            "a%EF%BC%8Fadmin", // FULLWIDTH SOLIDUS
            "%E2%80%A5",       // TWO DOT LEADER
            "%EF%BC%8E%EF%BC%8E",
            "%E2%80%A4", // ONE DOT LEADER
            ".%E2%80%A4",
            "x%EF%BC%9B", // FULLWIDTH SEMICOLON
            "x%EF%BC%BC", // FULLWIDTH REVERSE SOLIDUS
            "x%EF%BC%85", // FULLWIDTH PERCENT SIGN
            "x%EF%BC%9F", // FULLWIDTH QUESTION MARK
            "x%EF%BC%83", // FULLWIDTH NUMBER SIGN
            "x%C2%85",    // NEXT LINE (a control character)
            "..%C2%AD",   // `..` once the soft hyphen is ignored
            "%E2%80%8B.", // `.` once the zero width space is ignored
            "%C2%AD",     // nothing: an empty segment, `//`, to the upstream
            "%E2%80%8B%EF%BB%BF",
        ] {
            assert_eq!(reading(segment), Err(DisguisedDelimiter), "{segment}");
            assert!(has_escaped_non_ascii(segment), "{segment}");
        }
        // A dot leader inside a longer segment is a dot in a name, not a dot segment.
        assert_eq!(reading("a%E2%80%A4b").unwrap(), "a.b");
    }
}
