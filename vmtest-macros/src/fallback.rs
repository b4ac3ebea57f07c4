//! What `#[vm_test]` expands to when its input is wrong: the errors, plus the function as
//! written so that code calling it does not add errors of its own.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemFn;

pub(crate) fn expand(item: Option<&ItemFn>, input: TokenStream, errors: syn::Error) -> TokenStream {
    let errors = errors.to_compile_error();
    match item {
        // `#[ignore]` and `#[should_panic]` are already taken off: on a function that is not
        // a `#[test]` they would only add warnings.
        Some(item) => quote! {
            #errors
            #[allow(dead_code)]
            #item
        },
        None => quote! {
            #errors
            #input
        },
    }
}
