//! flare-macros: `#[flare::remote]`, `#[flare::actor]` and `#[flare::main]`.
//!
//! Each generated item registers itself under a stable name (module path and item name) in a
//! link-time registry, so a worker process (the same executable) can run it by name. Each also
//! carries a constructor that turns the process into a worker before `main` runs when the node
//! started it as one, so binaries, examples and test harnesses need no extra code.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{parse_macro_input, FnArg, GenericArgument, ImplItem, ItemFn, ItemImpl, Pat, PathArguments, ReturnType, Type};

/// How a function's return type maps to an object type.
struct Returns {
    /// The type of the object (`T` of `Result<T, E>`, or the type itself).
    value: TokenStream2,
    /// Whether the function returns `Result` (its `Err` becomes a `UserError`).
    fallible: bool,
}

fn returns(output: &ReturnType) -> Returns {
    match output {
        ReturnType::Default => Returns { value: quote!(()), fallible: false },
        ReturnType::Type(_, ty) => {
            if let Type::Path(p) = &**ty {
                if let Some(last) = p.path.segments.last() {
                    if last.ident == "Result" {
                        if let PathArguments::AngleBracketed(args) = &last.arguments {
                            if let Some(GenericArgument::Type(t)) = args.args.first() {
                                return Returns { value: quote!(#t), fallible: true };
                            }
                        }
                    }
                }
            }
            Returns { value: quote!(#ty), fallible: false }
        }
    }
}

/// Typed, non-receiver parameters as (name, type).
fn params<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<Vec<(syn::Ident, Type)>> {
    let mut out = Vec::new();
    for (i, arg) in inputs.enumerate() {
        match arg {
            FnArg::Typed(pt) => {
                let name = match &*pt.pat {
                    Pat::Ident(id) => id.ident.clone(),
                    _ => format_ident!("__arg{}", i),
                };
                out.push((name, (*pt.ty).clone()));
            }
            FnArg::Receiver(r) => return Err(syn::Error::new(r.span(), "unexpected receiver")),
        }
    }
    Ok(out)
}

/// The path generated code uses for Flare: `::flare` by default, or `crate = path` (for
/// libraries below the `flare` facade, which use `::flare_core`).
fn crate_path(attr: TokenStream, usage: &str) -> syn::Result<TokenStream2> {
    if attr.is_empty() {
        return Ok(quote!(::flare));
    }
    let nv: syn::MetaNameValue = syn::parse(attr).map_err(|e| syn::Error::new(e.span(), usage))?;
    if !nv.path.is_ident("crate") {
        return Err(syn::Error::new(nv.path.span(), usage));
    }
    let v = nv.value;
    Ok(quote!(#v))
}

fn wrap_output(krate: &TokenStream2, fallible: bool, out: TokenStream2) -> TokenStream2 {
    if fallible {
        quote!(match #out {
            ::core::result::Result::Ok(v) => #krate::__private::ret(v),
            ::core::result::Result::Err(e) => ::core::result::Result::Err(#krate::__private::user_error(e)),
        })
    } else {
        quote!(#krate::__private::ret(#out))
    }
}

fn worker_ctor(krate: &TokenStream2) -> TokenStream2 {
    quote! {
        #[#krate::__private::ctor::ctor]
        fn __flare_worker_entry() {
            #krate::__worker_entry();
        }
    }
}

/// Makes a function callable as a remote task: `f::remote(args)` returns an `ObjectRef` to its
/// result, and `f::options().num_gpus(0.25).remote(args)` sets options. The function itself
/// stays callable as usual. Parameters and the result must be serde types; a function that
/// returns `Result<T, E>` gives an `ObjectRef<T>` whose `get` reports `Err` as a `UserError`.
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let krate = match crate_path(attr, "#[flare::remote] takes only `crate = path`; set options with f::options()") {
        Ok(k) => k,
        Err(e) => return e.to_compile_error().into(),
    };
    let func = parse_macro_input!(item as ItemFn);
    match remote_impl(&func, &krate) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn remote_impl(func: &ItemFn, krate: &TokenStream2) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.generics.span(), "a remote function cannot be generic: workers look it up by name"));
    }
    if sig.asyncness.is_some() {
        return Err(syn::Error::new(sig.span(), "a remote function cannot be async; use an async actor method instead"));
    }
    let name = &sig.ident;
    let vis = &func.vis;
    let ps = params(sig.inputs.iter())?;
    let names: Vec<_> = ps.iter().map(|(n, _)| n.clone()).collect();
    let types: Vec<_> = ps.iter().map(|(_, t)| t.clone()).collect();
    let idx: Vec<usize> = (0..ps.len()).collect();
    let n_args = ps.len();
    let Returns { value, fallible } = returns(&sig.output);
    let call = wrap_output(krate, fallible, quote!(super::#name(#(#names),*)));
    let ctor = worker_ctor(krate);
    let doc = format!("Remote calls of [`{name}`](fn@{name}): `{name}::remote(..)` and `{name}::options()`.");
    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(clippy::too_many_arguments, unused_imports)]
        #vis mod #name {
            use super::*;

            /// The name this function is registered under.
            pub const NAME: &str = concat!(module_path!());

            /// Submits a call with the default options.
            pub fn remote(#(#names: impl #krate::IntoArg<#types>),*) -> #krate::ObjectRef<#value> {
                options().remote(#(#names),*)
            }

            /// Options for one call.
            pub fn options() -> Options {
                Options(::core::default::Default::default())
            }

            /// Options of a call; finish with `.remote(..)`.
            #[must_use = "nothing runs until .remote(..)"]
            pub struct Options(pub #krate::TaskOptions);

            impl Options {
                pub fn num_cpus(mut self, n: f64) -> Self { self.0.num_cpus = n; self }
                pub fn num_gpus(mut self, n: f64) -> Self { self.0.num_gpus = n; self }
                pub fn memory(mut self, bytes: u64) -> Self { self.0.memory = bytes; self }
                pub fn resources(mut self, name: impl Into<String>, amount: f64) -> Self { self.0.resources.push((name.into(), amount)); self }
                pub fn max_retries(mut self, n: u32) -> Self { self.0.max_retries = n; self }
                pub fn retry_exceptions(mut self, on: bool) -> Self { self.0.retry_exceptions = on; self }
                pub fn scheduling_strategy(mut self, s: #krate::SchedulingStrategy) -> Self { self.0.scheduling_strategy = s; self }
                pub fn with(mut self, opts: #krate::TaskOptions) -> Self { self.0 = opts; self }

                /// Submits the call.
                pub fn remote(self, #(#names: impl #krate::IntoArg<#types>),*) -> #krate::ObjectRef<#value> {
                    #krate::__private::submit_task::<#value>(NAME, &self.0, vec![#(#krate::IntoArg::<#types>::into_arg(#names)),*])
                }
            }

            fn __invoke(args: Vec<#krate::__private::ObjectData>)
                -> ::core::result::Result<Box<dyn #krate::__private::ReturnValue>, #krate::TaskError>
            {
                #krate::__private::arity(&args, #n_args, NAME)?;
                #(let #names: #types = #krate::__private::arg(&args, #idx, NAME)?;)*
                #call
            }

            #[#krate::__private::linkme::distributed_slice(#krate::__private::REMOTE_FUNCTIONS)]
            #[linkme(crate = #krate::__private::linkme)]
            static __FLARE_ENTRY: #krate::__private::RemoteFunction =
                #krate::__private::RemoteFunction { name: NAME, invoke: __invoke };

            #ctor
        }
    })
}

/// Makes a type an actor. Put it on the type's `impl` block (on the type itself it changes
/// nothing). The `new` function is the constructor: `Type::remote(args)` returns an
/// `ActorBuilder`, `.spawn()` an `ActorHandle<Type>` whose methods (`&self` or `&mut self`,
/// sync or async) return `ObjectRef`s.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    let krate = match crate_path(attr, "#[flare::actor] takes only `crate = path`; set options on the builder") {
        Ok(k) => k,
        Err(e) => return e.to_compile_error().into(),
    };
    let item2: TokenStream2 = item.clone().into();
    if let Ok(imp) = syn::parse::<ItemImpl>(item) {
        return match actor_impl(&imp, &krate) {
            Ok(ts) => ts.into(),
            Err(e) => e.to_compile_error().into(),
        };
    }
    // On the struct or enum: the impl block carries the actor; keep the type as it is.
    match syn::parse2::<syn::Item>(item2.clone()) {
        Ok(syn::Item::Struct(_)) | Ok(syn::Item::Enum(_)) => item2.into(),
        _ => syn::Error::new(Span::call_site(), "#[flare::actor] goes on an impl block (and optionally its type)")
            .to_compile_error()
            .into(),
    }
}

struct Method {
    name: syn::Ident,
    params: Vec<(syn::Ident, Type)>,
    mutable: bool,
    is_async: bool,
    ret: Returns,
}

fn actor_impl(imp: &ItemImpl, krate: &TokenStream2) -> syn::Result<TokenStream2> {
    if !imp.generics.params.is_empty() || imp.trait_.is_some() {
        return Err(syn::Error::new(imp.span(), "#[flare::actor] goes on a plain, non-generic `impl Type { .. }` block"));
    }
    let ty = &imp.self_ty;
    let ty_ident = match &**ty {
        Type::Path(p) if p.path.segments.len() == 1 => p.path.segments[0].ident.clone(),
        _ => return Err(syn::Error::new(ty.span(), "#[flare::actor] needs a plain type name")),
    };
    let mut ctor: Option<(Vec<(syn::Ident, Type)>, bool)> = None;
    let mut methods = Vec::new();
    for item in &imp.items {
        let ImplItem::Fn(f) = item else { continue };
        let sig = &f.sig;
        let recv = sig.inputs.iter().find_map(|a| match a {
            FnArg::Receiver(r) => Some(r.clone()),
            _ => None,
        });
        match recv {
            None if sig.ident == "new" => {
                if sig.asyncness.is_some() {
                    return Err(syn::Error::new(sig.span(), "the actor constructor `new` cannot be async"));
                }
                ctor = Some((params(sig.inputs.iter())?, returns(&sig.output).fallible));
            }
            None => {}
            Some(r) => {
                if r.reference.is_none() {
                    return Err(syn::Error::new(r.span(), "actor methods take `&self` or `&mut self`"));
                }
                if !sig.generics.params.is_empty() {
                    return Err(syn::Error::new(sig.generics.span(), "actor methods cannot be generic: they are called by name"));
                }
                methods.push(Method {
                    name: sig.ident.clone(),
                    params: params(sig.inputs.iter().filter(|a| matches!(a, FnArg::Typed(_))))?,
                    mutable: r.mutability.is_some(),
                    is_async: sig.asyncness.is_some(),
                    ret: returns(&sig.output),
                });
            }
        }
    }
    let Some((ctor_params, ctor_fallible)) = ctor else {
        return Err(syn::Error::new(imp.span(), "an actor needs a constructor: `fn new(..) -> Self` in this impl block"));
    };
    let is_async = methods.iter().any(|m| m.is_async);
    let client = format_ident!("{}Client", ty_ident);
    let cnames: Vec<_> = ctor_params.iter().map(|(n, _)| n.clone()).collect();
    let ctypes: Vec<_> = ctor_params.iter().map(|(_, t)| t.clone()).collect();
    let cidx: Vec<usize> = (0..ctor_params.len()).collect();
    let n_ctor = ctor_params.len();
    let built = if ctor_fallible {
        quote!(<#ty>::new(#(#cnames),*).map_err(#krate::__private::user_error)?)
    } else {
        quote!(<#ty>::new(#(#cnames),*))
    };
    let state_ty = if is_async {
        quote!(::std::sync::Arc<#krate::__private::tokio::sync::RwLock<#ty>>)
    } else {
        quote!(::std::sync::RwLock<#ty>)
    };
    let state_new = if is_async {
        quote!(::std::sync::Arc::new(#krate::__private::tokio::sync::RwLock::new(value)))
    } else {
        quote!(::std::sync::RwLock::new(value))
    };

    let client_methods = methods.iter().map(|m| {
        let name = &m.name;
        let names: Vec<_> = m.params.iter().map(|(n, _)| n.clone()).collect();
        let types: Vec<_> = m.params.iter().map(|(_, t)| t.clone()).collect();
        let value = &m.ret.value;
        let doc = format!("Calls `{ty_ident}::{name}` on the actor.");
        quote! {
            #[doc = #doc]
            pub fn #name(&self, #(#names: impl #krate::IntoArg<#types>),*) -> #krate::ObjectRef<#value> {
                self.actor.call::<#value>(<#ty as #krate::Actor>::CLASS, stringify!(#name), vec![#(#krate::IntoArg::<#types>::into_arg(#names)),*])
            }
        }
    });

    let arms = methods.iter().map(|m| {
        let name = &m.name;
        let lit = name.to_string();
        let names: Vec<_> = m.params.iter().map(|(n, _)| n.clone()).collect();
        let types: Vec<_> = m.params.iter().map(|(_, t)| t.clone()).collect();
        let idx: Vec<usize> = (0..m.params.len()).collect();
        let n = m.params.len();
        let label = format!("{ty_ident}.{name}");
        let await_ = if m.is_async { quote!(.await) } else { quote!() };
        let out = wrap_output(krate, m.ret.fallible, quote!(__out));
        if is_async {
            let guard = if m.mutable { quote!(__state.write().await) } else { quote!(__state.read().await) };
            let bind = if m.mutable { quote!(let mut __g = #guard;) } else { quote!(let __g = #guard;) };
            quote! {
                #lit => {
                    let __state = self.0.clone();
                    #krate::__private::MethodCall::Future(Box::pin(async move {
                        #krate::__private::arity(&args, #n, #label)?;
                        #(let #names: #types = #krate::__private::arg(&args, #idx, #label)?;)*
                        #bind
                        let __out = __g.#name(#(#names),*)#await_;
                        #out
                    }))
                }
            }
        } else {
            let guard = if m.mutable {
                quote!(let mut __g = self.0.write().unwrap_or_else(|p| p.into_inner());)
            } else {
                quote!(let __g = self.0.read().unwrap_or_else(|p| p.into_inner());)
            };
            quote! {
                #lit => #krate::__private::MethodCall::Ready((|| {
                    #krate::__private::arity(&args, #n, #label)?;
                    #(let #names: #types = #krate::__private::arg(&args, #idx, #label)?;)*
                    #guard
                    let __out = __g.#name(#(#names),*);
                    #out
                })()),
            }
        }
    });
    let ctor_fn = worker_ctor(krate);
    let client_doc = format!("Calls on a `{ty_ident}` actor; reached through `ActorHandle<{ty_ident}>`.");
    Ok(quote! {
        #imp

        impl #ty {
            /// Starts building the actor with these constructor arguments; finish with `.spawn()`.
            pub fn remote(#(#cnames: impl #krate::IntoArg<#ctypes>),*) -> #krate::ActorBuilder<#ty> {
                #krate::ActorBuilder::new(vec![#(#krate::IntoArg::<#ctypes>::into_arg(#cnames)),*])
            }
        }

        #[doc = #client_doc]
        #[derive(Clone)]
        pub struct #client {
            actor: #krate::ActorRef,
        }

        impl ::core::convert::From<#krate::ActorRef> for #client {
            fn from(actor: #krate::ActorRef) -> Self {
                #client { actor }
            }
        }

        #[allow(private_interfaces, clippy::too_many_arguments)]
        impl #client {
            #(#client_methods)*
        }

        impl #krate::Actor for #ty {
            const CLASS: &'static str = concat!(module_path!(), "::", stringify!(#ty_ident));
            const IS_ASYNC: bool = #is_async;
            type Client = #client;
            fn actor_ref(client: &#client) -> &#krate::ActorRef {
                &client.actor
            }
        }

        const _: () = {
            struct __Instance(#state_ty);

            impl #krate::__private::ActorInstance for __Instance {
                #[allow(unused_mut, clippy::redundant_closure_call)]
                fn call(&self, method: &str, args: Vec<#krate::__private::ObjectData>) -> #krate::__private::MethodCall {
                    match method {
                        #(#arms)*
                        other => #krate::__private::MethodCall::Ready(::core::result::Result::Err(#krate::TaskError::new(
                            #krate::ErrorKind::NotRegistered,
                            format!("{} has no method `{}`", <#ty as #krate::Actor>::CLASS, other),
                        ))),
                    }
                }
            }

            fn __construct(args: Vec<#krate::__private::ObjectData>)
                -> ::core::result::Result<Box<dyn #krate::__private::ActorInstance>, #krate::TaskError>
            {
                #krate::__private::arity(&args, #n_ctor, <#ty as #krate::Actor>::CLASS)?;
                #(let #cnames: #ctypes = #krate::__private::arg(&args, #cidx, <#ty as #krate::Actor>::CLASS)?;)*
                let value = #built;
                Ok(Box::new(__Instance(#state_new)))
            }

            #[#krate::__private::linkme::distributed_slice(#krate::__private::ACTOR_CLASSES)]
            #[linkme(crate = #krate::__private::linkme)]
            static __FLARE_ENTRY: #krate::__private::ActorClass =
                #krate::__private::ActorClass { name: <#ty as #krate::Actor>::CLASS, construct: __construct };

            #ctor_fn
        };
    })
}

/// `#[flare::main] fn main() -> R { .. }`: calls `flare::init()` first.
#[proc_macro_attribute]
pub fn main(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut func = parse_macro_input!(item as ItemFn);
    let body = &func.block;
    let init = quote!(if let Err(e) = ::flare::init() {
        eprintln!("flare: could not start: {e}");
        ::std::process::exit(1);
    });
    func.block = syn::parse_quote!({ #init #body });
    quote!(#func).into()
}
