//! One declaration per OpenWire structure. ActiveMQ generates four methods
//! per marshaller (tight size, tight write, tight read, loose read/write)
//! from one field list; so do these macros, so a field cannot be written in
//! one order and read in another.
//!
//! A field is `name: kind [Type] [, since VERSION];` where kind is one of
//! the [`Writer`](super::primitives::Writer) / [`Reader`](super::primitives::Reader)
//! methods: `int`, `byte`, `bool`, `long`, `string`, `bytes`, `magic`,
//! `throwable`, `nested T`, `cached T`, `array T`, or `skip T` for a field
//! that is not on the wire. `since` gates a field added in a later
//! protocol version.

/// The Rust type of a field of the given kind.
macro_rules! wire_type {
    (int) => { i32 };
    (byte) => { i8 };
    (bool) => { bool };
    (long) => { i64 };
    (string) => { Option<String> };
    (bytes) => { Option<bytes::Bytes> };
    (magic) => { [u8; 8] };
    (throwable) => { Option<$crate::protocol::openwire::primitives::Throwable> };
    (nested $t:ty) => { Option<$t> };
    (cached $t:ty) => { Option<$t> };
    (array $t:ty) => { Option<Vec<$t>> };
    (skip $t:ty) => { $t };
}

macro_rules! since_version {
    () => {
        0
    };
    ($v:literal) => {
        $v
    };
}

/// A structure and its `write_fields` / `read_fields`.
macro_rules! wire_struct {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$fmeta:meta])* $field:ident : $kind:ident $($ty:ty)? $(, since $v:literal)? ; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: wire_type!($kind $($ty)?), )*
        }

        impl $name {
            #[allow(unused_variables)]
            pub(crate) fn write_fields(
                &self,
                w: &mut $crate::protocol::openwire::primitives::Writer<'_>,
            ) -> $crate::protocol::openwire::error::Result<()> {
                $(
                    if w.version() >= since_version!($($v)?) {
                        w.$kind(&self.$field)?;
                    }
                )*
                Ok(())
            }

            #[allow(unused_variables)]
            pub(crate) fn read_fields(
                r: &mut $crate::protocol::openwire::primitives::Reader<'_>,
            ) -> $crate::protocol::openwire::error::Result<Self> {
                Ok($name {
                    $(
                        $field: if r.version() >= since_version!($($v)?) {
                            r.$kind()?
                        } else {
                            Default::default()
                        },
                    )*
                })
            }
        }
    };
}

/// A command: BaseCommand's `commandId` and `responseRequired` come first.
macro_rules! wire_command {
    (
        $(#[$meta:meta])*
        $name:ident { $($body:tt)* }
    ) => {
        wire_struct! {
            $(#[$meta])*
            $name {
                /// The client's number for this command; a Response names it.
                command_id: int;
                /// The client waits for a Response (or ExceptionResponse).
                response_required: bool;
                $($body)*
            }
        }
    };
}

/// `Marshal` for a structure with one type code, stored in the cache as
/// `DataStructure::$name`.
macro_rules! impl_data_marshal {
    ($name:ident = $code:ident) => {
        impl $crate::protocol::openwire::primitives::Marshal for $name {
            const NAME: &'static str = stringify!($name);

            fn type_code(&self) -> u8 {
                $crate::protocol::openwire::commands::types::$code
            }

            fn write_body(
                &self,
                w: &mut $crate::protocol::openwire::primitives::Writer<'_>,
            ) -> $crate::protocol::openwire::error::Result<()> {
                self.write_fields(w)
            }

            fn read_body(
                code: u8,
                r: &mut $crate::protocol::openwire::primitives::Reader<'_>,
            ) -> $crate::protocol::openwire::error::Result<Self> {
                $crate::protocol::openwire::commands::expect_code(
                    code,
                    $crate::protocol::openwire::commands::types::$code,
                    Self::NAME,
                )?;
                Self::read_fields(r)
            }

            fn to_data(&self) -> $crate::protocol::openwire::commands::DataStructure {
                $crate::protocol::openwire::commands::DataStructure::$name(self.clone())
            }

            fn same_as(&self, d: &$crate::protocol::openwire::commands::DataStructure) -> bool {
                matches!(d, $crate::protocol::openwire::commands::DataStructure::$name(v) if v == self)
            }

            fn from_data(
                data: $crate::protocol::openwire::commands::DataStructure,
            ) -> $crate::protocol::openwire::error::Result<Self> {
                match data {
                    $crate::protocol::openwire::commands::DataStructure::$name(v) => Ok(v),
                    other => Err($crate::protocol::openwire::commands::unexpected(
                        Self::NAME,
                        &other,
                    )),
                }
            }
        }
    };
}
