//! A pickle reader that builds data and never executes anything.
//!
//! PyTorch checkpoints (`torch.save`) are pickles. Python's unpickler calls whatever callable a
//! pickle names, which is how a malicious checkpoint runs code. This reader instead knows a fixed
//! set of globals: tensor rebuilds, storage types, containers, and inert "record" classes
//! (argparse `Namespace`, omegaconf configs, Lightning's `AttributeDict`, ...) whose state it keeps
//! as data. A pickle naming any other global (`os.system`, `builtins.eval`, ...) is refused when
//! the global is read, before anything could call it.

use std::collections::HashMap;

mod value;

pub use value::{PickleError, StorageKind, TensorRef, Value};

/// How an allowed global behaves when called or instantiated.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    RebuildFromType,
    Encode,
    SetType,
    Reconstructor,
    Storage(StorageKind),
    /// A class whose instances are kept as inert records.
    Record,
    /// A class or value referenced but only used as data (e.g. `torch.Tensor` as a type tag).
    Tag,
}

/// Classes kept as inert records: configuration and metadata types found in checkpoints.
fn is_record(module: &str, name: &str) -> bool {
    match module {
        "argparse" => name == "Namespace",
        // Protocol-2 pickles name Python 3 types by their Python 2 names (int -> long, ...).
        "builtins" | "__builtin__" => matches!(
            name,
            "dict"
                | "list"
                | "tuple"
                | "int"
                | "long"
                | "float"
                | "str"
                | "unicode"
                | "xrange"
                | "bytes"
                | "bytearray"
                | "complex"
                | "slice"
                | "object"
                | "range"
                | "bool"
        ),
        "collections" => matches!(name, "defaultdict" | "Counter" | "deque"),
        "pathlib" => name.ends_with("Path"),
        "datetime" => matches!(
            name,
            "datetime" | "date" | "time" | "timedelta" | "timezone"
        ),
        "typing" => name == "Any",
        "torch.torch_version" => name == "TorchVersion",
        "numpy" => matches!(name, "dtype" | "ndarray"),
        "numpy.core.multiarray" | "numpy._core.multiarray" => {
            matches!(name, "scalar" | "_reconstruct")
        }
        m if m == "omegaconf"
            || m.starts_with("omegaconf.")
            || m.starts_with("fairseq.dataclass") =>
        {
            true
        }
        m if m.starts_with("lightning_fabric.utilities")
            || m.starts_with("pytorch_lightning.utilities") =>
        {
            name == "AttributeDict"
        }
        _ => false,
    }
}

fn classify(module: &str, name: &str) -> Option<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Global::RebuildParameter
        }
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromType,
        ("_codecs", "encode") => Global::Encode,
        ("builtins" | "__builtin__", "set" | "frozenset") => Global::SetType,
        ("copy_reg" | "copyreg", "_reconstructor") => Global::Reconstructor,
        ("torch", n) if n.ends_with("Storage") => Global::Storage(StorageKind::from_class(n)?),
        ("torch", "Tensor" | "Size") | ("torch.nn.parameter", "Parameter") => Global::Tag,
        (m, n) if is_record(m, n) => Global::Record,
        _ => return None,
    };
    Some(g)
}

/// Arena node while reading: containers refer to children by index, so the memo can share
/// (and later mutate) the same object, as Python does.
#[derive(Debug, Clone)]
enum Node {
    Leaf(Value),
    List(Vec<usize>),
    Tuple(Vec<usize>),
    Dict(Vec<(usize, usize)>),
    Set(Vec<usize>),
    Global(String, Global),
    Object {
        class: String,
        args: Vec<usize>,
        state: Option<usize>,
    },
    Alias(usize),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<usize>,
    marks: Vec<usize>,
    memo: HashMap<u64, usize>,
}

/// Parses a pickle into a [`Value`], refusing globals outside the allowed set.
pub fn parse(data: &[u8]) -> Result<Value, PickleError> {
    parse_prefix(data).map(|(v, _)| v)
}

/// Parses the pickle at the start of `data` (which may go on after its STOP): the value and the
/// bytes it took. Legacy `torch.save` files are several pickles in a row.
pub fn parse_prefix(data: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut r = Reader {
        data,
        pos: 0,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    let root = r.run()?;
    Ok((r.resolve(root, &mut Vec::new())?, r.pos))
}

impl Reader<'_> {
    fn err(&self, message: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            pos: self.pos,
            message: message.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], PickleError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| self.err("unexpected end of data"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }

    fn uint(&mut self, n: usize) -> Result<u64, PickleError> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    fn line(&mut self) -> Result<String, PickleError> {
        let start = self.pos;
        let nl = self.data[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        self.pos = start + nl + 1;
        Ok(String::from_utf8_lossy(&self.data[start..start + nl]).into_owned())
    }

    fn push(&mut self, node: Node) {
        self.nodes.push(node);
        self.stack.push(self.nodes.len() - 1);
    }

    fn pop(&mut self) -> Result<usize, PickleError> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<usize>, PickleError> {
        let m = self.marks.pop().ok_or_else(|| self.err("no mark"))?;
        if m > self.stack.len() {
            return Err(self.err("mark beyond stack"));
        }
        Ok(self.stack.split_off(m))
    }

    fn top(&self) -> Result<usize, PickleError> {
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("empty stack"))
    }

    /// Follows aliases to the node an index stands for.
    fn target(&self, mut i: usize) -> usize {
        while let Node::Alias(j) = self.nodes[i] {
            i = j;
        }
        i
    }

    fn str_of(&self, i: usize) -> Option<&str> {
        match &self.nodes[self.target(i)] {
            Node::Leaf(Value::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn int_of(&self, i: usize) -> Option<i64> {
        match &self.nodes[self.target(i)] {
            Node::Leaf(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    fn ints_of(&self, i: usize) -> Option<Vec<i64>> {
        match &self.nodes[self.target(i)] {
            Node::Tuple(items) | Node::List(items) => {
                items.iter().map(|&j| self.int_of(j)).collect()
            }
            _ => None,
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<(), PickleError> {
        let full = format!("{module}.{name}");
        let kind = classify(module, name).ok_or_else(|| PickleError::Forbidden(full.clone()))?;
        self.push(Node::Global(full, kind));
        Ok(())
    }

    /// Applies a global to arguments (REDUCE / NEWOBJ), building data instead of calling.
    fn call(&mut self, func: usize, args: usize) -> Result<(), PickleError> {
        let (name, kind) = match &self.nodes[self.target(func)] {
            Node::Global(n, k) => (n.clone(), *k),
            _ => return Err(self.err("call of a non-global")),
        };
        let argv = match &self.nodes[self.target(args)] {
            Node::Tuple(a) | Node::List(a) => a.clone(),
            _ => return Err(self.err("call arguments are not a tuple")),
        };
        let node = match kind {
            // OrderedDict() then SETITEMs, or (old protocol-2 files) OrderedDict([[k, v], ...]).
            Global::OrderedDict => {
                match argv.first().map(|&a| self.nodes[self.target(a)].clone()) {
                    Some(Node::List(pairs) | Node::Tuple(pairs)) => {
                        let mut items = Vec::with_capacity(pairs.len());
                        for p in pairs {
                            match &self.nodes[self.target(p)] {
                                Node::List(kv) | Node::Tuple(kv) if kv.len() == 2 => {
                                    items.push((kv[0], kv[1]))
                                }
                                _ => {
                                    return Err(
                                        self.err("OrderedDict item is not a (key, value) pair")
                                    )
                                }
                            }
                        }
                        Node::Dict(items)
                    }
                    _ => Node::Dict(Vec::new()),
                }
            }
            Global::SetType => match argv.first().map(|&a| self.nodes[self.target(a)].clone()) {
                Some(Node::List(items) | Node::Tuple(items) | Node::Set(items)) => Node::Set(items),
                _ => Node::Set(Vec::new()),
            },
            Global::Encode => {
                let s = argv
                    .first()
                    .and_then(|&a| self.str_of(a))
                    .ok_or_else(|| self.err("_codecs.encode without a string"))?;
                // Protocol 2 stores bytes as latin-1 text.
                Node::Leaf(Value::Bytes(s.chars().map(|c| c as u32 as u8).collect()))
            }
            Global::RebuildParameter => Node::Alias(
                *argv
                    .first()
                    .ok_or_else(|| self.err("parameter without data"))?,
            ),
            Global::RebuildFromType => {
                // (func, type, args, state): rebuild with the inner func, drop the subclass.
                let (f, a) = match argv.as_slice() {
                    [f, _, a, ..] => (*f, *a),
                    _ => return Err(self.err("_rebuild_from_type_v2 arguments")),
                };
                return self.call(f, a);
            }
            Global::RebuildTensor => self.rebuild_tensor(&argv)?,
            Global::Reconstructor => {
                let class = match argv.first().map(|&c| self.nodes[self.target(c)].clone()) {
                    Some(Node::Global(n, Global::Record)) => n,
                    _ => return Err(self.err("copyreg._reconstructor of a non-record class")),
                };
                Node::Object {
                    class,
                    args: Vec::new(),
                    state: None,
                }
            }
            Global::Record => Node::Object {
                class: name,
                args: argv,
                state: None,
            },
            Global::Storage(_) | Global::Tag => {
                return Err(PickleError::Forbidden(format!("{name} (called)")))
            }
        };
        self.push(node);
        Ok(())
    }

    fn rebuild_tensor(&self, argv: &[usize]) -> Result<Node, PickleError> {
        let bad = || self.err("malformed _rebuild_tensor_v2 arguments");
        let storage = match argv.first().map(|&s| &self.nodes[self.target(s)]) {
            Some(Node::Leaf(Value::Tensor(t))) => t.clone(),
            _ => return Err(bad()),
        };
        let offset = argv.get(1).and_then(|&i| self.int_of(i)).ok_or_else(bad)?;
        let size = argv.get(2).and_then(|&i| self.ints_of(i)).ok_or_else(bad)?;
        let stride = argv.get(3).and_then(|&i| self.ints_of(i)).ok_or_else(bad)?;
        Ok(Node::Leaf(Value::Tensor(TensorRef {
            offset,
            size,
            stride,
            ..storage
        })))
    }

    /// BINPERSID: ('storage', StorageType, key, location, numel) -> a storage (as a 1-D tensor).
    fn persistent(&mut self, pid: usize) -> Result<(), PickleError> {
        let items = match &self.nodes[self.target(pid)] {
            Node::Tuple(t) => t.clone(),
            _ => return Err(self.err("persistent id is not a tuple")),
        };
        let bad = || self.err("persistent id is not ('storage', type, key, location, numel)");
        if items.len() < 5 || self.str_of(items[0]) != Some("storage") {
            return Err(bad());
        }
        let kind = match &self.nodes[self.target(items[1])] {
            Node::Global(_, Global::Storage(k)) => *k,
            _ => return Err(bad()),
        };
        let key = self.str_of(items[2]).ok_or_else(bad)?.to_string();
        let numel = self.int_of(items[4]).ok_or_else(bad)?;
        self.push(Node::Leaf(Value::Tensor(TensorRef {
            key,
            kind,
            storage_numel: numel,
            offset: 0,
            size: vec![numel],
            stride: vec![1],
        })));
        Ok(())
    }

    fn set_items(&mut self, target: usize, pairs: &[usize]) -> Result<(), PickleError> {
        let t = self.target(target);
        let kv: Vec<(usize, usize)> = pairs
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0], c[1]))
            .collect();
        match &self.nodes[t] {
            Node::Dict(_) => {
                if let Node::Dict(items) = &mut self.nodes[t] {
                    items.extend(kv);
                }
            }
            // dict subclasses (AttributeDict, defaultdict): the items become the record's state.
            Node::Object { state: None, .. } => {
                self.nodes.push(Node::Dict(kv));
                let id = self.nodes.len() - 1;
                if let Node::Object { state, .. } = &mut self.nodes[t] {
                    *state = Some(id);
                }
            }
            Node::Object { state: Some(s), .. } => {
                let s = self.target(*s);
                match &mut self.nodes[s] {
                    Node::Dict(items) => items.extend(kv),
                    _ => return Err(self.err("SETITEMS on a record without a dict state")),
                }
            }
            _ => return Err(self.err("SETITEMS on a non-dict")),
        }
        Ok(())
    }

    fn run(&mut self) -> Result<usize, PickleError> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let t = self.top()?;
                    self.stack.push(t);
                }
                b'N' => self.push(Node::Leaf(Value::None)),
                0x88 => self.push(Node::Leaf(Value::Bool(true))),
                0x89 => self.push(Node::Leaf(Value::Bool(false))),
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.push(Node::Leaf(Value::Int(i64::from(v))));
                }
                b'K' => {
                    let v = self.uint(1)?;
                    self.push(Node::Leaf(Value::Int(v as i64)));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.push(Node::Leaf(Value::Int(v as i64)));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.uint(1)?
                    } else {
                        self.uint(4)?
                    } as usize;
                    let b = self.take(n)?.to_vec();
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let neg = b[n - 1] & 0x80 != 0;
                        let mut buf = [if neg { 0xff } else { 0 }; 8];
                        buf[..n].copy_from_slice(&b);
                        Value::Int(i64::from_le_bytes(buf))
                    } else {
                        Value::BigInt(b)
                    };
                    self.push(Node::Leaf(v));
                }
                b'I' | b'L' => {
                    let l = self.line()?;
                    let t = l.trim_end_matches('L');
                    let v = match t {
                        "01" => Value::Bool(true),
                        "00" => Value::Bool(false),
                        _ => Value::Int(t.parse().map_err(|_| self.err("bad INT"))?),
                    };
                    self.push(Node::Leaf(v));
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                    self.push(Node::Leaf(Value::Float(v)));
                }
                b'F' => {
                    let l = self.line()?;
                    let v = l.trim().parse().map_err(|_| self.err("bad FLOAT"))?;
                    self.push(Node::Leaf(Value::Float(v)));
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                    let n = match op {
                        0x8c | b'U' => self.uint(1)?,
                        0x8d => self.uint(8)?,
                        _ => self.uint(4)?,
                    } as usize;
                    let b = self.take(n)?;
                    let s = if op == b'T' || op == b'U' {
                        b.iter().map(|&c| c as char).collect()
                    } else {
                        String::from_utf8(b.to_vec())
                            .map_err(|_| self.err("invalid UTF-8 string"))?
                    };
                    self.push(Node::Leaf(Value::Str(s)));
                }
                b'B' | b'C' | 0x8e | 0x96 => {
                    let n = match op {
                        b'C' => self.uint(1)?,
                        b'B' => self.uint(4)?,
                        _ => self.uint(8)?,
                    } as usize;
                    let b = self.take(n)?.to_vec();
                    self.push(Node::Leaf(Value::Bytes(b)));
                }
                b')' => self.push(Node::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Node::Tuple(items));
                }
                b']' => self.push(Node::List(Vec::new())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Node::List(items));
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    let t = self.top()?;
                    let t = self.target(t);
                    match &mut self.nodes[t] {
                        Node::List(l) | Node::Set(l) => l.extend(items),
                        Node::Object { .. } => {}
                        _ => return Err(self.err("APPEND to a non-list")),
                    }
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    let kv = items
                        .chunks(2)
                        .filter(|c| c.len() == 2)
                        .map(|c| (c[0], c[1]))
                        .collect();
                    self.push(Node::Dict(kv));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let t = self.top()?;
                    self.set_items(t, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let t = self.top()?;
                    self.set_items(t, &items)?;
                }
                0x8f => self.push(Node::Set(Vec::new())),
                0x90 => {
                    let items = self.pop_mark()?;
                    let t = self.top()?;
                    let t = self.target(t);
                    if let Node::Set(s) = &mut self.nodes[t] {
                        s.extend(items);
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Node::Set(items));
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (m, n) = match (self.str_of(module), self.str_of(name)) {
                        (Some(m), Some(n)) => (m.to_string(), n.to_string()),
                        _ => return Err(self.err("STACK_GLOBAL needs two strings")),
                    };
                    self.global(&m, &n)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    self.call(func, args)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args)?;
                }
                0x92 => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args)?;
                }
                b'b' => {
                    let state = self.pop()?;
                    let t = self.top()?;
                    let t = self.target(t);
                    match &mut self.nodes[t] {
                        Node::Object { state: s, .. } => *s = Some(state),
                        // OrderedDict / tensors may carry extra state: keep the data, drop the state.
                        Node::Dict(_) | Node::Leaf(_) | Node::List(_) | Node::Set(_) => {}
                        _ => return Err(self.err("BUILD on an unsupported object")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    self.persistent(pid)?;
                }
                b'q' | b'r' | 0x94 | b'p' => {
                    let idx = match op {
                        b'q' => self.uint(1)?,
                        b'r' => self.uint(4)?,
                        b'p' => self
                            .line()?
                            .trim()
                            .parse()
                            .map_err(|_| self.err("bad PUT"))?,
                        _ => self.memo.len() as u64,
                    };
                    let t = self.top()?;
                    self.memo.insert(idx, t);
                }
                b'h' | b'j' | b'g' => {
                    let idx = match op {
                        b'h' => self.uint(1)?,
                        b'j' => self.uint(4)?,
                        _ => self
                            .line()?
                            .trim()
                            .parse()
                            .map_err(|_| self.err("bad GET"))?,
                    };
                    let t = *self
                        .memo
                        .get(&idx)
                        .ok_or_else(|| self.err(format!("memo {idx} not set")))?;
                    self.stack.push(t);
                }
                other => return Err(self.err(format!("unsupported opcode 0x{other:02x}"))),
            }
        }
    }

    /// Converts the arena graph under `i` into an owned tree; a reference to an enclosing node
    /// becomes [`Value::Cycle`].
    fn resolve(&self, i: usize, path: &mut Vec<usize>) -> Result<Value, PickleError> {
        let i = self.target(i);
        if path.contains(&i) {
            return Ok(Value::Cycle);
        }
        if path.len() > 200 {
            return Err(self.err("nesting deeper than 200"));
        }
        path.push(i);
        let all = |items: &[usize], path: &mut Vec<usize>| {
            items
                .iter()
                .map(|&j| self.resolve(j, path))
                .collect::<Result<Vec<_>, _>>()
        };
        let v = match &self.nodes[i] {
            Node::Leaf(v) => v.clone(),
            Node::Alias(_) => Value::None,
            Node::List(l) => Value::List(all(l, path)?),
            Node::Tuple(l) => Value::Tuple(all(l, path)?),
            Node::Set(l) => Value::Set(all(l, path)?),
            Node::Dict(kv) => {
                let mut items = Vec::with_capacity(kv.len());
                for &(k, v) in kv {
                    items.push((self.resolve(k, path)?, self.resolve(v, path)?));
                }
                Value::Dict(items)
            }
            Node::Global(name, _) => Value::Global(name.clone()),
            Node::Object { class, args, state } => Value::Object {
                class: class.clone(),
                args: all(args, path)?,
                state: Box::new(match state {
                    Some(s) => self.resolve(*s, path)?,
                    None => Value::None,
                }),
            },
        };
        path.pop();
        Ok(v)
    }
}
