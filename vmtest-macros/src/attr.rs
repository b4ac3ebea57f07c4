//! Parsing: the `#[vm_test(...)]` arguments as written, and the `#[ignore]` and
//! `#[should_panic]` attributes on the function. Values are checked in `valid.rs`.

use proc_macro2::{TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Expr, Ident, LitStr, Meta, Token};

use crate::Errors;

/// One `key` or `key = value` argument, with its value not yet interpreted.
pub(crate) struct Arg {
    pub key: Ident,
    pub value: Option<Expr>,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        // `parse_any` so that `crate = path` is accepted.
        let key = Ident::parse_any(input)?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            Some(input.parse()?)
        } else {
            None
        };
        if !input.is_empty() {
            return Err(
                input.error("expected `,` between arguments, as in `memory = \"512M\", cpus = 2`")
            );
        }
        Ok(Arg { key, value })
    }
}

/// Splits the arguments at top-level commas and parses each on its own, so that one malformed
/// argument does not hide the errors in the others.
pub(crate) fn parse_args(tokens: TokenStream, errors: &mut Errors) -> Vec<Arg> {
    let mut args = Vec::new();
    let mut chunk = Vec::new();
    let mut tokens = tokens.into_iter().peekable();
    loop {
        let next = tokens.next();
        let end = match &next {
            None => true,
            Some(TokenTree::Punct(p)) => p.as_char() == ',',
            Some(_) => false,
        };
        if !end {
            chunk.extend(next);
            continue;
        }
        if chunk.is_empty() {
            // Tolerate a trailing comma, not an empty argument in the middle.
            if let Some(TokenTree::Punct(comma)) = &next {
                if tokens.peek().is_some() || args.is_empty() {
                    errors.push(syn::Error::new(comma.span(), "expected an argument before `,`"));
                }
            }
        } else {
            match syn::parse2::<Arg>(chunk.drain(..).collect()) {
                Ok(arg) => args.push(arg),
                Err(err) => errors.push(err),
            }
        }
        if next.is_none() {
            return args;
        }
    }
}

/// The libtest attributes `#[vm_test]` takes over from the function.
pub(crate) struct TestAttrs {
    /// `#[ignore]` / `#[ignore = "reason"]`.
    pub ignore: Option<Option<LitStr>>,
    /// `#[should_panic]` and its expected message.
    pub should_panic: ShouldPanic,
    /// The first `#[should_panic]` attribute, to point errors at it.
    pub should_panic_attr: Option<Attribute>,
}

pub(crate) enum ShouldPanic {
    No,
    Yes,
    WithMessage(LitStr),
}

/// Removes `#[ignore]` and `#[should_panic]` from `attrs` and parses them.
pub(crate) fn take_test_attrs(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> TestAttrs {
    let mut out =
        TestAttrs { ignore: None, should_panic: ShouldPanic::No, should_panic_attr: None };
    attrs.retain(|attr| {
        if attr.path().is_ident("ignore") {
            if out.ignore.is_some() {
                errors.push(syn::Error::new_spanned(attr, "duplicate `#[ignore]` attribute"));
            }
            match parse_ignore(attr) {
                Ok(reason) => out.ignore = Some(reason),
                Err(err) => errors.push(err),
            }
            false
        } else if attr.path().is_ident("should_panic") {
            if out.should_panic_attr.is_some() {
                errors.push(syn::Error::new_spanned(attr, "duplicate `#[should_panic]` attribute"));
            } else {
                out.should_panic_attr = Some(attr.clone());
            }
            match parse_should_panic(attr) {
                Ok(should_panic) => out.should_panic = should_panic,
                Err(err) => errors.push(err),
            }
            false
        } else {
            true
        }
    });
    out
}

fn parse_ignore(attr: &Attribute) -> syn::Result<Option<LitStr>> {
    match &attr.meta {
        Meta::Path(_) => Ok(None),
        Meta::NameValue(nv) => match unwrap_group(&nv.value) {
            Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(reason), .. }) => Ok(Some(reason.clone())),
            other => Err(syn::Error::new_spanned(
                other,
                "expected a string, as in `#[ignore = \"needs a newer kernel\"]`",
            )),
        },
        Meta::List(list) => {
            Err(syn::Error::new_spanned(list, "expected `#[ignore]` or `#[ignore = \"reason\"]`"))
        }
    }
}

fn parse_should_panic(attr: &Attribute) -> syn::Result<ShouldPanic> {
    const USAGE: &str = "expected `#[should_panic]` or `#[should_panic(expected = \"message\")]`";
    match &attr.meta {
        Meta::Path(_) => Ok(ShouldPanic::Yes),
        Meta::NameValue(nv) => match unwrap_group(&nv.value) {
            Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(msg), .. }) => {
                Ok(ShouldPanic::WithMessage(msg.clone()))
            }
            other => Err(syn::Error::new_spanned(other, USAGE)),
        },
        Meta::List(list) => {
            let mut expected = None;
            list.parse_nested_meta(|meta| {
                if !meta.path.is_ident("expected") {
                    return Err(meta.error(USAGE));
                }
                if expected.is_some() {
                    return Err(meta.error("duplicate `expected`"));
                }
                expected = Some(meta.value()?.parse::<LitStr>()?);
                Ok(())
            })?;
            match expected {
                Some(msg) => Ok(ShouldPanic::WithMessage(msg)),
                None => Err(syn::Error::new_spanned(list, USAGE)),
            }
        }
    }
}

/// Looks through the invisible groups `macro_rules!` puts around `$x:expr` fragments.
pub(crate) fn unwrap_group(mut expr: &Expr) -> &Expr {
    while let Expr::Group(group) = expr {
        expr = &group.expr;
    }
    expr
}
