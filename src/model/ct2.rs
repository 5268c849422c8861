//! Reader for CTranslate2 `model.bin` files (format version 6) holding a `WhisperSpec`.
//!
//! Layout (little-endian): u32 version; string spec name; u32 revision; u32 n_variables;
//! per variable: string name, u8 rank, rank × u32 dims, u8 dtype, u32 byte count, raw bytes;
//! then u32 n_aliases and (alias, target) string pairs. A string is a u16 length that counts
//! a trailing NUL, the UTF-8 bytes, then the NUL.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Dtype {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Dtype {
    fn from_code(code: u8) -> Result<Self> {
        Ok(match code {
            0 => Self::F32,
            1 => Self::I8,
            2 => Self::I16,
            3 => Self::I32,
            4 => Self::F16,
            5 => Self::Bf16,
            other => bail!("unknown CTranslate2 dtype code {other}"),
        })
    }

    pub fn size(self) -> usize {
        match self {
            Self::I8 => 1,
            Self::I16 | Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Ct2Variable {
    pub dims: Vec<usize>,
    pub dtype: Ct2Dtype,
    pub data: Vec<u8>,
}

impl Ct2Variable {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// The value of a scalar integer variable (flags such as `pre_norm` or `num_heads`).
    pub fn as_int_scalar(&self) -> Result<i64> {
        ensure!(self.numel() == 1, "not a scalar: dims {:?}", self.dims);
        Ok(match self.dtype {
            Ct2Dtype::I8 => self.data[0] as i8 as i64,
            Ct2Dtype::I16 => i16::from_le_bytes([self.data[0], self.data[1]]) as i64,
            Ct2Dtype::I32 => i32::from_le_bytes(self.data[..4].try_into()?) as i64,
            other => bail!("scalar of dtype {other:?} is not an integer"),
        })
    }

    /// Widen floating-point data to f32.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let bytes = &self.data;
        Ok(match self.dtype {
            Ct2Dtype::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
            Ct2Dtype::F16 => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Ct2Dtype::Bf16 => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => bail!("variable of dtype {other:?} is not floating point (quantized models are not supported)"),
        })
    }
}

#[derive(Debug)]
pub struct Ct2Model {
    pub spec: String,
    pub revision: u32,
    pub variables: BTreeMap<String, Ct2Variable>,
    pub aliases: BTreeMap<String, String>,
}

impl Ct2Model {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        Self::parse(&bytes).with_context(|| format!("{}: not a valid CTranslate2 model.bin", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = ByteReader { bytes, pos: 0 };
        let version = r.u32()?;
        ensure!(version == 6, "unsupported CTranslate2 format version {version} (expected 6)");
        let spec = r.string()?;
        let revision = r.u32()?;
        let n_variables = r.u32()? as usize;
        let mut variables = BTreeMap::new();
        for _ in 0..n_variables {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let mut dims = Vec::with_capacity(rank);
            for _ in 0..rank {
                dims.push(r.u32()? as usize);
            }
            let dtype = Ct2Dtype::from_code(r.u8()?).with_context(|| format!("variable {name}"))?;
            let n_bytes = r.u32()? as usize;
            let numel: usize = dims.iter().product();
            ensure!(numel * dtype.size() == n_bytes, "variable {name}: {n_bytes} bytes do not match dims {dims:?} of {dtype:?}");
            let data = r.take(n_bytes).with_context(|| format!("variable {name} is truncated"))?.to_vec();
            variables.insert(name, Ct2Variable { dims, dtype, data });
        }
        let mut aliases = BTreeMap::new();
        if r.remaining() > 0 {
            let n_aliases = r.u32()? as usize;
            for _ in 0..n_aliases {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        Ok(Self { spec, revision, variables, aliases })
    }

    /// A variable by name, following aliases.
    pub fn get(&self, name: &str) -> Result<&Ct2Variable> {
        let resolved = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.variables.get(resolved).with_context(|| format!("model.bin has no variable {name}"))
    }

    pub fn int_scalar(&self, name: &str) -> Result<i64> {
        self.get(name)?.as_int_scalar().with_context(|| format!("variable {name}"))
    }

    /// Serialise in the same format (used by tests to build small models).
    pub fn to_bytes(&self) -> Vec<u8> {
        fn put_string(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&6u32.to_le_bytes());
        put_string(&mut out, &self.spec);
        out.extend_from_slice(&self.revision.to_le_bytes());
        out.extend_from_slice(&(self.variables.len() as u32).to_le_bytes());
        for (name, var) in &self.variables {
            put_string(&mut out, name);
            out.push(var.dims.len() as u8);
            for &d in &var.dims {
                out.extend_from_slice(&(d as u32).to_le_bytes());
            }
            let code = match var.dtype {
                Ct2Dtype::F32 => 0u8,
                Ct2Dtype::I8 => 1,
                Ct2Dtype::I16 => 2,
                Ct2Dtype::I32 => 3,
                Ct2Dtype::F16 => 4,
                Ct2Dtype::Bf16 => 5,
            };
            out.push(code);
            out.extend_from_slice(&(var.data.len() as u32).to_le_bytes());
            out.extend_from_slice(&var.data);
        }
        out.extend_from_slice(&(self.aliases.len() as u32).to_le_bytes());
        for (alias, target) in &self.aliases {
            put_string(&mut out, alias);
            put_string(&mut out, target);
        }
        out
    }
}

struct ByteReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(self.remaining() >= n, "the file is truncated: it ends at byte {} where {n} more bytes were expected", self.bytes.len());
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u16()? as usize;
        ensure!(len >= 1, "empty string record at byte {}", self.pos);
        let raw = self.take(len)?;
        ensure!(raw[len - 1] == 0, "string at byte {} is not NUL-terminated", self.pos - len);
        Ok(String::from_utf8(raw[..len - 1].to_vec())?)
    }
}
