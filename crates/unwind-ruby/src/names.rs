//! Names as Ruby users read them, following `rb_profile_frame_full_label`: the label with its
//! method name qualified by the method's class (`Shop::Cart#checkout`, `Shop::Cart.build` for
//! a singleton method, `block in Shop::Cart#checkout`), and C functions by their method entry
//! (`Array#each`).

use ferroscope_unwind_api::ProcessMemory;

use crate::iseq::IseqInfo;
use crate::layout::Layout;
use crate::objects::{
    self, IMEMO_MENT, IMEMO_SVAR, Symbols, T_CLASS, T_ICLASS, T_IMEMO, T_MODULE, bytes, le32, le64,
    word,
};
use crate::{Error, Result};

/// `VM_METHOD_TYPE_ISEQ`.
pub const METHOD_ISEQ: u32 = 0;
/// `VM_METHOD_TYPE_CFUNC`.
pub const METHOD_CFUNC: u32 = 1;
/// `VM_METHOD_TYPE_BMETHOD` (`define_method`).
pub const METHOD_BMETHOD: u32 = 4;

/// A method entry, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodEntry {
    /// Its address.
    pub addr: u64,
    /// `defined_class`.
    pub defined_class: u64,
    /// `def`.
    pub def: u64,
    /// `def->type`.
    pub kind: u32,
    /// `def->body.iseq.iseqptr` (ISEQ methods).
    pub iseq: u64,
    /// `def->original_id`.
    pub original_id: u64,
}

/// Reads the method entry at `addr` (checked to be an `imemo_ment`).
pub fn method_entry(mem: &dyn ProcessMemory, l: &Layout, addr: u64) -> Result<MethodEntry> {
    let b = bytes(mem, addr, 40, "method entry")?;
    let flags = le64(&b, 0);
    if objects::value_type(flags) != T_IMEMO || objects::imemo_type(flags) != IMEMO_MENT {
        return Err(Error::invalid("method entry", addr, "not an imemo_ment"));
    }
    let def = le64(&b, l.cme_def);
    let d = bytes(
        mem,
        def,
        (l.def_original_id + 8) as usize,
        "method definition",
    )?;
    Ok(MethodEntry {
        addr,
        defined_class: le64(&b, 8),
        def,
        kind: le32(&d, 0) & 0xf,
        iseq: le64(&d, l.def_body),
        original_id: le64(&d, l.def_original_id),
    })
}

/// The method entry a frame's `me_cref` word leads to, when it is one (an svar is followed
/// once, a cref means no method), checked against the frame's local iseq.
pub fn frame_method(
    mem: &dyn ProcessMemory,
    l: &Layout,
    me_cref: u64,
    local_iseq: u64,
) -> Result<Option<MethodEntry>> {
    let mut at = me_cref;
    for _ in 0..2 {
        if !objects::is_object(at) {
            return Ok(None);
        }
        let flags = word(mem, at, "method entry or cref")?;
        if objects::value_type(flags) != T_IMEMO {
            return Ok(None);
        }
        match objects::imemo_type(flags) {
            IMEMO_MENT => {
                let me = method_entry(mem, l, at)?;
                let ok = match me.kind {
                    METHOD_ISEQ => me.iseq == local_iseq,
                    METHOD_BMETHOD => true,
                    _ => false,
                };
                return Ok(ok.then_some(me));
            }
            IMEMO_SVAR => at = word(mem, at + u64::from(l.svar_cref_or_me), "svar")?,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// A method's qualified owner: `("Shop::Cart", singleton)`, when its class has a path.
pub fn owner(
    mem: &dyn ProcessMemory,
    l: &Layout,
    symbols: Option<&Symbols>,
    me: &MethodEntry,
) -> Result<Option<(String, bool)>> {
    let mut klass = me.defined_class;
    if !objects::is_object(klass) {
        return Ok(None);
    }
    let head = bytes(mem, klass, 16, "class")?;
    let flags = le64(&head, 0);
    let t = objects::value_type(flags);
    if t == T_ICLASS {
        klass = le64(&head, 8);
        return Ok(objects::class_path(mem, l, symbols, klass)?.map(|p| (p, false)));
    }
    if t != T_CLASS && t != T_MODULE {
        return Ok(None);
    }
    if flags & l.fl_singleton != 0 {
        let Some(attached) = objects::attached_object(mem, l, symbols, klass)? else {
            return Ok(None);
        };
        if !objects::is_object(attached) {
            return Ok(None);
        }
        let at = objects::value_type(word(mem, attached, "attached object")?);
        if at != T_CLASS && at != T_MODULE {
            return Ok(None);
        }
        return Ok(objects::class_path(mem, l, symbols, attached)?.map(|p| (p, true)));
    }
    Ok(objects::class_path(mem, l, symbols, klass)?.map(|p| (p, false)))
}

/// `Class#method` or `Class.method` (just the method without a class path).
pub fn qualified(owner: Option<&(String, bool)>, method: &str) -> String {
    match owner {
        Some((path, singleton)) => format!("{path}{}{method}", if *singleton { "." } else { "#" }),
        None => method.to_string(),
    }
}

/// An iseq frame's full label: the label with its method name qualified (`block in
/// Shop::Cart#checkout`); the plain label for frames outside methods (`<main>`,
/// `<class:Cart>`).
pub fn full_label(info: &IseqInfo, owner: Option<&(String, bool)>) -> String {
    let Some(method) = info.method_name.as_deref() else {
        return info.label.clone();
    };
    let q = qualified(owner, method);
    if info.label == info.base_label && info.label == method {
        return q;
    }
    // The label ends with the base label ("block (2 levels) in checkout"): keep its prefix.
    match info.label.strip_suffix(info.base_label.as_str()) {
        Some(prefix) => format!("{prefix}{q}"),
        None => info.label.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iseq::IseqType;

    fn info(label: &str, base: &str, method: Option<&str>) -> IseqInfo {
        IseqInfo {
            addr: 0,
            kind: IseqType::Block,
            label: label.into(),
            base_label: base.into(),
            path: "shop.rb".into(),
            first_line: 1,
            encoded: 0,
            size: 0,
            local_iseq: 0,
            method_name: method.map(Into::into),
            lines: vec![],
        }
    }

    #[test]
    fn labels_are_qualified_like_ruby_does() {
        let cart = ("Shop::Cart".to_string(), false);
        let single = ("Shop::Cart".to_string(), true);
        assert_eq!(
            full_label(&info("checkout", "checkout", Some("checkout")), Some(&cart)),
            "Shop::Cart#checkout"
        );
        assert_eq!(
            full_label(&info("build", "build", Some("build")), Some(&single)),
            "Shop::Cart.build"
        );
        assert_eq!(
            full_label(
                &info("block in checkout", "checkout", Some("checkout")),
                Some(&cart)
            ),
            "block in Shop::Cart#checkout"
        );
        assert_eq!(
            full_label(
                &info("block (2 levels) in checkout", "checkout", Some("checkout")),
                None
            ),
            "block (2 levels) in checkout"
        );
        assert_eq!(
            full_label(&info("<main>", "<main>", None), Some(&cart)),
            "<main>"
        );
        assert_eq!(
            full_label(&info("<class:Cart>", "<class:Cart>", None), None),
            "<class:Cart>"
        );
    }
}
