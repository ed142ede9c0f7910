//! What the pickle reader produces: values, tensor references into a checkpoint's storages,
//! and its errors.

/// Element type of a storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageKind {
    /// float32
    Float,
    /// float64
    Double,
    /// float16
    Half,
    /// bfloat16
    BFloat16,
    /// int64
    Long,
    /// int32
    Int,
    /// int16
    Short,
    /// int8
    Char,
    /// uint8
    Byte,
    /// bool
    Bool,
}

impl StorageKind {
    pub(super) fn from_class(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::Float,
            "DoubleStorage" => Self::Double,
            "HalfStorage" => Self::Half,
            "BFloat16Storage" => Self::BFloat16,
            "LongStorage" => Self::Long,
            "IntStorage" => Self::Int,
            "ShortStorage" => Self::Short,
            "CharStorage" => Self::Char,
            "ByteStorage" => Self::Byte,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }
}

/// A tensor described by the pickle; its bytes live in the checkpoint's `data/<key>` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// Storage entry name.
    pub key: String,
    /// Element type.
    pub kind: StorageKind,
    /// Elements in the storage.
    pub storage_numel: i64,
    /// Offset into the storage, in elements.
    pub offset: i64,
    /// Shape.
    pub size: Vec<i64>,
    /// Strides, in elements.
    pub stride: Vec<i64>,
}

/// Unpickled data.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`
    None,
    /// `bool`
    Bool(bool),
    /// `int` (within i64)
    Int(i64),
    /// `int` beyond i64, as little-endian two's complement bytes.
    BigInt(Vec<u8>),
    /// `float`
    Float(f64),
    /// `str`
    Str(String),
    /// `bytes`
    Bytes(Vec<u8>),
    /// `list`
    List(Vec<Value>),
    /// `tuple`
    Tuple(Vec<Value>),
    /// `dict` / `OrderedDict`, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// `set` / `frozenset`
    Set(Vec<Value>),
    /// A reference to an allowed global that was not called (e.g. a storage type).
    Global(String),
    /// An instance of an allowed record class: constructor arguments and state, never run.
    Object {
        /// `module.Class`
        class: String,
        /// Constructor arguments.
        args: Vec<Value>,
        /// State given to `__setstate__` / `__dict__`.
        state: Box<Value>,
    },
    /// A tensor.
    Tensor(TensorRef),
    /// A reference back to an enclosing object (e.g. omegaconf's `_parent`), cut to keep a tree.
    Cycle,
}

impl Value {
    /// `self[key]` for dicts with string keys, and for records' state dicts.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            Value::Object { state, .. } => state.get(key),
            _ => None,
        }
    }
}

/// Why a pickle was refused.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The pickle names a global outside the allowed set.
    #[error("refusing to load: the pickle references `{0}`, which is not an allowed data type (nothing was executed)")]
    Forbidden(String),
    /// The stream is malformed or uses an unsupported opcode.
    #[error("malformed pickle at byte {pos}: {message}")]
    Malformed {
        /// Byte offset.
        pos: usize,
        /// What is wrong.
        message: String,
    },
}
