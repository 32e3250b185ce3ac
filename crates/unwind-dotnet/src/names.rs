//! Method names as .NET users read them, from an assembly's metadata:
//! `Namespace.Type.Method`, nested types joined with `+` (as `Type.FullName` and stack
//! traces show them), generic arity suffixes (`` List`1 ``) dropped, and with
//! [`NameStyle::Full`] the type arguments of generic types and methods.

use std::collections::HashMap;

use crate::metadata::{Metadata, table};

/// How much of a generic name to show (the session's `demangle` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum NameStyle {
    /// `Shop.Box.Get`.
    #[default]
    Plain,
    /// The generic parameters' names: `Shop.Box<T>.Get<U>`.
    Parameters,
    /// The type arguments the code runs with: `Shop.Box<System.Int32>.Get<System.String>`
    /// (`System.__Canon` for code shared by reference types).
    Full,
}

/// The names of one assembly: its metadata and the indexes naming needs.
#[derive(Debug)]
pub struct ModuleNames {
    /// The metadata.
    pub metadata: Metadata,
    /// `(first MethodDef row, TypeDef row)`, sorted: which type owns a method.
    method_owner: Vec<(u32, u32)>,
    /// Nested `TypeDef` row → its enclosing type's row.
    enclosing: HashMap<u32, u32>,
    /// `TypeDef` or `MethodDef` owner (coded `TypeOrMethodDef`) → its generic parameters'
    /// names, in order.
    generic_params: HashMap<u32, Vec<u32>>,
}

/// Most nesting levels followed.
const MAX_NESTING: usize = 16;

impl ModuleNames {
    /// Indexes `metadata`.
    pub fn new(metadata: Metadata) -> ModuleNames {
        let md = &metadata;
        let mut method_owner: Vec<(u32, u32)> = (1..=md.rows(table::TYPE_DEF))
            .filter_map(|t| Some((md.get(table::TYPE_DEF, t, 5)?, t)))
            .collect();
        method_owner.sort_by_key(|&(first, t)| (first, t));
        let enclosing = (1..=md.rows(table::NESTED_CLASS))
            .filter_map(|r| {
                Some((
                    md.get(table::NESTED_CLASS, r, 0)?,
                    md.get(table::NESTED_CLASS, r, 1)?,
                ))
            })
            .collect();
        let mut generic_params: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
        for r in 1..=md.rows(table::GENERIC_PARAM) {
            let (Some(number), Some(owner), Some(name)) = (
                md.get(table::GENERIC_PARAM, r, 0),
                md.get(table::GENERIC_PARAM, r, 2),
                md.get(table::GENERIC_PARAM, r, 3),
            ) else {
                continue;
            };
            generic_params
                .entry(owner)
                .or_default()
                .push((number, name));
        }
        let generic_params = generic_params
            .into_iter()
            .map(|(owner, mut v)| {
                v.sort_unstable();
                (owner, v.into_iter().map(|(_, name)| name).collect())
            })
            .collect();
        ModuleNames {
            metadata,
            method_owner,
            enclosing,
            generic_params,
        }
    }

    /// The `TypeDef` row that declares `MethodDef` row `method`.
    pub fn owner_of(&self, method: u32) -> Option<u32> {
        if method == 0 || method > self.metadata.rows(table::METHOD_DEF) {
            return None;
        }
        let i = self
            .method_owner
            .partition_point(|&(first, _)| first <= method)
            .checked_sub(1)?;
        Some(self.method_owner[i].1)
    }

    /// A method's own name (`Checkout`, `.ctor`).
    pub fn method_name(&self, method: u32) -> Option<&str> {
        self.metadata
            .string(self.metadata.get(table::METHOD_DEF, method, 3)?)
    }

    /// A type's name with its namespace and enclosing types (`Shop.Cart`,
    /// `Shop.Outer+Inner`), arity suffixes dropped.
    pub fn type_name(&self, type_def: u32) -> Option<String> {
        let mut chain = vec![type_def];
        while chain.len() < MAX_NESTING {
            match self.enclosing.get(chain.last()?) {
                Some(&outer) if !chain.contains(&outer) => chain.push(outer),
                _ => break,
            }
        }
        let mut out = String::new();
        for (i, &t) in chain.iter().rev().enumerate() {
            let md = &self.metadata;
            let name = md.string(md.get(table::TYPE_DEF, t, 1)?)?;
            if i == 0 {
                let ns = md.string(md.get(table::TYPE_DEF, t, 2)?).unwrap_or("");
                if !ns.is_empty() {
                    out.push_str(ns);
                    out.push('.');
                }
            } else {
                out.push('+');
            }
            out.push_str(strip_arity(name));
        }
        Some(out)
    }

    /// Generic parameter names of a type (`TypeDef` row) or method.
    fn params(&self, owner_coded: u32) -> Vec<&str> {
        self.generic_params
            .get(&owner_coded)
            .map(|v| v.iter().filter_map(|&n| self.metadata.string(n)).collect())
            .unwrap_or_default()
    }

    /// How many generic parameters a type has (its own and its enclosing types').
    pub fn type_arity(&self, type_def: u32) -> usize {
        self.params(type_def << 1).len()
    }

    /// How many generic parameters a method has.
    pub fn method_arity(&self, method: u32) -> usize {
        self.params((method << 1) | 1).len()
    }

    /// `Namespace.Type.Method`, with the generic part `style` asks for; `type_args` and
    /// `method_args` are the names of the arguments the code runs with ([`NameStyle::Full`];
    /// missing ones fall back to the parameters' names).
    pub fn qualified(
        &self,
        method: u32,
        style: NameStyle,
        type_args: &[String],
        method_args: &[String],
    ) -> Option<String> {
        let owner = self.owner_of(method)?;
        let mut out = self.type_name(owner)?;
        if style != NameStyle::Plain {
            let params = self.params(owner << 1);
            push_args(&mut out, &params, type_args, style);
        }
        out.push('.');
        out.push_str(self.method_name(method)?);
        if style != NameStyle::Plain {
            let params = self.params((method << 1) | 1);
            push_args(&mut out, &params, method_args, style);
        }
        Some(out)
    }
}

fn push_args(out: &mut String, params: &[&str], args: &[String], style: NameStyle) {
    if params.is_empty() {
        return;
    }
    out.push('<');
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match args.get(i) {
            Some(a) if style == NameStyle::Full => out.push_str(a),
            _ => out.push_str(p),
        }
    }
    out.push('>');
}

/// `List`1` → `List`.
pub fn strip_arity(name: &str) -> &str {
    match name.rfind('`') {
        Some(i) if name[i + 1..].bytes().all(|b| b.is_ascii_digit()) && i + 1 < name.len() => {
            &name[..i]
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_suffixes_are_dropped() {
        assert_eq!(strip_arity("List`1"), "List");
        assert_eq!(strip_arity("Dictionary`2"), "Dictionary");
        assert_eq!(strip_arity("Cart"), "Cart");
        assert_eq!(strip_arity("Odd`"), "Odd`");
        assert_eq!(strip_arity("A`b"), "A`b");
    }
}
