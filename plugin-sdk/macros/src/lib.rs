//! The `#[policy]` attribute of `portcullis-sdk`; use it through
//! `portcullis_sdk::policy`, whose documentation has examples.
//!
//! The attribute re-emits an `impl Policy for T` block with a hidden
//! associated const saying which hooks it defines, and the component exports
//! that route the gateway's calls to `portcullis_sdk::__private::Adapter<T>`.
//! The generated code names the SDK as `::portcullis_sdk`, so the dependency
//! must keep that name.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::quote;
use syn::spanned::Spanned;
use syn::{ImplItem, Item, ItemImpl};

/// Exports an `impl Policy for YourType` block as the plugin's entry points.
#[proc_macro_attribute]
pub fn policy(attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = TokenStream2::from(item);
    match expand(attr.into(), item.clone()) {
        Ok(tokens) => tokens.into(),
        Err(error) => {
            // Keep the item, so that the only error is this one.
            let mut tokens = error.to_compile_error();
            tokens.extend(item);
            tokens.into()
        }
    }
}

/// Bit of `__HOOKS` for `on_request`; matches `__private::HOOK_ON_REQUEST`.
const HOOK_ON_REQUEST: u8 = 1 << 0;
/// Bit of `__HOOKS` for `on_response`; matches `__private::HOOK_ON_RESPONSE`.
const HOOK_ON_RESPONSE: u8 = 1 << 1;
/// Bit of `__HOOKS` for `on_tick`; matches `__private::HOOK_ON_TICK`.
const HOOK_ON_TICK: u8 = 1 << 2;

const PLACEMENT: &str = "#[policy] must be placed on `impl Policy for YourType { ... }`";

fn expand(attr: TokenStream2, item: TokenStream2) -> syn::Result<TokenStream2> {
    if !attr.is_empty() {
        return Err(syn::Error::new_spanned(
            attr,
            "#[policy] takes no arguments",
        ));
    }
    let mut imp = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Impl(imp)) => imp,
        Ok(other) => return Err(syn::Error::new_spanned(other, PLACEMENT)),
        Err(_) => return Err(syn::Error::new_spanned(item, PLACEMENT)),
    };
    check(&imp)?;

    let mut hooks = 0u8;
    for item in &imp.items {
        if let ImplItem::Fn(f) = item {
            match f.sig.ident.to_string().as_str() {
                "on_request" => hooks |= HOOK_ON_REQUEST,
                "on_response" => hooks |= HOOK_ON_RESPONSE,
                "on_tick" => hooks |= HOOK_ON_TICK,
                _ => {}
            }
        }
        if let ImplItem::Const(c) = item
            && c.ident == "__HOOKS"
        {
            return Err(syn::Error::new_spanned(
                &c.ident,
                "`__HOOKS` is set by #[policy]; remove it",
            ));
        }
    }
    imp.items.push(syn::parse_quote! {
        #[doc(hidden)]
        const __HOOKS: u8 = #hooks;
    });

    let self_ty = &imp.self_ty;
    Ok(quote! {
        #imp

        const _: () = {
            type __PortcullisExport = ::portcullis_sdk::__private::Adapter<#self_ty>;
            ::portcullis_sdk::__private::export!(__PortcullisExport);
            ::portcullis_sdk::__private::stamp!();
        };
    })
}

/// Rejects anything but `impl Policy for ConcreteType`.
fn check(imp: &ItemImpl) -> syn::Result<()> {
    let Some((negative, path, _)) = &imp.trait_ else {
        return Err(syn::Error::new(
            imp.self_ty.span(),
            format!("{PLACEMENT}; this is an inherent impl"),
        ));
    };
    if negative.is_some() {
        return Err(syn::Error::new_spanned(negative, PLACEMENT));
    }
    let named_policy = path.segments.last().is_some_and(|s| s.ident == "Policy");
    if !named_policy {
        return Err(syn::Error::new_spanned(
            path,
            format!(
                "{PLACEMENT}; this implements `{}`",
                quote!(#path).to_string().replace(' ', "")
            ),
        ));
    }
    if !imp.generics.params.is_empty() || imp.generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            &imp.generics,
            "a plugin is one concrete type: #[policy] does not support generic impls",
        ));
    }
    if let Some(unsafety) = &imp.unsafety {
        return Err(syn::Error::new_spanned(
            unsafety,
            "`Policy` is not an unsafe trait",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_ok(item: TokenStream2) -> String {
        expand(TokenStream2::new(), item)
            .expect("expands")
            .to_string()
    }

    fn expand_err(attr: TokenStream2, item: TokenStream2) -> String {
        expand(attr, item).expect_err("must fail").to_string()
    }

    #[test]
    fn hooks_bits_follow_the_methods_defined() {
        let none = expand_ok(quote! {
            impl Policy for P { type Config = (); fn new(_: ()) -> Result<Self, String> { Ok(P) } }
        });
        assert!(none.contains("const __HOOKS : u8 = 0u8"), "{none}");

        let request = expand_ok(quote! {
            impl portcullis_sdk::Policy for P {
                type Config = ();
                fn new(_: ()) -> Result<Self, String> { Ok(P) }
                fn on_request(&self, req: &Request) -> Action { Action::next() }
            }
        });
        assert!(request.contains("const __HOOKS : u8 = 1u8"), "{request}");

        let both = expand_ok(quote! {
            impl Policy for P {
                type Config = ();
                fn new(_: ()) -> Result<Self, String> { Ok(P) }
                fn on_response(&self, req: &Request, resp: &Response) -> ResponseChanges { ResponseChanges::none() }
                fn on_request(&self, req: &Request) -> Action { Action::next() }
            }
        });
        assert!(both.contains("const __HOOKS : u8 = 3u8"), "{both}");
    }

    #[test]
    fn the_export_glue_names_the_adapter_of_the_type() {
        let out = expand_ok(quote! {
            impl Policy for my::P { type Config = (); fn new(_: ()) -> Result<Self, String> { Ok(my::P) } }
        });
        assert!(
            out.contains(
                "type __PortcullisExport = :: portcullis_sdk :: __private :: Adapter < my :: P >"
            ),
            "{out}"
        );
        assert!(
            out.contains(":: portcullis_sdk :: __private :: export ! (__PortcullisExport)"),
            "{out}"
        );
    }

    #[test]
    fn misplaced_attributes_are_errors() {
        let cases = [
            (
                quote!(),
                quote!(
                    struct S;
                ),
                PLACEMENT.to_owned(),
            ),
            (
                quote!(),
                quote!(
                    fn f() {}
                ),
                PLACEMENT.to_owned(),
            ),
            (
                quote!(),
                quote!(impl S {}),
                format!("{PLACEMENT}; this is an inherent impl"),
            ),
            (
                quote!(),
                quote!(impl std::fmt::Debug for S {}),
                format!("{PLACEMENT}; this implements `std::fmt::Debug`"),
            ),
            (
                quote!(),
                quote!(impl !Policy for S {}),
                PLACEMENT.to_owned(),
            ),
            (
                quote!(),
                quote!(
                    impl<T> Policy for S<T> {}
                ),
                "a plugin is one concrete type: #[policy] does not support generic impls"
                    .to_owned(),
            ),
            (
                quote!(),
                quote!(
                    unsafe impl Policy for S {}
                ),
                "`Policy` is not an unsafe trait".to_owned(),
            ),
            (
                quote!(),
                quote!(impl Policy for S { const __HOOKS: u8 = 1; }),
                "`__HOOKS` is set by #[policy]; remove it".to_owned(),
            ),
            (
                quote!(hooks = 1),
                quote!(impl Policy for S {}),
                "#[policy] takes no arguments".to_owned(),
            ),
        ];
        for (attr, item, expected) in cases {
            assert_eq!(expand_err(attr, item.clone()), expected, "{item}");
        }
    }
}
