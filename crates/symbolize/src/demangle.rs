//! Demangling of C++ (Itanium ABI) and Rust (legacy and v0) symbol names.
//!
//! Four modes, as profilers usually offer them:
//!
//! | mode | C++ `_ZN3foo3barIiEEvT_` | Rust v0 / legacy |
//! |---|---|---|
//! | [`DemangleMode::None`] | the raw name | the raw name |
//! | [`DemangleMode::Simplified`] | `foo::bar` | path without hash and without generic arguments |
//! | [`DemangleMode::Templates`] | `foo::bar<int>` | path without hash, generics kept |
//! | [`DemangleMode::Full`] | `void foo::bar<int>(int)` | everything, hash included |
//!
//! A name that is not mangled, or that the demanglers reject, is returned unchanged: demangling
//! never fails and never panics (recursion in the C++ demangler is bounded).

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

/// How much of a demangled name to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DemangleMode {
    /// Names are kept as found in the symbol table (mangled).
    None,
    /// Demangled without parameters, return types or template/generic arguments:
    /// `std::vector::push_back`. Best for flame graphs: all instantiations merge.
    #[default]
    Simplified,
    /// Demangled without parameters, template/generic arguments kept:
    /// `std::vector<int, std::allocator<int> >::push_back`.
    Templates,
    /// Everything the demangler prints, parameters (and the Rust hash) included.
    Full,
}

impl DemangleMode {
    /// All modes, in order of increasing detail.
    pub const ALL: [DemangleMode; 4] = [
        DemangleMode::None,
        DemangleMode::Simplified,
        DemangleMode::Templates,
        DemangleMode::Full,
    ];

    /// The mode's name as accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            DemangleMode::None => "none",
            DemangleMode::Simplified => "simplified",
            DemangleMode::Templates => "templates",
            DemangleMode::Full => "full",
        }
    }
}

impl fmt::Display for DemangleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`DemangleMode`] from a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownDemangleMode(pub String);

impl fmt::Display for UnknownDemangleMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown demangle mode {:?}; use one of none, simplified, templates, full",
            self.0
        )
    }
}

impl std::error::Error for UnknownDemangleMode {}

impl FromStr for DemangleMode {
    type Err = UnknownDemangleMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DemangleMode::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| UnknownDemangleMode(s.to_owned()))
    }
}

/// The C++ demangler's recursion bound: deep enough for real names, shallow enough that a
/// hostile name cannot exhaust the stack.
const CPP_RECURSION_LIMIT: u32 = 96;

/// Longest name given to the demanglers; longer names (hostile or absurd) stay raw.
const MAX_MANGLED_LEN: usize = 16 * 1024;

/// Demangles `name` according to `mode`. Names that are not mangled are returned unchanged.
pub fn demangle(name: &str, mode: DemangleMode) -> Cow<'_, str> {
    if mode == DemangleMode::None || name.len() > MAX_MANGLED_LEN {
        return Cow::Borrowed(name);
    }
    if let Some(s) = demangle_rust(name, mode) {
        return Cow::Owned(s);
    }
    if let Some(s) = demangle_cpp(name, mode) {
        return Cow::Owned(s);
    }
    Cow::Borrowed(name)
}

fn demangle_rust(name: &str, mode: DemangleMode) -> Option<String> {
    // Both schemes: legacy `_ZN...17h<hash>E`, v0 `_R...`.
    let d = rustc_demangle::try_demangle(name).ok()?;
    let legacy = name.starts_with("_ZN") || name.starts_with("ZN") || name.starts_with("__ZN");
    if legacy && !name.contains("17h") {
        // A C++ name that happens to use the nested-name form; rustc-demangle accepts some.
        return None;
    }
    Some(match mode {
        DemangleMode::None => name.to_owned(),
        DemangleMode::Full => d.to_string(),
        DemangleMode::Templates => format!("{d:#}"),
        DemangleMode::Simplified => strip_generic_args(&format!("{d:#}"), Lang::Rust),
    })
}

fn demangle_cpp(name: &str, mode: DemangleMode) -> Option<String> {
    if !name.starts_with("_Z") {
        return None;
    }
    let parse = cpp_demangle::ParseOptions::default().recursion_limit(CPP_RECURSION_LIMIT);
    let sym = cpp_demangle::Symbol::new_with_options(name.as_bytes(), &parse).ok()?;
    let opts = cpp_demangle::DemangleOptions::new().recursion_limit(CPP_RECURSION_LIMIT);
    let brief = opts.no_params().no_return_type();
    let out = match mode {
        DemangleMode::None => return None,
        DemangleMode::Full => sym.demangle_with_options(&opts).ok()?,
        DemangleMode::Templates => sym.demangle_with_options(&brief).ok()?,
        DemangleMode::Simplified => {
            strip_generic_args(&sym.demangle_with_options(&brief).ok()?, Lang::Cpp)
        }
    };
    (!out.is_empty()).then_some(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lang {
    Cpp,
    Rust,
}

/// Removes template / generic argument lists (`<...>`) that follow a name, keeping Rust
/// qualified paths (`<T as Trait>`), the brackets of `operator<`, `operator<<`, `operator<=>`
/// and `operator->`, and Rust's `::<` turbofish separator.
fn strip_generic_args(s: &str, lang: Lang) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'<' {
            // `operator<`, `operator<<`, `operator<=`, `operator<=>`: copy the operator.
            if lang == Lang::Cpp && out.ends_with("operator") {
                let n = b[i..]
                    .iter()
                    .take_while(|&&x| matches!(x, b'<' | b'=' | b'>'))
                    .count()
                    .min(3);
                out.push_str(&s[i..i + n]);
                i += n;
                continue;
            }
            let after_name = out
                .as_bytes()
                .last()
                .is_some_and(|&p| p.is_ascii_alphanumeric() || p == b'_' || p == b'>' || p == b'}');
            let turbofish = lang == Lang::Rust && out.ends_with("::");
            if (after_name || turbofish)
                && let Some(end) = matching_close(b, i)
            {
                if turbofish {
                    out.truncate(out.len() - 2);
                }
                i = end + 1;
                continue;
            }
        }
        if c == b'-'
            && lang == Lang::Cpp
            && out.ends_with("operator")
            && b.get(i + 1) == Some(&b'>')
        {
            out.push_str("->");
            i += 2;
            continue;
        }
        // Copy one UTF-8 character.
        let len = utf8_len(c);
        out.push_str(s.get(i..i + len).unwrap_or("\u{fffd}"));
        i += len;
    }
    out
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// Index of the `>` closing the `<` at `open`, skipping nested brackets, `->` and parentheses.
fn matching_close(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut parens = 0usize;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'(' => parens += 1,
            b')' => parens = parens.saturating_sub(1),
            b'<' if parens == 0 => depth += 1,
            b'>' if parens == 0 && i > 0 && b[i - 1] == b'-' => {}
            b'>' if parens == 0 => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(mangled, [none, simplified, templates, full])`.
    fn check(mangled: &str, expected: [&str; 4]) {
        for (mode, want) in DemangleMode::ALL.into_iter().zip(expected) {
            assert_eq!(demangle(mangled, mode), want, "{mangled} in mode {mode}");
        }
    }

    #[test]
    fn cpp_names_in_each_mode() {
        check(
            "_ZNSt6vectorIiSaIiEE9push_backERKi",
            [
                "_ZNSt6vectorIiSaIiEE9push_backERKi",
                "std::vector::push_back",
                "std::vector<int, std::allocator<int> >::push_back",
                "std::vector<int, std::allocator<int> >::push_back(int const&)",
            ],
        );
        check(
            "_ZN9__gnu_cxx13new_allocatorIcE8allocateEmPKv",
            [
                "_ZN9__gnu_cxx13new_allocatorIcE8allocateEmPKv",
                "__gnu_cxx::new_allocator::allocate",
                "__gnu_cxx::new_allocator<char>::allocate",
                "__gnu_cxx::new_allocator<char>::allocate(unsigned long, void const*)",
            ],
        );
        // A function template: the return type only shows in full mode.
        check(
            "_ZN3foo3barIiEEvT_",
            [
                "_ZN3foo3barIiEEvT_",
                "foo::bar",
                "foo::bar<int>",
                "void foo::bar<int>(int)",
            ],
        );
        // Operators with angle brackets survive template stripping.
        check(
            "_ZlsRSoRK6Widget",
            [
                "_ZlsRSoRK6Widget",
                "operator<<",
                "operator<<",
                "operator<<(std::ostream&, Widget const&)",
            ],
        );
        check(
            "_ZNK3MapIiiEltERKS0_",
            [
                "_ZNK3MapIiiEltERKS0_",
                "Map::operator<",
                "Map<int, int>::operator<",
                "Map<int, int>::operator<(Map<int, int> const&) const",
            ],
        );
        // Anonymous namespaces and plain functions.
        check(
            "_ZN12_GLOBAL__N_14workEv",
            [
                "_ZN12_GLOBAL__N_14workEv",
                "(anonymous namespace)::work",
                "(anonymous namespace)::work",
                "(anonymous namespace)::work()",
            ],
        );
        check("_Z4mainv", ["_Z4mainv", "main", "main", "main()"]);
    }

    #[test]
    fn rust_legacy_names_in_each_mode() {
        check(
            "_ZN3std2rt10lang_start17h3ef4c4ae5ac0a1e5E",
            [
                "_ZN3std2rt10lang_start17h3ef4c4ae5ac0a1e5E",
                "std::rt::lang_start",
                "std::rt::lang_start",
                "std::rt::lang_start::h3ef4c4ae5ac0a1e5",
            ],
        );
        check(
            "_ZN70_$LT$alloc..vec..Vec$LT$T$C$A$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17h0123456789abcdefE",
            [
                "_ZN70_$LT$alloc..vec..Vec$LT$T$C$A$GT$$u20$as$u20$core..ops..drop..Drop$GT$4drop17h0123456789abcdefE",
                "<alloc::vec::Vec as core::ops::drop::Drop>::drop",
                "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop",
                "<alloc::vec::Vec<T,A> as core::ops::drop::Drop>::drop::h0123456789abcdef",
            ],
        );
    }

    #[test]
    fn rust_v0_names_in_each_mode() {
        // From the v0 mangling RFC's examples.
        check(
            "_RNvNtCs1234_7mycrate3foo3bar",
            [
                "_RNvNtCs1234_7mycrate3foo3bar",
                "mycrate::foo::bar",
                "mycrate::foo::bar",
                "mycrate[3c1c0]::foo::bar",
            ],
        );
        check(
            "_RINvNtC3std3mem8align_ofjEC3foo",
            [
                "_RINvNtC3std3mem8align_ofjEC3foo",
                "std::mem::align_of",
                "std::mem::align_of::<usize>",
                "std::mem::align_of::<usize>",
            ],
        );
    }

    #[test]
    fn plain_and_bad_names_pass_through() {
        for name in [
            "main",
            "_start",
            "__libc_start_main",
            "_Z",
            "_ZN",
            "_R",
            "_Zjunk",
            "",
        ] {
            for mode in DemangleMode::ALL {
                assert_eq!(demangle(name, mode), name, "{name} {mode}");
            }
        }
        let long = format!("_Z{}", "N3foo".repeat(10_000));
        assert_eq!(demangle(&long, DemangleMode::Full), long);
    }

    #[test]
    fn modes_parse_and_print() {
        for m in DemangleMode::ALL {
            assert_eq!(m.as_str().parse::<DemangleMode>(), Ok(m));
        }
        assert!("bogus".parse::<DemangleMode>().is_err());
        assert_eq!(DemangleMode::default(), DemangleMode::Simplified);
    }
}
