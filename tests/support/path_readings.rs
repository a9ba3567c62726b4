//! How different upstreams read one request path: small pure functions, so that a test can ask
//! "could any upstream serve this path as something under /admin?" about every path that reached
//! an upstream. Each reading starts from the raw request target as it arrived (origin form,
//! possibly with a query) and returns the path the upstream would serve.
//!
//! The readings are deliberately generous (when unsure, they resolve more): a path is only safe
//! if it is safe under all of them.

/// One reading: the raw request target in, the path an upstream would serve out.
pub type Reading = fn(&str) -> String;

/// The readings, by name.
pub const READINGS: [(&str, Reading); 4] = [
    ("rfc3986", rfc3986),
    ("merge-slashes+rfc3986", merged_rfc3986),
    ("tomcat", tomcat),
    ("decode-first", decode_first),
];

/// Every reading of `target`, by name.
pub fn readings(target: &str) -> Vec<(&'static str, String)> {
    READINGS
        .iter()
        .map(|(name, read)| (*name, read(target)))
        .collect()
}

/// The path part of a request target: everything before the first `?` or `#`.
pub fn path_part(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or("")
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes the `%XX` escapes whose decoded byte satisfies `decode`; others (and malformed
/// escapes) stay as they are. Bytes that are not UTF-8 are replaced (U+FFFD).
pub fn percent_decode(s: &str, decode: impl Fn(u8) -> bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|b| hex(*b));
            let lo = bytes.get(i + 2).and_then(|b| hex(*b));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                let decoded = hi << 4 | lo;
                if decode(decoded) {
                    out.push(decoded);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §2.3 unreserved characters (their escapes are equivalent to themselves, §6.2.2.2).
pub fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 §5.2.4 `remove_dot_segments`, literally (a `..` above the root stays at the root).
pub fn remove_dot_segments(path: &str) -> String {
    fn pop_last_segment(output: &mut String) {
        match output.rfind('/') {
            Some(at) => output.truncate(at),
            None => output.clear(),
        }
    }
    let mut input = path;
    let mut output = String::with_capacity(path.len());
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest; // A
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest; // A
        } else if input.starts_with("/./") {
            input = &input[2..]; // B: "/./" -> "/"
        } else if input == "/." {
            input = "/"; // B
        } else if input.starts_with("/../") {
            input = &input[3..]; // C: "/../" -> "/", and drop the last output segment
            pop_last_segment(&mut output);
        } else if input == "/.." {
            input = "/"; // C
            pop_last_segment(&mut output);
        } else if input == "." || input == ".." {
            input = ""; // D
        } else {
            // E: move the first segment (with its leading "/", if any) to the output.
            let start = usize::from(input.starts_with('/'));
            let end = input[start..]
                .find('/')
                .map_or(input.len(), |at| at + start);
            output.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    output
}

/// Runs of `/` become one `/`.
pub fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Removes the `;params` of every segment (`/a;x=1/..;/b` -> `/a/../b`), as Tomcat and Spring do.
pub fn strip_path_params(path: &str) -> String {
    path.split('/')
        .map(|segment| segment.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("/")
}

/// (a) RFC 3986: the escapes of unreserved characters (`%2e` included) are decoded, then
/// `remove_dot_segments`. `//` is an empty segment, `;` an ordinary character.
pub fn rfc3986(target: &str) -> String {
    remove_dot_segments(&percent_decode(path_part(target), is_unreserved))
}

/// (b) As (a), but runs of `/` are merged first (so `/a//../b` is `/b`, not `/a/b`).
pub fn merged_rfc3986(target: &str) -> String {
    remove_dot_segments(&merge_slashes(&percent_decode(
        path_part(target),
        is_unreserved,
    )))
}

/// (c) Tomcat: `;params` are stripped from every raw segment, then everything is decoded
/// (`%2F` and `%5C` too, as with `ALLOW_ENCODED_SLASH`), `\` is a `/` (`ALLOW_BACKSLASH`), runs
/// of `/` are merged and dot segments resolved.
pub fn tomcat(target: &str) -> String {
    let stripped = strip_path_params(path_part(target));
    let decoded = percent_decode(&stripped, |_| true).replace('\\', "/");
    remove_dot_segments(&merge_slashes(&decoded))
}

/// (d) Decode first: everything is decoded (`%3B` included), `\` is a `/`, and only then are
/// `;params` stripped, slashes merged and dot segments resolved (so `..%3B` counts as `..;`,
/// that is `..`). No server is known to do exactly this; it is the most generous reading.
pub fn decode_first(target: &str) -> String {
    let decoded = percent_decode(path_part(target), |_| true).replace('\\', "/");
    remove_dot_segments(&merge_slashes(&strip_path_params(&decoded)))
}

/// Whether `path` is `prefix` or below it, compared case-insensitively the way the most
/// generous case-insensitive upstream would (see [`generous_fold`]), so that IIS, Java and .NET
/// servers are covered too; a trailing `;params` on the last prefix segment counts as below.
pub fn is_under(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (generous_fold(path), generous_fold(prefix));
    match path.strip_prefix(&prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with(['/', ';']),
        None => false,
    }
}

/// `text` as a case-insensitive upstream may compare it, taking every folding some server does:
/// NFKC (fullwidth `ａ`, `ⅰ`, `／` become `a`, `i`, `/`), then each character upper-cased and
/// lower-cased in turn (Java's `equalsIgnoreCase`, .NET's invariant comparisons: dotless `ı` and
/// `ſ` become `i` and `s`, KELVIN SIGN `k`), the dot of `İ` dropped, and the invisible format
/// characters that culture-aware comparisons ignore ([`DEFAULT_IGNORABLE`]: soft hyphen,
/// zero-width space and joiners, BOM, ...) dropped. Percent-escapes are left as they are: decoding is the readings' business.
pub fn generous_fold(text: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let visible: String = text.chars().filter(|c| !is_default_ignorable(*c)).collect();
    let folded: String = visible
        .nfkc()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect();
    folded.replace("i\u{307}", "i")
}

/// The readings of `target` that land under `prefix`, by name.
pub fn readings_under(target: &str, prefix: &str) -> Vec<(&'static str, String)> {
    readings(target)
        .into_iter()
        .filter(|(_, path)| is_under(path, prefix))
        .collect()
}

/// Whether every reading agrees with the path as sent (nothing to resolve, strip or decode).
pub fn is_unambiguous(target: &str) -> bool {
    let path = path_part(target);
    readings(target).iter().all(|(_, read)| read == path)
}

/// Unicode 15.1 `Default_Ignorable_Code_Point` (DerivedCoreProperties.txt), written out here
/// as an independent reference for the crate's ICU4X property data.
pub const DEFAULT_IGNORABLE: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
];

pub fn is_default_ignorable(c: char) -> bool {
    let c = c as u32;
    DEFAULT_IGNORABLE
        .iter()
        .any(|&(low, high)| (low..=high).contains(&c))
}
