//! Element types, reduction operators and the reduction kernels.

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

/// The element type of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum DType {
    F32 = 1,
    F64 = 2,
    F16 = 3,
    BF16 = 4,
    I32 = 5,
    I64 = 6,
}

impl DType {
    pub const ALL: [DType; 6] = [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I32, DType::I64];

    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
            DType::F16 | DType::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float",
            DType::F64 => "double",
            DType::F16 => "half",
            DType::BF16 => "bfloat16",
            DType::I32 => "int32",
            DType::I64 => "int64",
        }
    }

    pub(crate) fn from_u8(v: u8) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u8 == v)
    }
}

impl std::str::FromStr for DType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "f32" | "float" | "float32" => DType::F32,
            "f64" | "double" | "float64" => DType::F64,
            "f16" | "half" | "float16" => DType::F16,
            "bf16" | "bfloat16" => DType::BF16,
            "i32" | "int" | "int32" => DType::I32,
            "i64" | "long" | "int64" => DType::I64,
            _ => return Err(format!("`{s}` is not a dtype: use f32, f64, f16, bf16, i32 or i64")),
        })
    }
}

/// How an all-reduce or reduce-scatter combines the ranks' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum ReduceOp {
    Sum = 1,
    /// The sum divided by the world size (integers divide and truncate toward zero, as NCCL's `ncclAvg`).
    Mean = 2,
    Max = 3,
    Min = 4,
    Product = 5,
}

impl ReduceOp {
    pub const ALL: [ReduceOp; 5] = [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min, ReduceOp::Product];

    pub(crate) fn from_u8(v: u8) -> Option<ReduceOp> {
        ReduceOp::ALL.into_iter().find(|d| *d as u8 == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Mean => "mean",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::Product => "prod",
        }
    }
}

impl std::str::FromStr for ReduceOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "sum" => ReduceOp::Sum,
            "mean" | "avg" => ReduceOp::Mean,
            "max" => ReduceOp::Max,
            "min" => ReduceOp::Min,
            "prod" | "product" => ReduceOp::Product,
            _ => return Err(format!("`{s}` is not a reduce op: use sum, mean, max, min or prod")),
        })
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A type a collective can carry: `f32`, `f64`, `f16`, `bf16`, `i32`, `i64`.
pub trait Element: sealed::Sealed + Copy + Send + Sync + PartialOrd + std::fmt::Debug + 'static {
    const DTYPE: DType;
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    /// `self / n` for the mean.
    fn div_count(self, n: usize) -> Self;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

macro_rules! element {
    ($t:ty, $d:expr, |$a:ident, $b:ident| add: $add:expr, mul: $mul:expr, |$x:ident, $n:ident| div: $div:expr, from: |$v:ident| $from:expr, to: |$y:ident| $to:expr) => {
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn add(self, $b: Self) -> Self {
                let $a = self;
                $add
            }
            #[inline(always)]
            fn mul(self, $b: Self) -> Self {
                let $a = self;
                $mul
            }
            #[inline(always)]
            fn div_count(self, $n: usize) -> Self {
                let $x = self;
                $div
            }
            #[inline(always)]
            fn from_f64($v: f64) -> Self {
                $from
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                let $y = self;
                $to
            }
        }
    };
}

element!(f32, DType::F32, |a, b| add: a + b, mul: a * b, |x, n| div: x / n as f32, from: |v| v as f32, to: |y| y as f64);
element!(f64, DType::F64, |a, b| add: a + b, mul: a * b, |x, n| div: x / n as f64, from: |v| v, to: |y| y);
element!(i32, DType::I32, |a, b| add: a.wrapping_add(b), mul: a.wrapping_mul(b), |x, n| div: x / n as i32, from: |v| v as i32, to: |y| y as f64);
element!(i64, DType::I64, |a, b| add: a.wrapping_add(b), mul: a.wrapping_mul(b), |x, n| div: x / n as i64, from: |v| v as i64, to: |y| y as f64);
// Half types reduce as IEEE half arithmetic does: each operation is done exactly in f32 and
// rounded once to the half type, which is what NCCL and gloo give.
element!(f16, DType::F16, |a, b| add: f16::from_f32(a.to_f32() + b.to_f32()), mul: f16::from_f32(a.to_f32() * b.to_f32()),
    |x, n| div: f16::from_f32(x.to_f32() / n as f32), from: |v| f16::from_f64(v), to: |y| y.to_f64());
element!(bf16, DType::BF16, |a, b| add: bf16::from_f32(a.to_f32() + b.to_f32()), mul: bf16::from_f32(a.to_f32() * b.to_f32()),
    |x, n| div: bf16::from_f32(x.to_f32() / n as f32), from: |v| bf16::from_f64(v), to: |y| y.to_f64());

/// `dst[i] = dst[i] (op) src[i]`. The loops are written so that LLVM vectorizes them
/// (`max`/`min` as compare-and-select, which maps onto `maxps`/`minps`).
#[inline]
pub fn reduce_slice<T: Element>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len());
    match op {
        ReduceOp::Sum | ReduceOp::Mean => dst.iter_mut().zip(src).for_each(|(a, b)| *a = a.add(*b)),
        ReduceOp::Product => dst.iter_mut().zip(src).for_each(|(a, b)| *a = a.mul(*b)),
        ReduceOp::Max => dst.iter_mut().zip(src).for_each(|(a, b)| *a = if *b > *a { *b } else { *a }),
        ReduceOp::Min => dst.iter_mut().zip(src).for_each(|(a, b)| *a = if *b < *a { *b } else { *a }),
    }
}

/// The final step of a mean: divide by the world size.
pub fn finish_mean<T: Element>(buf: &mut [T], world_size: usize) {
    buf.iter_mut().for_each(|x| *x = x.div_count(world_size));
}

/// Reinterprets bytes as elements. `bytes` must be aligned for `T` and a whole number of elements.
///
/// # Safety
/// The bytes must come from a `[T]` (or be any bit pattern valid for `T`, which holds for every
/// [`Element`]) and be aligned.
pub(crate) unsafe fn cast_mut<T: Element>(bytes: &mut [u8]) -> &mut [T] {
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    std::slice::from_raw_parts_mut(bytes.as_mut_ptr() as *mut T, bytes.len() / std::mem::size_of::<T>())
}

/// # Safety
/// As [`cast_mut`].
pub(crate) unsafe fn cast<T: Element>(bytes: &[u8]) -> &[T] {
    debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
    std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / std::mem::size_of::<T>())
}

/// Calls `$f::<T>` with the Rust type of a [`DType`].
#[macro_export]
#[doc(hidden)]
macro_rules! with_dtype {
    ($dtype:expr, $f:ident ( $($arg:expr),* )) => {
        match $dtype {
            $crate::DType::F32 => $f::<f32>($($arg),*),
            $crate::DType::F64 => $f::<f64>($($arg),*),
            $crate::DType::F16 => $f::<half::f16>($($arg),*),
            $crate::DType::BF16 => $f::<half::bf16>($($arg),*),
            $crate::DType::I32 => $f::<i32>($($arg),*),
            $crate::DType::I64 => $f::<i64>($($arg),*),
        }
    };
}

/// `dst (op)= src` on raw bytes of one dtype (both aligned, same length).
pub(crate) fn reduce_bytes(dtype: DType, op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    fn go<T: Element>(op: ReduceOp, dst: &mut [u8], src: &[u8]) {
        // SAFETY: callers pass element-aligned byte views of buffers of this dtype.
        unsafe { reduce_slice::<T>(op, cast_mut(dst), cast(src)) }
    }
    with_dtype!(dtype, go(op, dst, src))
}

pub(crate) fn finish_mean_bytes(dtype: DType, buf: &mut [u8], world_size: usize) {
    fn go<T: Element>(buf: &mut [u8], n: usize) {
        // SAFETY: as in `reduce_bytes`.
        unsafe { finish_mean::<T>(cast_mut(buf), n) }
    }
    with_dtype!(dtype, go(buf, world_size))
}

/// The `i`-th of `n` nearly equal parts of `0..len` (the first `len % n` parts are one longer).
/// Every backend splits buffers this way, so `reduce_scatter` gives rank `i` exactly this range.
pub fn chunk_range(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    let base = len / n;
    let extra = len % n;
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// A read-only, type-erased view of a buffer of elements.
#[derive(Debug, Clone, Copy)]
pub struct Buf<'a> {
    pub(crate) dtype: DType,
    pub(crate) bytes: &'a [u8],
}

/// A writable, type-erased view of a buffer of elements.
#[derive(Debug)]
pub struct BufMut<'a> {
    pub(crate) dtype: DType,
    pub(crate) bytes: &'a mut [u8],
}

impl<'a> Buf<'a> {
    pub fn new<T: Element>(s: &'a [T]) -> Self {
        // SAFETY: every Element is plain old data without padding.
        let bytes = unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) };
        Buf { dtype: T::DTYPE, bytes }
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

impl<'a> BufMut<'a> {
    pub fn new<T: Element>(s: &'a mut [T]) -> Self {
        // SAFETY: as in `Buf::new`; every bit pattern is a valid Element, so writes through the
        // bytes keep the slice valid.
        let bytes = unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s)) };
        BufMut { dtype: T::DTYPE, bytes }
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes
    }
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
    pub fn reborrow(&mut self) -> BufMut<'_> {
        BufMut { dtype: self.dtype, bytes: self.bytes }
    }
    pub fn as_buf(&self) -> Buf<'_> {
        Buf { dtype: self.dtype, bytes: self.bytes }
    }
}

impl<'a, T: Element> From<&'a [T]> for Buf<'a> {
    fn from(s: &'a [T]) -> Self {
        Buf::new(s)
    }
}
impl<'a, T: Element> From<&'a Vec<T>> for Buf<'a> {
    fn from(s: &'a Vec<T>) -> Self {
        Buf::new(s)
    }
}
impl<'a, T: Element> From<&'a mut [T]> for BufMut<'a> {
    fn from(s: &'a mut [T]) -> Self {
        BufMut::new(s)
    }
}
impl<'a, T: Element> From<&'a mut Vec<T>> for BufMut<'a> {
    fn from(s: &'a mut Vec<T>) -> Self {
        BufMut::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range_exactly() {
        for len in 0..40 {
            for n in 1..9 {
                let mut next = 0;
                for i in 0..n {
                    let r = chunk_range(len, n, i);
                    assert_eq!(r.start, next);
                    assert!(r.len() == len / n || r.len() == len / n + 1);
                    next = r.end;
                }
                assert_eq!(next, len);
            }
        }
    }

    #[test]
    fn half_reductions_round_once() {
        let mut a = [f16::from_f32(1.0), f16::from_f32(2048.0)];
        reduce_slice(ReduceOp::Sum, &mut a, &[f16::from_f32(0.5), f16::from_f32(1.0)]);
        assert_eq!(a[0].to_f32(), 1.5);
        assert_eq!(a[1].to_f32(), 2048.0, "2049 is not an f16; round to even");
        let mut b = [3i32, -7];
        reduce_slice(ReduceOp::Max, &mut b, &[5, -9]);
        assert_eq!(b, [5, -7]);
        finish_mean(&mut b, 2);
        assert_eq!(b, [2, -3], "integer means truncate toward zero");
    }

    #[test]
    fn names_parse() {
        assert_eq!("bf16".parse::<DType>().unwrap(), DType::BF16);
        assert!("u8".parse::<DType>().unwrap_err().contains("use f32"));
        assert_eq!("avg".parse::<ReduceOp>().unwrap(), ReduceOp::Mean);
    }
}
