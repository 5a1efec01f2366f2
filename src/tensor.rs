//! Tensor views over borrowed memory, and owned buffers for module state.
//!
//! A [`Tensor`] (read-only) or [`TensorMut`] (writable) is a slice of one of the four element
//! types plus a logical shape and element strides (non-negative). Normalisation ops treat dim 1
//! as the channel dim (dim 0 as the batch). Two layouts are fast paths:
//!
//! * **contiguous** (row-major, e.g. NCHW), and
//! * **channels-last** (NHWC / NDHWC: the channel dim has stride 1, then the spatial dims in
//!   order, then the batch).
//!
//! Any other non-negative strides are handled correctly through a staging copy. A writable
//! view whose strides would make two logical elements share memory is rejected.

use crate::dtype::{DType, Element};
use crate::error::{Error, ErrorKind, Result, fmt_shape};
use half::{bf16, f16};

/// Borrowed, read-only element data of one of the four dtypes.
#[derive(Clone, Copy, Debug)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
}

/// Borrowed, writable element data of one of the four dtypes.
#[derive(Debug)]
pub enum HostDataMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
}

/// Owned element data (module parameters and buffers, saved statistics).
#[derive(Clone, Debug, PartialEq)]
pub enum Buffer {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

/// `r` clamped to `0..n` (an empty range at `n` when it starts past it).
fn clamped(r: std::ops::Range<usize>, n: usize) -> std::ops::Range<usize> {
    let start = r.start.min(n);
    start..r.end.clamp(start, n)
}

macro_rules! dispatch_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            HostData::F32($v) => $body,
            HostData::F64($v) => $body,
            HostData::F16($v) => $body,
            HostData::BF16($v) => $body,
        }
    };
}

impl<'a> HostData<'a> {
    pub fn dtype(&self) -> DType {
        match self {
            HostData::F32(_) => DType::F32,
            HostData::F64(_) => DType::F64,
            HostData::F16(_) => DType::F16,
            HostData::BF16(_) => DType::BF16,
        }
    }
    pub fn len(&self) -> usize {
        dispatch_data!(self, s => s.len())
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Element `i` converted to f64 (exact for every dtype).
    pub fn get_f64(&self, i: usize) -> f64 {
        dispatch_data!(self, s => s[i].to_f64())
    }
    /// All elements converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        dispatch_data!(self, s => s.iter().map(|v| v.to_f64()).collect())
    }
    /// A copy of the elements in a buffer of their own, in their dtype.
    pub fn to_buffer(&self) -> Buffer {
        match self {
            HostData::F32(s) => Buffer::F32(s.to_vec()),
            HostData::F64(s) => Buffer::F64(s.to_vec()),
            HostData::F16(s) => Buffer::F16(s.to_vec()),
            HostData::BF16(s) => Buffer::BF16(s.to_vec()),
        }
    }
    /// The address of the first element (placement checks in tests).
    #[cfg(test)]
    pub(crate) fn addr(&self) -> usize {
        dispatch_data!(self, s => s.as_ptr() as usize)
    }
}

impl HostDataMut<'_> {
    pub fn dtype(&self) -> DType {
        self.reborrow().dtype()
    }
    pub fn len(&self) -> usize {
        self.reborrow().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A read-only view of the same data.
    pub fn reborrow(&self) -> HostData<'_> {
        match self {
            HostDataMut::F32(s) => HostData::F32(s),
            HostDataMut::F64(s) => HostData::F64(s),
            HostDataMut::F16(s) => HostData::F16(s),
            HostDataMut::BF16(s) => HostData::BF16(s),
        }
    }
    /// A shorter-lived writable view of the same data.
    pub fn reborrow_mut(&mut self) -> HostDataMut<'_> {
        match self {
            HostDataMut::F32(s) => HostDataMut::F32(s),
            HostDataMut::F64(s) => HostDataMut::F64(s),
            HostDataMut::F16(s) => HostDataMut::F16(s),
            HostDataMut::BF16(s) => HostDataMut::BF16(s),
        }
    }
    /// Stores `v` (rounded to the element type) at element `i`.
    pub fn set_f64(&mut self, i: usize, v: f64) {
        match self {
            HostDataMut::F32(s) => s[i] = v as f32,
            HostDataMut::F64(s) => s[i] = v,
            HostDataMut::F16(s) => s[i] = f16::from_f64(v),
            HostDataMut::BF16(s) => s[i] = bf16::from_f64(v),
        }
    }
    /// Stores `values` (rounded) from element 0 on; as many as fit.
    pub fn copy_from_f64(&mut self, values: &[f64]) {
        fn each<T>(s: &mut [T], values: &[f64], f: impl Fn(f64) -> T) {
            for (o, &v) in s.iter_mut().zip(values) {
                *o = f(v);
            }
        }
        match self {
            HostDataMut::F32(s) => each(s, values, |v| v as f32),
            HostDataMut::F64(s) => each(s, values, |v| v),
            HostDataMut::F16(s) => each(s, values, f16::from_f64),
            HostDataMut::BF16(s) => each(s, values, bf16::from_f64),
        }
    }
}

impl Buffer {
    /// A buffer of `len` elements of `dtype`, all equal to `value`.
    pub fn filled(dtype: DType, len: usize, value: f64) -> Buffer {
        match dtype {
            DType::F32 => Buffer::F32(vec![value as f32; len]),
            DType::F64 => Buffer::F64(vec![value; len]),
            DType::F16 => Buffer::F16(vec![f16::from_f64(value); len]),
            DType::BF16 => Buffer::BF16(vec![bf16::from_f64(value); len]),
        }
    }
    /// A buffer of `dtype` holding `values` (rounded).
    pub fn from_f64(dtype: DType, values: &[f64]) -> Buffer {
        let mut b = Buffer::filled(dtype, values.len(), 0.0);
        b.as_data_mut().copy_from_f64(values);
        b
    }
    pub fn dtype(&self) -> DType {
        self.as_data().dtype()
    }
    pub fn len(&self) -> usize {
        self.as_data().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn as_data(&self) -> HostData<'_> {
        match self {
            Buffer::F32(v) => HostData::F32(v),
            Buffer::F64(v) => HostData::F64(v),
            Buffer::F16(v) => HostData::F16(v),
            Buffer::BF16(v) => HostData::BF16(v),
        }
    }
    pub fn as_data_mut(&mut self) -> HostDataMut<'_> {
        match self {
            Buffer::F32(v) => HostDataMut::F32(v),
            Buffer::F64(v) => HostDataMut::F64(v),
            Buffer::F16(v) => HostDataMut::F16(v),
            Buffer::BF16(v) => HostDataMut::BF16(v),
        }
    }
    /// A view of the elements `r` of the buffer (clamped to its length).
    pub fn range_data(&self, r: std::ops::Range<usize>) -> HostData<'_> {
        let r = clamped(r, self.len());
        match self {
            Buffer::F32(v) => HostData::F32(&v[r]),
            Buffer::F64(v) => HostData::F64(&v[r]),
            Buffer::F16(v) => HostData::F16(&v[r]),
            Buffer::BF16(v) => HostData::BF16(&v[r]),
        }
    }
    /// A writable view of the elements `r` of the buffer (clamped to its length).
    pub fn range_data_mut(&mut self, r: std::ops::Range<usize>) -> HostDataMut<'_> {
        let r = clamped(r, self.len());
        match self {
            Buffer::F32(v) => HostDataMut::F32(&mut v[r]),
            Buffer::F64(v) => HostDataMut::F64(&mut v[r]),
            Buffer::F16(v) => HostDataMut::F16(&mut v[r]),
            Buffer::BF16(v) => HostDataMut::BF16(&mut v[r]),
        }
    }
    /// The index of the first element whose address is a multiple of `align` bytes (a power of
    /// two), or the length when there is none.
    pub fn first_aligned(&self, align: usize) -> usize {
        let off = match self {
            Buffer::F32(v) => v.as_ptr().align_offset(align),
            Buffer::F64(v) => v.as_ptr().align_offset(align),
            Buffer::F16(v) => v.as_ptr().align_offset(align),
            Buffer::BF16(v) => v.as_ptr().align_offset(align),
        };
        off.min(self.len())
    }
    /// All elements converted to f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        self.as_data().to_f64_vec()
    }
    /// A contiguous 1-D view of the whole buffer.
    pub fn view(&self) -> Tensor<'_> {
        let n = self.len();
        Tensor {
            data: self.as_data(),
            shape: vec![n],
            strides: vec![1],
        }
    }
    /// A writable contiguous 1-D view of the whole buffer.
    pub fn view_mut(&mut self) -> TensorMut<'_> {
        let n = self.len();
        TensorMut {
            data: self.as_data_mut(),
            shape: vec![n],
            strides: vec![1],
        }
    }
    /// The buffer converted to `dtype` (rounding where needed).
    pub fn cast(&self, dtype: DType) -> Buffer {
        Buffer::from_f64(dtype, &self.to_f64_vec())
    }
}

/// Row-major (contiguous) strides of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1usize;
    for i in (0..shape.len()).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(shape[i].max(1));
    }
    strides
}

/// Channels-last strides of a logical `(N, C, *S)` shape: C has stride 1, then S, then N.
/// For rank < 3 this is the contiguous layout.
pub fn channels_last_strides(shape: &[usize]) -> Vec<usize> {
    if shape.len() < 3 {
        return contiguous_strides(shape);
    }
    let rank = shape.len();
    let mut strides = vec![0; rank];
    let mut acc = 1usize;
    strides[1] = 1;
    acc = acc.saturating_mul(shape[1].max(1));
    for i in (2..rank).rev() {
        strides[i] = acc;
        acc = acc.saturating_mul(shape[i].max(1));
    }
    strides[0] = acc;
    strides
}

/// Memory layout of a tensor, as far as the fast paths care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Row-major, dense (NCHW for 4-D).
    Contiguous,
    /// Channels-last, dense (NHWC / NDHWC; NLC for 3-D).
    ChannelsLast,
    /// Anything else (handled through a staging copy).
    Strided,
}

fn strides_match(shape: &[usize], strides: &[usize], want: &[usize]) -> bool {
    shape
        .iter()
        .zip(strides.iter().zip(want))
        .all(|(&d, (&s, &w))| d <= 1 || s == w)
}

/// Element count of `shape`, or an overflow error.
pub fn checked_numel(op: &str, operand: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Overflow,
                op,
                operand,
                "an element count that fits in usize",
                format!("shape {}", fmt_shape(shape)),
            )
        })
}

fn validate_view(op: &str, shape: &[usize], strides: &[usize], len: usize) -> Result<()> {
    if strides.len() != shape.len() {
        return Err(Error::shape(
            op,
            "strides",
            format!(
                "{} strides (one per dim of shape {})",
                shape.len(),
                fmt_shape(shape)
            ),
            format!("{} strides", strides.len()),
        ));
    }
    let numel = checked_numel(op, "shape", shape)?;
    if numel == 0 {
        return Ok(());
    }
    let mut max_off = 0usize;
    for (&d, &s) in shape.iter().zip(strides) {
        let term = (d - 1).checked_mul(s).ok_or_else(|| {
            Error::new(
                ErrorKind::Overflow,
                op,
                "strides",
                "offsets that fit in usize",
                "an overflow",
            )
        })?;
        max_off = max_off.checked_add(term).ok_or_else(|| {
            Error::new(
                ErrorKind::Overflow,
                op,
                "strides",
                "offsets that fit in usize",
                "an overflow",
            )
        })?;
    }
    if max_off >= len {
        return Err(Error::new(
            ErrorKind::BufferTooSmall,
            op,
            "data",
            format!(
                "at least {} elements for shape {} with strides {}",
                max_off + 1,
                fmt_shape(shape),
                fmt_shape(strides)
            ),
            format!("{len} elements"),
        ));
    }
    Ok(())
}

/// Whether distinct logical indices of `shape`/`strides` always map to distinct offsets.
/// Sufficient test: sorted by stride, each stride exceeds the span of all smaller dims.
fn is_non_overlapping(shape: &[usize], strides: &[usize]) -> bool {
    let mut dims: Vec<(usize, usize)> = shape
        .iter()
        .zip(strides)
        .filter(|(d, _)| **d > 1)
        .map(|(&d, &s)| (s, d))
        .collect();
    dims.sort_unstable();
    let mut span = 0usize; // largest offset reachable with the dims seen so far
    for (s, d) in dims {
        if s <= span || s == 0 {
            return false;
        }
        span = span.saturating_add((d - 1).saturating_mul(s));
    }
    true
}

/// Read-only tensor view.
#[derive(Clone, Debug)]
pub struct Tensor<'a> {
    data: HostData<'a>,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Writable tensor view. Its strides never alias two logical elements.
#[derive(Debug)]
pub struct TensorMut<'a> {
    data: HostDataMut<'a>,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Conversion of typed slices into [`HostData`] (implemented for the four element types).
pub trait IntoHostData<'a> {
    fn into_host_data(self) -> HostData<'a>;
}
/// Conversion of typed mutable slices into [`HostDataMut`].
pub trait IntoHostDataMut<'a> {
    fn into_host_data_mut(self) -> HostDataMut<'a>;
}

impl<'a, T: ElementData> IntoHostData<'a> for &'a [T] {
    fn into_host_data(self) -> HostData<'a> {
        T::wrap(self)
    }
}
impl<'a, T: ElementData> IntoHostData<'a> for &'a Vec<T> {
    fn into_host_data(self) -> HostData<'a> {
        T::wrap(self.as_slice())
    }
}
impl<'a, T: ElementData> IntoHostDataMut<'a> for &'a mut [T] {
    fn into_host_data_mut(self) -> HostDataMut<'a> {
        T::wrap_mut(self)
    }
}
impl<'a, T: ElementData> IntoHostDataMut<'a> for &'a mut Vec<T> {
    fn into_host_data_mut(self) -> HostDataMut<'a> {
        T::wrap_mut(self.as_mut_slice())
    }
}

impl<'a> IntoHostData<'a> for HostData<'a> {
    fn into_host_data(self) -> HostData<'a> {
        self
    }
}
impl<'a> IntoHostDataMut<'a> for HostDataMut<'a> {
    fn into_host_data_mut(self) -> HostDataMut<'a> {
        self
    }
}

impl<'a> Tensor<'a> {
    /// A contiguous (row-major) view of `data` with `shape`.
    pub fn new(data: impl IntoHostData<'a>, shape: &[usize]) -> Result<Tensor<'a>> {
        Self::with_strides(data, shape, &contiguous_strides(shape))
    }
    /// A view with explicit element strides.
    pub fn with_strides(
        data: impl IntoHostData<'a>,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<Tensor<'a>> {
        let data = data.into_host_data();
        validate_view("Tensor::with_strides", shape, strides, data.len())?;
        Ok(Tensor {
            data,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        })
    }
    /// A channels-last view: `shape` is the logical `(N, C, *S)` shape, memory is `(N, *S, C)`.
    pub fn channels_last(data: impl IntoHostData<'a>, shape: &[usize]) -> Result<Tensor<'a>> {
        Self::with_strides(data, shape, &channels_last_strides(shape))
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn data(&self) -> HostData<'a> {
        self.data
    }
    pub fn layout(&self) -> Layout {
        layout_of(&self.shape, &self.strides)
    }
    /// The typed slice, if the dtype is `T`.
    pub fn typed<T: ElementData>(&self) -> Option<&'a [T]> {
        T::slice_of(self.data)
    }
    /// Element at logical index `idx` converted to f64.
    pub fn get_f64(&self, idx: &[usize]) -> f64 {
        let off: usize = idx.iter().zip(&self.strides).map(|(i, s)| i * s).sum();
        self.data.get_f64(off)
    }
    /// All elements in logical row-major order, as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        strided_to_f64(self.data, &self.shape, &self.strides)
    }
    /// `f(element)` of every element in logical row-major order, as f64 (no temporary vector).
    pub(crate) fn for_each_f64(&self, f: impl FnMut(f64)) {
        strided_for_each(self.data, &self.shape, &self.strides, f)
    }
    /// `out[i] = f(element i)` in logical row-major order, for the first `out.len()` elements
    /// (no temporary vector: per-call conversions on a hot path).
    pub(crate) fn map_into<X>(&self, out: &mut [X], f: impl Fn(f64) -> X) {
        let mut slots = out.iter_mut();
        strided_for_each(self.data, &self.shape, &self.strides, |v| {
            if let Some(slot) = slots.next() {
                *slot = f(v);
            }
        });
    }
    /// The same elements with a leading dim of size 1 (an unbatched input made batched).
    pub fn unsqueeze0(&self) -> Tensor<'a> {
        let mut shape = vec![1];
        shape.extend_from_slice(&self.shape);
        let mut strides = vec![self.numel().max(1)];
        strides.extend_from_slice(&self.strides);
        Tensor {
            data: self.data,
            shape,
            strides,
        }
    }
    /// The same data reinterpreted with a new shape; requires a contiguous view.
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor<'a>> {
        if self.layout() != Layout::Contiguous {
            return Err(Error::layout(
                "reshape",
                "tensor",
                "a contiguous tensor",
                "a strided tensor",
            ));
        }
        let n = checked_numel("reshape", "shape", shape)?;
        if n != self.numel() {
            return Err(Error::shape(
                "reshape",
                "shape",
                format!("{} elements", self.numel()),
                format!("{} elements in {}", n, fmt_shape(shape)),
            ));
        }
        Tensor::new(self.data, shape)
    }
}

impl<'a> TensorMut<'a> {
    /// A contiguous (row-major) writable view of `data` with `shape`.
    pub fn new(data: impl IntoHostDataMut<'a>, shape: &[usize]) -> Result<TensorMut<'a>> {
        Self::with_strides(data, shape, &contiguous_strides(shape))
    }
    /// A writable view with explicit element strides; overlapping strides are rejected.
    pub fn with_strides(
        data: impl IntoHostDataMut<'a>,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<TensorMut<'a>> {
        let data = data.into_host_data_mut();
        validate_view("TensorMut::with_strides", shape, strides, data.len())?;
        if !is_non_overlapping(shape, strides) {
            return Err(Error::layout(
                "TensorMut::with_strides",
                "strides",
                "strides under which no two elements share memory",
                format!(
                    "strides {} for shape {}",
                    fmt_shape(strides),
                    fmt_shape(shape)
                ),
            ));
        }
        Ok(TensorMut {
            data,
            shape: shape.to_vec(),
            strides: strides.to_vec(),
        })
    }
    /// A channels-last writable view (logical `(N, C, *S)`, memory `(N, *S, C)`).
    pub fn channels_last(data: impl IntoHostDataMut<'a>, shape: &[usize]) -> Result<TensorMut<'a>> {
        Self::with_strides(data, shape, &channels_last_strides(shape))
    }
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn layout(&self) -> Layout {
        layout_of(&self.shape, &self.strides)
    }
    pub fn data_mut(&mut self) -> HostDataMut<'_> {
        self.data.reborrow_mut()
    }
    /// A read-only view of the same elements.
    pub fn as_tensor(&self) -> Tensor<'_> {
        Tensor {
            data: self.data.reborrow(),
            shape: self.shape.clone(),
            strides: self.strides.clone(),
        }
    }
    /// The same elements with a leading dim of size 1.
    pub fn unsqueeze0(&mut self) -> TensorMut<'_> {
        let mut shape = vec![1];
        shape.extend_from_slice(&self.shape);
        let mut strides = vec![self.numel().max(1)];
        strides.extend_from_slice(&self.strides);
        TensorMut {
            data: self.data.reborrow_mut(),
            shape,
            strides,
        }
    }
    /// A shorter-lived writable view of the same elements.
    pub fn reborrow(&mut self) -> TensorMut<'_> {
        TensorMut {
            data: self.data.reborrow_mut(),
            shape: self.shape.clone(),
            strides: self.strides.clone(),
        }
    }
    /// The typed slice, if the dtype is `T`.
    pub fn typed_mut<T: ElementData>(&mut self) -> Option<&mut [T]> {
        T::slice_of_mut(self.data.reborrow_mut())
    }
    /// Sets the element at flat logical index `i` (row-major) to `v`, rounded.
    pub fn set_linear_f64(&mut self, i: usize, v: f64) {
        let off = linear_to_offset(&self.shape, &self.strides, i);
        self.data.set_f64(off, v);
    }
    /// All elements in logical row-major order, as f64.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        strided_to_f64(self.data.reborrow(), &self.shape, &self.strides)
    }
    /// The element at flat logical index `i` (row-major), as f64.
    pub fn get_linear_f64(&self, i: usize) -> f64 {
        let off = linear_to_offset(&self.shape, &self.strides, i);
        self.data.reborrow().get_f64(off)
    }
}

/// The elements of a view in logical row-major order, as f64: one dtype dispatch and a plain
/// slice loop when the view is contiguous (per-channel parameters, on every op call), the
/// offset walk otherwise.
fn strided_to_f64(data: HostData<'_>, shape: &[usize], strides: &[usize]) -> Vec<f64> {
    let mut out = Vec::with_capacity(shape.iter().product());
    strided_for_each(data, shape, strides, |v| out.push(v));
    out
}

/// `f` of every element in logical row-major order, as f64.
fn strided_for_each(
    data: HostData<'_>,
    shape: &[usize],
    strides: &[usize],
    mut f: impl FnMut(f64),
) {
    let numel: usize = shape.iter().product();
    if strides_match(shape, strides, &contiguous_strides(shape)) {
        return dispatch_data!(data, s => s[..numel].iter().for_each(|v| f(v.to_f64())));
    }
    for_each_offset(shape, strides, |off| f(data.get_f64(off)));
}

/// Offset of flat row-major index `i` under `strides`.
pub(crate) fn linear_to_offset(shape: &[usize], strides: &[usize], mut i: usize) -> usize {
    if let [_] = shape {
        // a per-channel vector: no division
        return i * strides[0];
    }
    let mut off = 0;
    for d in (0..shape.len()).rev() {
        let ext = shape[d].max(1);
        off += (i % ext) * strides[d];
        i /= ext;
    }
    off
}

fn layout_of(shape: &[usize], strides: &[usize]) -> Layout {
    if strides_match(shape, strides, &contiguous_strides(shape)) {
        Layout::Contiguous
    } else if shape.len() >= 3 && strides_match(shape, strides, &channels_last_strides(shape)) {
        Layout::ChannelsLast
    } else {
        Layout::Strided
    }
}

/// Calls `f(offset)` for every logical index in row-major order.
pub(crate) fn for_each_offset(shape: &[usize], strides: &[usize], mut f: impl FnMut(usize)) {
    let numel: usize = shape.iter().product();
    if numel == 0 {
        return;
    }
    let rank = shape.len();
    if rank == 0 {
        f(0);
        return;
    }
    let mut idx = vec![0usize; rank];
    let mut off = 0usize;
    let last = rank - 1;
    loop {
        for i in 0..shape[last] {
            f(off + i * strides[last]);
        }
        // carry into the outer dims
        let mut d = last;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            off += strides[d];
            if idx[d] < shape[d] {
                break;
            }
            off -= idx[d] * strides[d];
            idx[d] = 0;
        }
    }
}

/// Typed access to [`HostData`] for the four element types.
pub trait ElementData: Element {
    fn wrap(s: &[Self]) -> HostData<'_>;
    fn wrap_mut(s: &mut [Self]) -> HostDataMut<'_>;
    fn slice_of(d: HostData<'_>) -> Option<&[Self]>;
    fn slice_of_mut(d: HostDataMut<'_>) -> Option<&mut [Self]>;
}

macro_rules! impl_element_data {
    ($t:ty, $v:ident) => {
        impl ElementData for $t {
            fn wrap(s: &[Self]) -> HostData<'_> {
                HostData::$v(s)
            }
            fn wrap_mut(s: &mut [Self]) -> HostDataMut<'_> {
                HostDataMut::$v(s)
            }
            fn slice_of(d: HostData<'_>) -> Option<&[Self]> {
                match d {
                    HostData::$v(s) => Some(s),
                    _ => None,
                }
            }
            fn slice_of_mut(d: HostDataMut<'_>) -> Option<&mut [Self]> {
                match d {
                    HostDataMut::$v(s) => Some(s),
                    _ => None,
                }
            }
        }
    };
}
impl_element_data!(f32, F32);
impl_element_data!(f64, F64);
impl_element_data!(f16, F16);
impl_element_data!(bf16, BF16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_ranges_are_clamped_to_the_buffer() {
        let mut b = Buffer::from_f64(DType::F32, &[0.0, 1.0, 2.0, 3.0, 4.0]);
        let got = |d: HostData<'_>| (0..d.len()).map(|i| d.get_f64(i)).collect::<Vec<_>>();
        assert_eq!(got(b.range_data(1..3)), vec![1.0, 2.0]);
        assert_eq!(got(b.range_data(3..9)), vec![3.0, 4.0]);
        assert_eq!(got(b.range_data(7..9)), Vec::<f64>::new());
        let (start, end) = (4, 2); // reversed: empty
        assert_eq!(b.range_data_mut(start..end).len(), 0);
        b.range_data_mut(2..3).set_f64(0, 9.0);
        assert_eq!(b.to_f64_vec(), vec![0.0, 1.0, 9.0, 3.0, 4.0]);
        // a Vec's first 64-byte-aligned element, within the buffer
        let k = b.first_aligned(64);
        assert!(k <= b.len());
        let big = Buffer::filled(DType::BF16, 100, 0.0);
        let k = big.first_aligned(64);
        assert!(k < 32);
        assert_eq!(big.range_data(k..k + 1).addr() % 64, 0);
    }

    #[test]
    fn map_into_reads_in_logical_order() {
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        // contiguous, and a transposed view: logical [[0, 3], [1, 4], [2, 5]]
        let mut out = [0i64; 6];
        Tensor::new(&v, &[2, 3])
            .unwrap()
            .map_into(&mut out, |x| x as i64 * 10);
        assert_eq!(out, [0, 10, 20, 30, 40, 50]);
        let t = Tensor::with_strides(&v, &[3, 2], &[1, 3]).unwrap();
        t.map_into(&mut out, |x| x as i64);
        assert_eq!(out, [0, 3, 1, 4, 2, 5]);
        assert_eq!(t.to_f64_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        // a shorter output takes the first elements; a longer one keeps its tail
        let mut short = [0i64; 2];
        t.map_into(&mut short, |x| x as i64);
        assert_eq!(short, [0, 3]);
        let mut long = [-1i64; 8];
        t.map_into(&mut long, |x| x as i64);
        assert_eq!(long, [0, 3, 1, 4, 2, 5, -1, -1]);
    }

    #[test]
    fn layouts_are_detected() {
        let v = vec![0f32; 2 * 3 * 4 * 5];
        let t = Tensor::new(&v, &[2, 3, 4, 5]).unwrap();
        assert_eq!(t.layout(), Layout::Contiguous);
        let t = Tensor::channels_last(&v, &[2, 3, 4, 5]).unwrap();
        assert_eq!(t.strides(), &[60, 1, 15, 3]);
        assert_eq!(t.layout(), Layout::ChannelsLast);
        let t = Tensor::with_strides(&v, &[3, 2], &[1, 3]).unwrap();
        assert_eq!(t.layout(), Layout::Strided);
    }

    #[test]
    fn short_buffers_are_rejected() {
        let v = vec![0f32; 5];
        let e = Tensor::new(&v, &[2, 3]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BufferTooSmall);
        assert!(e.to_string().contains("at least 6 elements"), "{e}");
    }

    #[test]
    fn overlapping_outputs_are_rejected() {
        let mut v = vec![0f32; 8];
        let e = TensorMut::with_strides(&mut v, &[2, 4], &[1, 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedLayout);
        let e = TensorMut::with_strides(&mut v, &[4, 2], &[0, 1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedLayout);
        assert!(TensorMut::with_strides(&mut v, &[2, 2], &[1, 4]).is_ok());
    }

    #[test]
    fn offsets_walk_row_major() {
        let mut seen = vec![];
        for_each_offset(&[2, 3], &[1, 2], |o| seen.push(o));
        assert_eq!(seen, vec![0, 2, 4, 1, 3, 5]);
        assert_eq!(linear_to_offset(&[2, 3], &[1, 2], 4), 3);
        let v: Vec<f64> = (0..6).map(f64::from).collect();
        let t = Tensor::with_strides(&v, &[2, 3], &[1, 2]).unwrap();
        assert_eq!(t.to_f64_vec(), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    }

    #[test]
    fn empty_tensors_need_no_data() {
        let v: Vec<f32> = vec![];
        assert!(Tensor::new(&v, &[0, 3, 4]).is_ok());
    }
}
