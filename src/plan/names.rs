//! The names option values go by on the command line and in the Python package: one table
//! per option, which both read, so the two cannot spell a value differently.

use super::{Granularity, LayoutPolicy, Mode, RangeMethod, Target, WeightType};

/// An option whose values have names.
pub trait Named: Copy + PartialEq + 'static {
    /// Every value, with its name, in the order help texts list them.
    const NAMES: &'static [(&'static str, Self)];

    /// The value's name.
    fn name(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("", |(n, _)| n)
    }

    /// The value named `name`: ASCII case and `_` for `-` do not matter (`per_channel` is
    /// Python's spelling of `per-channel`). The error lists the names.
    fn from_name(name: &str) -> Result<Self, String> {
        let key = name.replace('_', "-").to_ascii_lowercase();
        Self::NAMES
            .iter()
            .find(|(n, _)| *n == key)
            .map(|&(_, v)| v)
            .ok_or_else(|| {
                let names: Vec<_> = Self::NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
                format!("invalid value {name:?} (choose {})", names.join(", "))
            })
    }
}

impl Named for Mode {
    const NAMES: &'static [(&'static str, Mode)] = &[
        ("weight-only", Mode::WeightOnly),
        ("dynamic", Mode::Dynamic),
    ];
}

impl Named for Granularity {
    const NAMES: &'static [(&'static str, Granularity)] = &[
        ("per-tensor", Granularity::PerTensor),
        ("per-channel", Granularity::PerChannel),
        ("block", Granularity::Block),
    ];
}

impl Named for WeightType {
    const NAMES: &'static [(&'static str, WeightType)] = &[
        ("int8", WeightType::Int8),
        ("int4", WeightType::Int4),
        ("int2", WeightType::Int2),
        ("float16", WeightType::Float16),
    ];
}

impl Named for LayoutPolicy {
    const NAMES: &'static [(&'static str, LayoutPolicy)] = &[
        ("auto", LayoutPolicy::Auto),
        ("external", LayoutPolicy::External),
    ];
}

impl Named for RangeMethod {
    const NAMES: &'static [(&'static str, RangeMethod)] =
        &[("minmax", RangeMethod::Minmax), ("mse", RangeMethod::Mse)];
}

impl Named for Target {
    const NAMES: &'static [(&'static str, Target)] =
        &[("litert", Target::Litert), ("micro", Target::Micro)];
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trips<T: Named + std::fmt::Debug>(all: &[T]) {
        assert_eq!(T::NAMES.len(), all.len(), "one name per value");
        for &v in all {
            assert_eq!(T::from_name(v.name()), Ok(v));
            assert_eq!(
                T::from_name(&v.name().to_uppercase().replace('-', "_")),
                Ok(v)
            );
        }
    }

    /// Every value of every option has a name that parses back to it, in either spelling.
    #[test]
    fn every_value_has_a_name_that_parses_back() {
        round_trips(&[Mode::WeightOnly, Mode::Dynamic]);
        round_trips(&[
            Granularity::PerTensor,
            Granularity::PerChannel,
            Granularity::Block,
        ]);
        round_trips(&[
            WeightType::Int8,
            WeightType::Int4,
            WeightType::Int2,
            WeightType::Float16,
        ]);
        round_trips(&[LayoutPolicy::Auto, LayoutPolicy::External]);
        round_trips(&[RangeMethod::Minmax, RangeMethod::Mse]);
        round_trips(&[Target::Litert, Target::Micro]);
    }

    #[test]
    fn an_unknown_name_lists_the_names() {
        assert_eq!(
            Mode::from_name("fast"),
            Err(r#"invalid value "fast" (choose "weight-only", "dynamic")"#.to_owned())
        );
    }
}
