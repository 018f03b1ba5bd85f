//! The one place that knows what Kubernetes accepts as a name, a label key and a
//! label value.
//!
//! The rules are those of Kubernetes' apimachinery validation (`IsDNS1123Label`,
//! `IsDNS1123Subdomain`, `IsLabelKey` a.k.a. `IsQualifiedName`, `IsLabelValue`),
//! so anything accepted here is accepted by the API server and the other way
//! round. Each check returns the first broken rule as a short reason that reads
//! after the value in an error message ("must be no more than 63 characters").
//!
//! Lengths are counted in bytes, as Kubernetes does; every valid value is ASCII,
//! so for valid values bytes and characters are the same.

/// Longest DNS-1123 label: namespace names.
pub const DNS1123_LABEL_MAX_LEN: usize = 63;
/// Longest DNS-1123 subdomain: most object names, and the prefix of a label key.
pub const DNS1123_SUBDOMAIN_MAX_LEN: usize = 253;
/// Longest name part of a label key (after the optional `prefix/`).
pub const LABEL_KEY_NAME_MAX_LEN: usize = 63;
/// Longest label value.
pub const LABEL_VALUE_MAX_LEN: usize = 63;

const EMPTY: &str = "must be non-empty";
const LABEL_FORMAT: &str = "must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const SUBDOMAIN_FORMAT: &str = "must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const KEY_NAME_FORMAT: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const VALUE_FORMAT: &str = "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const KEY_SLASHES: &str =
    "must contain at most one '/', between an optional DNS subdomain prefix and the name";

fn too_long(max: usize) -> String {
    format!("must be no more than {max} characters")
}

/// A DNS-1123 label, as namespace names must be: 1 to 63 of `a-z`, `0-9` and
/// `-`, starting and ending with a letter or digit.
pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(EMPTY.to_owned());
    }
    if s.len() > DNS1123_LABEL_MAX_LEN {
        return Err(too_long(DNS1123_LABEL_MAX_LEN));
    }
    if is_label_shape(s) {
        Ok(())
    } else if is_subdomain_shape(s) {
        // Otherwise fine: the dots are the only problem, say so.
        Err("must not contain dots".to_owned())
    } else {
        Err(LABEL_FORMAT.to_owned())
    }
}

/// A DNS-1123 subdomain, as most object names (Secrets, ConfigMaps) must be:
/// 1 to 253 characters, dot-separated labels of `a-z`, `0-9` and `-`, each
/// starting and ending with a letter or digit.
///
/// Kubernetes limits only the total length, not each label's (so a 64-character
/// label between dots is accepted), and so does this.
pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(EMPTY.to_owned());
    }
    if s.len() > DNS1123_SUBDOMAIN_MAX_LEN {
        return Err(too_long(DNS1123_SUBDOMAIN_MAX_LEN));
    }
    if is_subdomain_shape(s) {
        Ok(())
    } else {
        Err(SUBDOMAIN_FORMAT.to_owned())
    }
}

/// A label key (Kubernetes' "qualified name", also used for annotation keys):
/// an optional DNS-1123 subdomain prefix and `/`, then a name part of 1 to 63 of
/// `A-Z`, `a-z`, `0-9`, `-`, `_` and `.`, starting and ending with a letter or
/// digit.
pub fn label_key(s: &str) -> Result<(), String> {
    let mut parts = s.split('/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (None, name),
        (Some(prefix), Some(name), None) => (Some(prefix), name),
        _ => return Err(KEY_SLASHES.to_owned()),
    };
    if let Some(prefix) = prefix {
        dns1123_subdomain(prefix).map_err(|reason| format!("prefix part {reason}"))?;
    }
    if name.is_empty() {
        return Err(format!("name part {EMPTY}"));
    }
    if name.len() > LABEL_KEY_NAME_MAX_LEN {
        return Err(format!("name part {}", too_long(LABEL_KEY_NAME_MAX_LEN)));
    }
    if is_label_name_shape(name) {
        Ok(())
    } else {
        Err(format!("name part {KEY_NAME_FORMAT}"))
    }
}

/// A label value: empty, or up to 63 of `A-Z`, `a-z`, `0-9`, `-`, `_` and `.`,
/// starting and ending with a letter or digit.
pub fn label_value(s: &str) -> Result<(), String> {
    if s.len() > LABEL_VALUE_MAX_LEN {
        return Err(too_long(LABEL_VALUE_MAX_LEN));
    }
    if s.is_empty() || is_label_name_shape(s) {
        Ok(())
    } else {
        Err(VALUE_FORMAT.to_owned())
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, any length.
fn is_label_shape(s: &str) -> bool {
    alnum_ends(s)
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Labels of [`is_label_shape`] joined by single dots, any length.
fn is_subdomain_shape(s: &str) -> bool {
    s.split('.').all(is_label_shape)
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, any length.
fn is_label_name_shape(s: &str) -> bool {
    alnum_ends(s)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Non-empty, first and last byte an ASCII letter or digit.
fn alnum_ends(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` over `(input, expected)` rows; `None` means valid, `Some(reason)`
    /// the exact reason.
    fn table(what: &str, check: fn(&str) -> Result<(), String>, rows: &[(&str, Option<&str>)]) {
        for (input, want) in rows {
            let got = check(input);
            assert_eq!(
                got.as_ref().err().map(String::as_str),
                *want,
                "{what}({input:?}) gave {got:?}"
            );
        }
    }

    #[test]
    fn dns1123_labels() {
        let a63 = "a".repeat(63);
        let a64 = "a".repeat(64);
        let upper64 = "A".repeat(64);
        let fmt = Some(LABEL_FORMAT);
        table(
            "dns1123_label",
            dns1123_label,
            &[
                ("a", None),
                ("0", None),
                ("123", None),
                ("my-name", None),
                ("a--b", None),
                ("1-a", None),
                (&a63, None),
                (&a64, Some("must be no more than 63 characters")),
                // Length is checked first, as in Kubernetes.
                (&upper64, Some("must be no more than 63 characters")),
                ("", Some("must be non-empty")),
                ("A", fmt),
                ("myName", fmt),
                ("-a", fmt),
                ("a-", fmt),
                ("-", fmt),
                ("a_b", fmt),
                ("a b", fmt),
                (" a", fmt),
                ("a\n", fmt),
                ("é", fmt),
                ("a/b", fmt),
                ("a.b", Some("must not contain dots")),
                ("a.b.c", Some("must not contain dots")),
                (".a", fmt),
                ("a.", fmt),
                ("a..b", fmt),
            ],
        );
    }

    #[test]
    fn dns1123_subdomains() {
        let a253 = "a".repeat(253);
        let a254 = "a".repeat(254);
        // 4 × 63 + 3 dots = 255: too long even though every label is fine.
        let labels255 = [&*"a".repeat(63); 4].join(".");
        // One label longer than 63: Kubernetes limits only the total.
        let long_label = format!("{}.example.com", "a".repeat(64));
        let fmt = Some(SUBDOMAIN_FORMAT);
        table(
            "dns1123_subdomain",
            dns1123_subdomain,
            &[
                ("a", None),
                ("example.com", None),
                ("a-b.c-d.e", None),
                ("1.2.3", None),
                (&a253, None),
                (&long_label, None),
                (&a254, Some("must be no more than 253 characters")),
                (&labels255, Some("must be no more than 253 characters")),
                ("", Some("must be non-empty")),
                ("Example.com", fmt),
                (".a", fmt),
                ("a.", fmt),
                ("a..b", fmt),
                ("-a.b", fmt),
                ("a-.b", fmt),
                ("a.-b", fmt),
                ("a_b.c", fmt),
                ("a/b", fmt),
                ("a b", fmt),
                ("é.com", fmt),
            ],
        );
    }

    #[test]
    fn label_keys() {
        let n63 = "N".repeat(63);
        let n64 = "N".repeat(64);
        let p253 = format!("{}/n", "p".repeat(253));
        let p254 = format!("{}/n", "p".repeat(254));
        let long_prefix_label = format!("{}.example.com/n", "p".repeat(64));
        let p253_n63 = format!("{}/{}", "p".repeat(253), "n".repeat(63));
        let name_fmt = format!("name part {KEY_NAME_FORMAT}");
        let name_fmt = Some(name_fmt.as_str());
        let prefix_fmt = format!("prefix part {SUBDOMAIN_FORMAT}");
        let prefix_fmt = Some(prefix_fmt.as_str());
        table(
            "label_key",
            label_key,
            &[
                ("a", None),
                ("A", None),
                ("MyName", None),
                ("my.name", None),
                ("123-abc", None),
                ("a_b", None),
                ("a-_.b", None),
                ("example.com/MyName", None),
                ("a.b/c", None),
                ("a-b.c-d/E_f.g-H", None),
                ("push-to-k8s/ignore", None),
                (&n63, None),
                (&p253, None),
                (&p253_n63, None),
                (&long_prefix_label, None),
                ("", Some("name part must be non-empty")),
                ("a/", Some("name part must be non-empty")),
                (&n64, Some("name part must be no more than 63 characters")),
                ("-a", name_fmt),
                ("a-", name_fmt),
                ("_a", name_fmt),
                ("a_", name_fmt),
                (".a", name_fmt),
                ("a.", name_fmt),
                ("a b", name_fmt),
                (" a", name_fmt),
                ("a=b", name_fmt),
                ("é", name_fmt),
                ("/a", Some("prefix part must be non-empty")),
                (
                    &p254,
                    Some("prefix part must be no more than 253 characters"),
                ),
                ("Example.com/a", prefix_fmt),
                ("a./b", prefix_fmt),
                ("example..com/a", prefix_fmt),
                ("a_b/c", prefix_fmt),
                // The prefix is reported before the name, as in Kubernetes.
                ("A/-", prefix_fmt),
                ("a/b/c", Some(KEY_SLASHES)),
                ("//", Some(KEY_SLASHES)),
            ],
        );
    }

    #[test]
    fn label_values() {
        let v63 = "V".repeat(63);
        let v64 = "V".repeat(64);
        let fmt = Some(VALUE_FORMAT);
        table(
            "label_value",
            label_value,
            &[
                ("", None),
                ("a", None),
                ("MyValue", None),
                ("my_value", None),
                ("12345", None),
                ("a.b-c_d", None),
                (&v63, None),
                (&v64, Some("must be no more than 63 characters")),
                ("-a", fmt),
                ("a-", fmt),
                ("_a", fmt),
                (".a", fmt),
                ("a.", fmt),
                ("a b", fmt),
                ("a/b", fmt),
                ("a=b", fmt),
                ("é", fmt),
            ],
        );
    }
}
