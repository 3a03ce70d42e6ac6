//! The one model of a volume's layout, shared by the controller, the host library, the CLI and
//! the test kits: the enum, its spelling for people (`single`, `concat`, `stripe:N[:UNIT]`,
//! `mirror:N`) and its conversions to and from the protobuf [`v1::Layout`].

use std::fmt;
use std::str::FromStr;

use dasmesh_wire::units::{format_size, parse_size};
use serde::{Deserialize, Serialize};

use crate::v1;

/// Stripe unit when none is given (in text, or 0 in a protobuf layout).
pub const DEFAULT_STRIPE_UNIT: u64 = 64 << 10;

/// How a volume's address space is laid onto its extents.
///
/// Its serde form is the one the controller's store has always written (`"Single"`,
/// `{"Stripe":{"width":2,"unit":65536}}`, ...): changing it breaks existing stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// One extent.
    Single,
    /// Extents end to end.
    Concat,
    /// Sets of `width` extents interleaved by `unit` bytes; sets follow each other.
    Stripe {
        /// Stripes per set.
        width: u32,
        /// Stripe unit in bytes.
        unit: u64,
    },
    /// `copies` copies of the whole address space, each a concatenation of its extents, each
    /// on its own node.
    Mirror {
        /// Number of copies.
        copies: u32,
    },
}

/// Why a layout could not be read. Only the form is checked here; the bounds a controller
/// accepts (widths, units) are its policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not one of the spellings.
    #[error("bad layout {0:?}: expected single, concat, stripe:N[:UNIT] or mirror:N")]
    Syntax(String),
    /// The stripe width or mirror copy count is not a number.
    #[error("bad layout {text:?}: {count:?} is not a count")]
    Count {
        /// The layout as given.
        text: String,
        /// The part that should have been a count.
        count: String,
    },
    /// The stripe unit is not a size.
    #[error("bad layout {text:?}: {why}")]
    Unit {
        /// The layout as given.
        text: String,
        /// What is wrong with the unit.
        why: String,
    },
    /// A stripe unit of zero bytes.
    #[error("bad layout {0:?}: the stripe unit must not be zero")]
    ZeroUnit(String),
    /// A stripe or mirror of width zero.
    #[error("a {0} layout needs a width of at least 1, got 0")]
    ZeroWidth(&'static str),
    /// A protobuf layout of a kind this build does not know (or none).
    #[error("unknown layout kind {0}")]
    UnknownKind(i32),
}

/// `text` cut to a length fit for an error message.
fn shown(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text.to_string(),
    }
}

impl FromStr for Layout {
    type Err = LayoutError;

    /// `single`, `concat`, `stripe:N[:UNIT]` (UNIT a size such as `65536` or `64k`; 64 KiB when
    /// left out) or `mirror:N`.
    fn from_str(s: &str) -> Result<Layout, LayoutError> {
        let count = |c: &str| -> Result<u32, LayoutError> {
            c.parse().map_err(|_| LayoutError::Count {
                text: shown(s),
                count: shown(c),
            })
        };
        let parts: Vec<&str> = s.split(':').collect();
        let layout = match parts[..] {
            ["single"] => Layout::Single,
            ["concat"] => Layout::Concat,
            ["stripe", w] => Layout::Stripe {
                width: count(w)?,
                unit: DEFAULT_STRIPE_UNIT,
            },
            ["stripe", w, u] => {
                let width = count(w)?;
                let unit = parse_size(u).map_err(|e| LayoutError::Unit {
                    text: shown(s),
                    why: e.to_string(),
                })?;
                if unit == 0 {
                    return Err(LayoutError::ZeroUnit(shown(s)));
                }
                Layout::Stripe { width, unit }
            }
            ["mirror", c] => Layout::Mirror { copies: count(c)? },
            _ => return Err(LayoutError::Syntax(shown(s))),
        };
        layout.check_width()
    }
}

impl fmt::Display for Layout {
    /// The spelling [`Layout::from_str`] reads (the stripe unit with the largest exact binary
    /// unit: `stripe:4:64k`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layout::Single => write!(f, "single"),
            Layout::Concat => write!(f, "concat"),
            Layout::Stripe { width, unit } => write!(f, "stripe:{width}:{}", format_size(*unit)),
            Layout::Mirror { copies } => write!(f, "mirror:{copies}"),
        }
    }
}

impl Layout {
    fn check_width(self) -> Result<Layout, LayoutError> {
        match self {
            Layout::Stripe { width: 0, .. } => Err(LayoutError::ZeroWidth("stripe")),
            Layout::Mirror { copies: 0 } => Err(LayoutError::ZeroWidth("mirror")),
            l => Ok(l),
        }
    }
}

impl From<Layout> for v1::Layout {
    fn from(l: Layout) -> v1::Layout {
        let (kind, width, unit) = match l {
            Layout::Single => (v1::LayoutKind::Single, 0, 0),
            Layout::Concat => (v1::LayoutKind::Concat, 0, 0),
            Layout::Stripe { width, unit } => (v1::LayoutKind::Stripe, width, unit),
            Layout::Mirror { copies } => (v1::LayoutKind::Mirror, copies, 0),
        };
        v1::Layout {
            kind: kind as i32,
            width,
            stripe_unit_bytes: unit,
        }
    }
}

impl TryFrom<&v1::Layout> for Layout {
    type Error = LayoutError;

    /// A stripe unit of 0 is the default ([`DEFAULT_STRIPE_UNIT`]); `width` is ignored for
    /// single and concat.
    fn try_from(l: &v1::Layout) -> Result<Layout, LayoutError> {
        let layout = match v1::LayoutKind::try_from(l.kind) {
            Ok(v1::LayoutKind::Single) => Layout::Single,
            Ok(v1::LayoutKind::Concat) => Layout::Concat,
            Ok(v1::LayoutKind::Stripe) => Layout::Stripe {
                width: l.width,
                unit: if l.stripe_unit_bytes == 0 {
                    DEFAULT_STRIPE_UNIT
                } else {
                    l.stripe_unit_bytes
                },
            },
            Ok(v1::LayoutKind::Mirror) => Layout::Mirror { copies: l.width },
            Ok(v1::LayoutKind::Unspecified) | Err(_) => {
                return Err(LayoutError::UnknownKind(l.kind))
            }
        };
        layout.check_width()
    }
}

impl TryFrom<v1::Layout> for Layout {
    type Error = LayoutError;

    fn try_from(l: v1::Layout) -> Result<Layout, LayoutError> {
        Layout::try_from(&l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every() -> Vec<Layout> {
        vec![
            Layout::Single,
            Layout::Concat,
            Layout::Stripe {
                width: 3,
                unit: 64 << 10,
            },
            Layout::Stripe {
                width: 256,
                unit: 12288,
            },
            Layout::Stripe {
                width: 2,
                unit: 1 << 30,
            },
            Layout::Mirror { copies: 2 },
            Layout::Mirror { copies: 8 },
        ]
    }

    #[test]
    fn text_round_trips() {
        for l in every() {
            let text = l.to_string();
            assert_eq!(text.parse::<Layout>(), Ok(l), "{text}");
        }
        assert_eq!(
            Layout::Stripe {
                width: 4,
                unit: 1 << 20
            }
            .to_string(),
            "stripe:4:1M"
        );
        assert_eq!(Layout::Mirror { copies: 2 }.to_string(), "mirror:2");
    }

    #[test]
    fn text_forms() {
        let stripe = |width, unit| Layout::Stripe { width, unit };
        for (text, l) in [
            ("single", Layout::Single),
            ("concat", Layout::Concat),
            ("stripe:4", stripe(4, DEFAULT_STRIPE_UNIT)),
            ("stripe:4:65536", stripe(4, 65536)),
            ("stripe:4:64k", stripe(4, 65536)),
            ("stripe:2:1MiB", stripe(2, 1 << 20)),
            ("mirror:3", Layout::Mirror { copies: 3 }),
        ] {
            assert_eq!(text.parse::<Layout>(), Ok(l), "{text}");
        }
    }

    #[test]
    fn bad_text_says_why() {
        for (text, want) in [
            ("raid5", LayoutError::Syntax("raid5".into())),
            ("", LayoutError::Syntax(String::new())),
            ("single:2", LayoutError::Syntax("single:2".into())),
            ("mirror", LayoutError::Syntax("mirror".into())),
            ("Mirror:2", LayoutError::Syntax("Mirror:2".into())),
            (
                "stripe:2:64k:1",
                LayoutError::Syntax("stripe:2:64k:1".into()),
            ),
            (
                "mirror:x",
                LayoutError::Count {
                    text: "mirror:x".into(),
                    count: "x".into(),
                },
            ),
            (
                "stripe:-1",
                LayoutError::Count {
                    text: "stripe:-1".into(),
                    count: "-1".into(),
                },
            ),
            ("stripe:2:0", LayoutError::ZeroUnit("stripe:2:0".into())),
            ("stripe:0", LayoutError::ZeroWidth("stripe")),
            ("mirror:0", LayoutError::ZeroWidth("mirror")),
        ] {
            assert_eq!(text.parse::<Layout>(), Err(want), "{text}");
        }
        let e = "stripe:2:zz".parse::<Layout>().unwrap_err();
        assert!(matches!(e, LayoutError::Unit { .. }), "{e:?}");
        assert!(e.to_string().contains("\"zz\""), "{e}");
        // Messages name what was given, cut short when it is long.
        let long = format!("stripe:{}", "9".repeat(500));
        let e = long.parse::<Layout>().unwrap_err().to_string();
        assert!(e.len() < 200 && e.contains("99999"), "{e}");
        assert!("raid5"
            .parse::<Layout>()
            .unwrap_err()
            .to_string()
            .contains("expected single, concat, stripe:N[:UNIT] or mirror:N"));
    }

    #[test]
    fn protobuf_round_trips() {
        for l in every() {
            let m = v1::Layout::from(l);
            assert_eq!(Layout::try_from(&m), Ok(l), "{m:?}");
        }
        let m = v1::Layout::from(Layout::Mirror { copies: 2 });
        assert_eq!(
            (m.kind, m.width, m.stripe_unit_bytes),
            (v1::LayoutKind::Mirror as i32, 2, 0)
        );
    }

    #[test]
    fn protobuf_defaults_and_refusals() {
        let msg = |kind: v1::LayoutKind, width, unit| v1::Layout {
            kind: kind as i32,
            width,
            stripe_unit_bytes: unit,
        };
        assert_eq!(
            Layout::try_from(msg(v1::LayoutKind::Stripe, 2, 0)),
            Ok(Layout::Stripe {
                width: 2,
                unit: DEFAULT_STRIPE_UNIT
            })
        );
        assert_eq!(
            Layout::try_from(msg(v1::LayoutKind::Single, 7, 0)),
            Ok(Layout::Single)
        );
        assert_eq!(
            Layout::try_from(msg(v1::LayoutKind::Unspecified, 0, 0)),
            Err(LayoutError::UnknownKind(0))
        );
        let unknown = v1::Layout {
            kind: 99,
            width: 2,
            stripe_unit_bytes: 0,
        };
        assert_eq!(
            Layout::try_from(&unknown),
            Err(LayoutError::UnknownKind(99))
        );
        assert_eq!(
            Layout::try_from(msg(v1::LayoutKind::Stripe, 0, 4096)),
            Err(LayoutError::ZeroWidth("stripe"))
        );
        assert_eq!(
            Layout::try_from(msg(v1::LayoutKind::Mirror, 0, 0)),
            Err(LayoutError::ZeroWidth("mirror"))
        );
    }
}
