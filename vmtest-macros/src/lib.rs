//! Implementation detail of `vmtest`: use `vmtest::vm_test`, not this crate.

use proc_macro::TokenStream;

/// See `vmtest::vm_test`.
#[proc_macro_attribute]
pub fn vm_test(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}
