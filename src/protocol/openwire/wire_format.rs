//! WireFormatInfo, the first frame each side sends, and the negotiation
//! that turns the two into the encoding both sides use afterwards: the
//! lower version, each boolean only if both want it, the smaller cache and
//! frame size (ActiveMQ's `OpenWireFormat.renegotiateWireFormat`).

use super::error::{CodecError, Result};
use super::properties::{map_to_bytes, unmarshal_map, MapLimits, PropertyMap, Value};

/// The version ActiveMQ 5.12+ clients speak; the codec speaks it and
/// every version down to [`MIN_VERSION`].
pub const VERSION: i32 = 12;
/// Versions 9 to 12 differ only in three fields the codec gates; older
/// ones live in ActiveMQ's legacy jar and no current client sends them.
pub const MIN_VERSION: i32 = 9;
pub const MAGIC: [u8; 8] = *b"ActiveMQ";

wire_struct! {
    /// Not a BaseCommand: no command id. Sent loose, with a size prefix,
    /// before anything is negotiated.
    WireFormatInfo {
        magic: magic;
        version: int;
        marshalled_properties: bytes;
    }
}

/// What one side asks for, read from / written to WireFormatInfo's
/// property map. A missing boolean is false and a missing number 0, as
/// ActiveMQ reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireFormatOptions {
    pub version: i32,
    pub tight_encoding_enabled: bool,
    pub cache_enabled: bool,
    pub cache_size: i32,
    pub size_prefix_disabled: bool,
    pub stack_trace_enabled: bool,
    pub tcp_no_delay_enabled: bool,
    pub max_inactivity_duration_ms: i64,
    pub max_inactivity_duration_initial_delay_ms: i64,
    /// 0: no bound.
    pub max_frame_size: i64,
    pub host: Option<String>,
    pub provider_name: Option<String>,
    pub provider_version: Option<String>,
    pub platform_details: Option<String>,
}

impl Default for WireFormatOptions {
    /// ActiveMQ's `OpenWireFormatFactory` defaults (what its client asks
    /// for unless the URL says otherwise), with a 100 MiB frame bound as
    /// the broker's transport connector has.
    fn default() -> Self {
        WireFormatOptions {
            version: VERSION,
            tight_encoding_enabled: true,
            cache_enabled: true,
            cache_size: 1024,
            size_prefix_disabled: false,
            stack_trace_enabled: true,
            tcp_no_delay_enabled: true,
            max_inactivity_duration_ms: 30_000,
            max_inactivity_duration_initial_delay_ms: 10_000,
            max_frame_size: 104_857_600,
            host: None,
            provider_name: Some("Brokk".into()),
            provider_version: Some(env!("CARGO_PKG_VERSION").into()),
            platform_details: None,
        }
    }
}

impl WireFormatOptions {
    pub fn to_info(&self) -> Result<WireFormatInfo> {
        let mut p = PropertyMap::new();
        let mut flag = |k: &str, v: bool| p.insert(k.into(), Value::Bool(v));
        flag("TightEncodingEnabled", self.tight_encoding_enabled);
        flag("CacheEnabled", self.cache_enabled);
        flag("SizePrefixDisabled", self.size_prefix_disabled);
        flag("StackTraceEnabled", self.stack_trace_enabled);
        flag("TcpNoDelayEnabled", self.tcp_no_delay_enabled);
        p.insert("CacheSize".into(), Value::Int(self.cache_size));
        p.insert(
            "MaxInactivityDuration".into(),
            Value::Long(self.max_inactivity_duration_ms),
        );
        p.insert(
            "MaxInactivityDurationInitalDelay".into(),
            Value::Long(self.max_inactivity_duration_initial_delay_ms),
        );
        p.insert("MaxFrameSize".into(), Value::Long(self.max_frame_size));
        for (k, v) in [
            ("Host", &self.host),
            ("ProviderName", &self.provider_name),
            ("ProviderVersion", &self.provider_version),
            ("PlatformDetails", &self.platform_details),
        ] {
            if let Some(v) = v {
                p.insert(k.into(), Value::String(v.clone()));
            }
        }
        Ok(WireFormatInfo {
            magic: MAGIC,
            version: self.version,
            marshalled_properties: Some(map_to_bytes(&p)?),
        })
    }

    /// Reads a peer's WireFormatInfo under ActiveMQ's bounds for it (64
    /// flat entries), refusing a wrong magic.
    pub fn from_info(info: &WireFormatInfo) -> Result<WireFormatOptions> {
        if info.magic != MAGIC {
            return Err(CodecError::BadMagic(info.magic));
        }
        let p = match &info.marshalled_properties {
            Some(b) => unmarshal_map(b, MapLimits::WIRE_FORMAT)?.unwrap_or_default(),
            None => PropertyMap::new(),
        };
        let flag = |k: &'static str| match p.get(k) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(type_error(k, "boolean", other)),
        };
        let long = |k: &'static str| match p.get(k) {
            None => Ok(0),
            Some(Value::Long(v)) => Ok(*v),
            Some(other) => Err(type_error(k, "long", other)),
        };
        let text = |k: &'static str| match p.get(k) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        Ok(WireFormatOptions {
            version: info.version,
            tight_encoding_enabled: flag("TightEncodingEnabled")?,
            cache_enabled: flag("CacheEnabled")?,
            cache_size: match p.get("CacheSize") {
                None => 0,
                Some(Value::Int(v)) => *v,
                Some(other) => return Err(type_error("CacheSize", "int", other)),
            },
            size_prefix_disabled: flag("SizePrefixDisabled")?,
            stack_trace_enabled: flag("StackTraceEnabled")?,
            tcp_no_delay_enabled: flag("TcpNoDelayEnabled")?,
            max_inactivity_duration_ms: long("MaxInactivityDuration")?,
            max_inactivity_duration_initial_delay_ms: long("MaxInactivityDurationInitalDelay")?,
            max_frame_size: long("MaxFrameSize")?,
            host: text("Host"),
            provider_name: text("ProviderName"),
            provider_version: text("ProviderVersion"),
            platform_details: text("PlatformDetails"),
        })
    }
}

fn type_error(name: &'static str, expected: &'static str, found: &Value) -> CodecError {
    CodecError::PropertyType {
        name,
        expected,
        found: found.type_name(),
    }
}

/// The encoding in force on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireFormat {
    pub version: i32,
    pub tight_encoding: bool,
    pub cache_enabled: bool,
    /// Entries per direction; 0 means ActiveMQ's default (16383).
    pub cache_size: usize,
    pub size_prefix_disabled: bool,
    pub stack_trace_enabled: bool,
    pub tcp_no_delay: bool,
    /// The bound on a frame's size, checked before it is buffered.
    pub max_frame_size: u64,
    /// 0: the peer does not monitor inactivity.
    pub max_inactivity_duration_ms: u64,
    pub max_inactivity_duration_initial_delay_ms: u64,
}

impl WireFormat {
    /// Before negotiation both sides speak loose encoding with a size
    /// prefix and no cache: that is how WireFormatInfo itself travels.
    pub fn initial(max_frame_size: u64) -> WireFormat {
        WireFormat {
            version: VERSION,
            tight_encoding: false,
            cache_enabled: false,
            cache_size: 0,
            size_prefix_disabled: false,
            stack_trace_enabled: false,
            tcp_no_delay: false,
            max_frame_size,
            max_inactivity_duration_ms: 0,
            max_inactivity_duration_initial_delay_ms: 0,
        }
    }

    /// ActiveMQ's rule: each boolean only if both want it; the lower
    /// version; the smaller positive frame size; the smaller cache. The
    /// inactivity durations are the plain minimum, as ActiveMQ's
    /// InactivityMonitor takes them: 0 on either side turns checks off.
    pub fn negotiate(ours: &WireFormatOptions, theirs: &WireFormatOptions) -> Result<WireFormat> {
        let version = min_positive(ours.version.into(), theirs.version.into()) as i32;
        if version < MIN_VERSION {
            return Err(CodecError::UnsupportedVersion(version));
        }
        let cache_enabled = ours.cache_enabled && theirs.cache_enabled;
        Ok(WireFormat {
            version,
            tight_encoding: ours.tight_encoding_enabled && theirs.tight_encoding_enabled,
            cache_enabled,
            cache_size: if cache_enabled {
                ours.cache_size.min(theirs.cache_size).max(0) as usize
            } else {
                0
            },
            size_prefix_disabled: ours.size_prefix_disabled && theirs.size_prefix_disabled,
            stack_trace_enabled: ours.stack_trace_enabled && theirs.stack_trace_enabled,
            tcp_no_delay: ours.tcp_no_delay_enabled && theirs.tcp_no_delay_enabled,
            max_frame_size: min_positive(ours.max_frame_size, theirs.max_frame_size).max(0) as u64,
            max_inactivity_duration_ms: ours
                .max_inactivity_duration_ms
                .min(theirs.max_inactivity_duration_ms)
                .max(0) as u64,
            max_inactivity_duration_initial_delay_ms: ours
                .max_inactivity_duration_initial_delay_ms
                .min(theirs.max_inactivity_duration_initial_delay_ms)
                .max(0) as u64,
        })
    }
}

/// ActiveMQ's `min`: a value of 0 or less means "not set", so the other wins.
fn min_positive(a: i64, b: i64) -> i64 {
    if (a < b && a > 0) || b <= 0 {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_round_trip_through_wire_format_info() {
        let o = WireFormatOptions {
            host: Some("localhost".into()),
            ..WireFormatOptions::default()
        };
        assert_eq!(
            WireFormatOptions::from_info(&o.to_info().unwrap()).unwrap(),
            o
        );
    }

    #[test]
    fn negotiation_takes_the_lower_version_and_the_and_of_booleans() {
        let ours = WireFormatOptions::default();
        let theirs = WireFormatOptions {
            version: 10,
            tight_encoding_enabled: false,
            cache_size: 512,
            max_frame_size: 0,
            ..WireFormatOptions::default()
        };
        let f = WireFormat::negotiate(&ours, &theirs).unwrap();
        assert_eq!(f.version, 10);
        assert!(!f.tight_encoding);
        assert!(f.cache_enabled);
        assert_eq!(f.cache_size, 512);
        assert_eq!(f.max_frame_size, 104_857_600);
        assert_eq!(f.max_inactivity_duration_ms, 30_000);
    }

    #[test]
    fn old_versions_and_bad_magic_are_refused() {
        let old = WireFormatOptions {
            version: 6,
            ..WireFormatOptions::default()
        };
        assert_eq!(
            WireFormat::negotiate(&WireFormatOptions::default(), &old),
            Err(CodecError::UnsupportedVersion(6))
        );
        let mut info = WireFormatOptions::default().to_info().unwrap();
        info.magic = *b"HTTP/1.1";
        assert!(matches!(
            WireFormatOptions::from_info(&info),
            Err(CodecError::BadMagic(_))
        ));
    }
}
