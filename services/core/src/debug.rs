//! [`debug_fields!`](crate::debug_fields): a `Debug` implementation that
//! shows a few fields of a struct and elides the rest, for structs that hold
//! clients, caches or secrets (which have no useful or no safe `Debug`).

/// Implements `Debug` for a struct (optionally generic over type
/// parameters, which need no `Debug` themselves) by showing the named
/// fields, each of which must be `Debug`, and eliding the others:
/// `debug_fields!(TailConsumer { topic });` prints
/// `TailConsumer { topic: "chat.sessions", .. }`.
#[macro_export]
macro_rules! debug_fields {
    ($name:ident $(<$($generic:ident),+>)? { $($field:ident),* $(,)? }) => {
        impl $(<$($generic),+>)? ::std::fmt::Debug for $name $(<$($generic),+>)? {
            fn fmt(&self, formatter: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                formatter
                    .debug_struct(stringify!($name))
                    $(.field(stringify!($field), &self.$field))*
                    .finish_non_exhaustive()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    struct Client {
        topic: String,
        retries: u32,
        #[allow(dead_code)]
        secret: String,
    }
    crate::debug_fields!(Client { topic, retries });

    struct Generic<T> {
        name: &'static str,
        #[allow(dead_code)]
        inner: T,
    }
    struct NotDebug;
    crate::debug_fields!(Generic<T> { name });

    #[test]
    fn shows_the_named_fields_only() {
        let client = Client {
            topic: "chat.sessions".into(),
            retries: 3,
            secret: "hunter2".into(),
        };
        assert_eq!(
            format!("{client:?}"),
            r#"Client { topic: "chat.sessions", retries: 3, .. }"#
        );
        let generic = Generic {
            name: "g",
            inner: NotDebug,
        };
        assert_eq!(format!("{generic:?}"), r#"Generic { name: "g", .. }"#);
    }
}
