//! Expansion: the function as written plus a static that registers it in
//! `vmtest::__private::TESTS`.

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
    // `cfg` on the function applies to its registration too.
    let cfgs = item.attrs.iter().filter(|attr| attr.path().is_ident("cfg"));

    // `line!()` and `file!()` with the function name's span report where the function is.
    let file = quote_spanned!(ident.span()=> ::core::file!());
    let line = quote_spanned!(ident.span()=> ::core::line!());
    // A return type that is neither `()` nor `Result<(), E: Debug>` is reported on the type.
    let output_span = match &item.sig.output {
        ReturnType::Default => ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let mut callee = ident.clone();
    callee.set_span(output_span);
    let call = quote_spanned!(output_span=> #private::TestReturn::into_test_result(#callee()));

    let ignore = match &test_attrs.ignore {
        None => quote!(::core::option::Option::None),
        Some(None) => quote!(::core::option::Option::Some(::core::option::Option::None)),
        Some(Some(reason)) => quote! {
            ::core::option::Option::Some(::core::option::Option::Some(#reason))
        },
    };
    let should_panic = match &test_attrs.should_panic {
        ShouldPanic::No => quote!(#private::ShouldPanic::No),
        ShouldPanic::Yes => quote!(#private::ShouldPanic::Yes),
        ShouldPanic::WithMessage(msg) => quote!(#private::ShouldPanic::WithMessage(#msg)),
    };

    let kernels = &config.kernels;
    let arch = &config.arch;
    let memory_mib = option(config.memory_mib);
    let cpus = option(config.cpus);
    let timeout_ms = option(config.timeout_ms);
    let cmdline = option(config.cmdline.as_ref());
    let modules = &config.modules;
    let env = &config.env;
    let files = config
        .files
        .iter()
        .map(|(path, span)| LitStr::new(path, *span));
    let allow_kernel_warnings = config.allow_kernel_warnings;

    quote! {
        #item

        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications)]
        #[#private::linkme::distributed_slice(#private::TESTS)]
        #[linkme(crate = #private::linkme)]
        static #static_ident: #private::TestDef = #private::TestDef {
            module_path: ::core::module_path!(),
            name: #name,
            file: #file,
            line: #line,
            run: || #call,
            ignore: #ignore,
            should_panic: #should_panic,
            vm: #private::VmAttrs {
                kernels: &[#(#kernels),*],
                arch: &[#(#arch),*],
                memory_mib: #memory_mib,
                cpus: #cpus,
                timeout_ms: #timeout_ms,
                cmdline: #cmdline,
                modules: &[#(#modules),*],
                env: &[#(#env),*],
                files: &[#(#files),*],
                allow_kernel_warnings: #allow_kernel_warnings,
            },
        };
    }
}

fn option<T: ToTokens>(value: Option<T>) -> TokenStream {
    match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    }
}
