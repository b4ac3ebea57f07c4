//! Implementation detail of `vmtest`: use `vmtest::vm_test`, not this crate.
//!
//! The attribute runs in phases: `attr` parses the arguments and the libtest attributes,
//! `valid` checks the function and the values, `expand` emits the registration, and
//! `fallback` emits the errors plus the function as written when anything is wrong.

mod attr;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::Item;

/// Marks a function as a test that runs as root inside a Linux VM.
///
/// ```no_run
/// // tests/kernel.rs, with `[[test]] name = "kernel"` and `harness = false` in Cargo.toml
/// use vmtest::vm_test;
///
/// #[vm_test(kernels = ["6.1", "6.12"], memory = "512M", modules = ["dummy"], timeout = "60s")]
/// fn dummy_netdev_appears() -> Result<(), std::io::Error> {
///     std::fs::metadata("/sys/module/dummy")?;
///     Ok(())
/// }
///
/// vmtest::main!();
/// ```
///
/// The function takes no arguments and returns `()` or `Result<(), E>` with `E: Debug`, as a
/// `#[test]` does; an `Err` fails the test with `Error: {err:?}`. It cannot be `async`,
/// `const`, `unsafe`, `extern` or generic. `#[ignore]`, `#[ignore = "reason"]`,
/// `#[should_panic]` and `#[should_panic(expected = "message")]` work as with `#[test]`;
/// write them next to `#[vm_test]`, not instead of it, and do not add `#[test]`.
///
/// Tests with the same VM configuration (kernel, arch, memory, cpus, modules, cmdline) share
/// one VM; each test still runs in its own process inside it.
///
/// # Keys
///
/// Every key is optional and may appear once. Values are checked when the test compiles: a
/// bad value is a compile error pointing at it.
///
/// - **`kernel = "6.12"`**: the kernel to boot, by name in the local kernel store or by path.
///   Without `kernel` or `kernels`, the default kernel is used.
/// - **`kernels = ["6.1", "6.12"]`**: run the test once per kernel; the test names get the
///   kernel as a suffix (`name[6.1]`, `name[6.12]`). Not together with `kernel`; at least one
///   entry, no duplicates.
/// - **`arch = "aarch64"`** or **`arch = ["x86_64", "aarch64"]`**: the architectures the test
///   is meant for; on any other the test is skipped. Names: `x86_64` (or `amd64`), `aarch64`
///   (or `arm64`), `riscv64` (or `riscv64gc`). Without it, every architecture.
/// - **`memory = "512M"`**: guest memory, a whole number with a binary unit: `K`, `M`, `G`
///   (or `KiB`, `MiB`, `GiB`). It must come to a whole number of MiB, at least `64M`.
/// - **`cpus = 2`**: the number of virtual CPUs, from 1 to 64.
/// - **`timeout = "30s"`**: how long the test may run before it fails: a whole number with
///   a unit `ms`, `s`, `m` or `h` (`"500ms"`, `"30s"`, `"2m"`, `"1h"`), greater than zero.
/// - **`cmdline = "..."`**: extra kernel command-line arguments, appended to vmtest's own.
/// - **`modules = ["dummy", "veth"]`**: kernel modules to load (with their dependencies)
///   before the test, by name without `.ko`; or module files (an entry with a `/` or ending in
///   `.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`; relative paths start at the crate's directory), such
///   as your own out-of-tree module, loaded after the kernel's modules it depends on. A file
///   built for another kernel is an error naming both kernels before anything boots.
/// - **`env = ["RUST_LOG"]`**: host environment variables to pass to the test in the guest,
///   when they are set on the host.
/// - **`files = ["tests/data", "/usr/sbin/ip"]`**: host files or directories to make
///   available in the guest at the same absolute path. Relative paths start at the crate's
///   directory (where its `Cargo.toml` is). A path that does not exist when the test compiles
///   is an error.
/// - **`allow_kernel_warnings`** (or `allow_kernel_warnings = true`): a kernel `WARN` while the
///   test runs does not fail it. Panics, oopses and `BUG`s still do.
/// - **`crate = path::to::vmtest`**: where the `vmtest` crate is, for crates that re-export it
///   under another name; `::vmtest` by default.
///
/// ```no_run
/// use vmtest::vm_test;
///
/// #[vm_test(
///     kernel = "6.12",
///     arch = ["x86_64", "arm64"],
///     memory = "1G",
///     cpus = 4,
///     timeout = "2m",
///     cmdline = "transparent_hugepage=always",
///     modules = ["veth"],
///     env = ["RUST_LOG"],
///     files = ["Cargo.toml"],
///     allow_kernel_warnings,
/// )]
/// #[ignore = "slow"]
/// fn everything() {}
///
/// #[vm_test]
/// #[should_panic(expected = "boom")]
/// fn panics() {
///     panic!("boom");
/// }
///
/// vmtest::main!();
/// ```
#[proc_macro_attribute]
pub fn vm_test(args: TokenStream, input: TokenStream) -> TokenStream {
    vm_test_impl(args.into(), input.into()).into()
}

fn vm_test_impl(
    args: proc_macro2::TokenStream,
    input: proc_macro2::TokenStream,
) -> proc_macro2::TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse_args(args, &mut errors);
    let config = valid::config(args, &mut errors);

    let mut item = match syn::parse2::<Item>(input.clone()) {
        Ok(Item::Fn(item)) => item,
        Ok(other) => {
            errors.push(syn::Error::new(
                item_keyword_span(&other),
                "`#[vm_test]` can only be used on a function",
            ));
            return fallback::expand(None, input, errors.into_error().unwrap());
        }
        Err(err) => {
            errors.push(err);
            return fallback::expand(None, input, errors.into_error().unwrap());
        }
    };
    let test_attrs = attr::take_test_attrs(&mut item.attrs, &mut errors);
    valid::signature(&item, &test_attrs, &mut errors);

    match errors.into_error() {
        None => expand::expand(&item, &test_attrs, &config),
        Some(errors) => fallback::expand(Some(&item), input, errors),
    }
}

/// The span of the keyword that says what kind of item this is (`struct`, `mod`, ...).
fn item_keyword_span(item: &Item) -> Span {
    match item {
        Item::Const(i) => i.const_token.span,
        Item::Enum(i) => i.enum_token.span,
        Item::ExternCrate(i) => i.extern_token.span,
        Item::ForeignMod(i) => i.abi.span(),
        Item::Impl(i) => i.impl_token.span,
        Item::Macro(i) => i.mac.path.span(),
        Item::Mod(i) => i.mod_token.span,
        Item::Static(i) => i.static_token.span,
        Item::Struct(i) => i.struct_token.span,
        Item::Trait(i) => i.trait_token.span,
        Item::TraitAlias(i) => i.trait_token.span,
        Item::Type(i) => i.type_token.span,
        Item::Union(i) => i.union_token.span,
        Item::Use(i) => i.use_token.span,
        _ => Span::call_site(),
    }
}

/// All the errors found so far, reported together.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            None => self.0 = Some(err),
            Some(errors) => errors.combine(err),
        }
    }

    fn into_error(self) -> Option<syn::Error> {
        self.0
    }
}
