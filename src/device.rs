//! Where a model computes: the CPU, or an NVIDIA GPU (cargo feature `cuda`) with some or all of
//! its layers.

use crate::error::{Error, Result};

/// The device a model is loaded for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    /// The GPU when this build has CUDA, a GPU is present and the model runs there; else the
    /// CPU (the reason is logged).
    #[default]
    Auto,
    Cpu,
    /// A CUDA device by index: loading fails, naming why, when it cannot be used.
    Cuda(usize),
}

impl Device {
    /// "auto", "cpu", "cuda" (device 0) or "cuda:N".
    pub fn parse(name: &str) -> Result<Device> {
        let n = name.trim();
        match n {
            "" | "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            _ => n
                .strip_prefix("cuda:")
                .and_then(|i| i.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "unknown device `{name}` (known: auto, cpu, cuda, cuda:N)"
                    ))
                }),
        }
    }

    pub fn name(self) -> String {
        match self {
            Device::Auto => "auto".into(),
            Device::Cpu => "cpu".into(),
            Device::Cuda(i) => format!("cuda:{i}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for d in [Device::Auto, Device::Cpu, Device::Cuda(0), Device::Cuda(3)] {
            assert_eq!(Device::parse(&d.name()).unwrap(), d);
        }
        assert_eq!(Device::parse("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(Device::parse("").unwrap(), Device::Auto);
        for bad in ["tpu", "cuda:", "cuda:x", "cuda:-1"] {
            let e = Device::parse(bad).unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
