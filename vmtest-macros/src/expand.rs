//! Expansion: the function as written, a metadata record in the ELF section
//! `vmtest::__private::SECTION` (the test's attributes, which the host reads from a binary's
//! file or the binary from its own memory), and a static that registers the function with its
//! name and record in `vmtest::__private::TESTS` (how the guest finds the function to run).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ItemFn, LitStr, ReturnType};

use crate::attr::{ShouldPanic, TestAttrs};
use crate::valid::VmConfig;

pub(crate) fn expand(item: &ItemFn, test_attrs: &TestAttrs, config: &VmConfig) -> TokenStream {
    let krate = match &config.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::vmtest),
    };
    let private = quote!(#krate::__private);

    let ident = &item.sig.ident;
    let name = LitStr::new(&ident.unraw().to_string(), ident.span());
    let static_ident = format_ident!("__VMTEST_TEST_{}", ident);
    let meta_ident = format_ident!("__VMTEST_META_{}", ident);
    // `cfg` on the function applies to its registration too.
    let cfgs = item.attrs.iter().filter(|attr| attr.path().is_ident("cfg"));

    // `file!()`, `line!()` and `column!()` with the function name's span report where the
    // name is, as libtest's test descriptions do.
    let file = quote_spanned!(ident.span()=> ::core::file!());
    let line = quote_spanned!(ident.span()=> ::core::line!());
    let column = quote_spanned!(ident.span()=> ::core::column!());
    // A return type that is neither `()` nor `Result<(), E: Debug>` is reported on the type.
    let output_span = match &item.sig.output {
        ReturnType::Default => ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let mut callee = ident.clone();
    callee.set_span(output_span);
    let call = quote_spanned!(output_span=> #private::TestReturn::into_test_result(#callee()));

    let meta_fields = meta_fields(&name, test_attrs, config, &file, &line, &column);
    let cfgs: Vec<_> = cfgs.collect();

    quote! {
        #item

        // The record is referenced from the registration below, so the linker keeps it.
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications)]
        #[used]
        #[unsafe(link_section = "vmtest_tests")]
        static #meta_ident: [u8; #private::meta_len(&[#(#meta_fields),*])] =
            #private::meta_record(&[#(#meta_fields),*]);

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications)]
        #[#private::linkme::distributed_slice(#private::TESTS)]
        #[linkme(crate = #private::linkme)]
        static #static_ident: #private::TestDef = #private::TestDef {
            module_path: ::core::module_path!(),
            name: #name,
            run: || #call,
            meta: &#meta_ident,
        };
    }
}

/// The metadata record's key/value fields (see `vmtest`'s `meta` module), as `&str`
/// expressions: literals, or `concat!` of `module_path!()`, `file!()`, `line!()` and
/// `column!()`.
fn meta_fields(
    name: &LitStr,
    test_attrs: &TestAttrs,
    config: &VmConfig,
    file: &TokenStream,
    line: &TokenStream,
    column: &TokenStream,
) -> Vec<TokenStream> {
    let mut fields = Vec::new();
    let mut pair = |key: &str, value: TokenStream| {
        fields.push(quote!(#key));
        fields.push(value);
    };
    pair("module_path", quote!(::core::module_path!()));
    pair("name", quote!(#name));
    pair("file", file.clone());
    pair("line", quote!(::core::concat!(#line)));
    pair("column", quote!(::core::concat!(#column)));
    if !matches!(test_attrs.should_panic, ShouldPanic::No) {
        pair("should_panic", quote!(""));
    }
    // A key of its own, after `should_panic`: a reader that does not know it still sees
    // `should_panic`.
    if let ShouldPanic::WithMessage(message) = &test_attrs.should_panic {
        pair("should_panic_expected", quote!(#message));
    }
    match &test_attrs.ignore {
        None => {}
        Some(None) => pair("ignore", quote!("")),
        Some(Some(reason)) => pair("ignore_reason", quote!(#reason)),
    }
    for kernel in &config.kernels {
        pair("kernel", quote!(#kernel));
    }
    for arch in &config.arch {
        pair("arch", quote!(#arch));
    }
    let call_site = proc_macro2::Span::call_site();
    let numbers = [
        ("memory_mib", config.memory_mib),
        ("cpus", config.cpus.map(u64::from)),
        ("timeout_ms", config.timeout_ms),
    ];
    for (key, value) in numbers {
        if let Some(value) = value {
            let value = LitStr::new(&value.to_string(), call_site);
            pair(key, quote!(#value));
        }
    }
    if let Some(cmdline) = &config.cmdline {
        pair("cmdline", quote!(#cmdline));
    }
    for module in &config.modules {
        pair("module", quote!(#module));
    }
    for env in &config.env {
        pair("env", quote!(#env));
    }
    for (path, span) in &config.files {
        let path = LitStr::new(path, *span);
        pair("files", quote!(#path));
    }
    if config.allow_kernel_warnings {
        pair("allow_kernel_warnings", quote!("true"));
    }
    fields
}
