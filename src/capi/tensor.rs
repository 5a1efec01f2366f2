//! `normkit_tensor_t` (layout-identical to DLPack's `DLTensor`) and its translation into
//! normkit's [`Tensor`]/[`TensorMut`] views, with alignment staging and aliasing checks.

use std::ffi::c_void;

use super::error::{CResult, CapiError, normkit_status_t as S};
use crate::dtype::DType;
use crate::tensor::{Buffer, HostData, HostDataMut, Tensor, TensorMut};
use half::{bf16, f16};

/// The largest ndim a tensor may have.
pub const NORMKIT_MAX_DIMS: i32 = 8;

/// Device type of host memory (DLPack kDLCPU).
pub const NORMKIT_DEVICE_CPU: i32 = 1;
/// Device type of CUDA device memory (DLPack kDLCUDA).
pub const NORMKIT_DEVICE_CUDA: i32 = 2;
/// Device type of pinned CUDA host memory (DLPack kDLCUDAHost); accepted by CPU contexts.
pub const NORMKIT_DEVICE_CUDA_HOST: i32 = 3;
/// Device type of CUDA managed memory (DLPack kDLCUDAManaged).
pub const NORMKIT_DEVICE_CUDA_MANAGED: i32 = 13;

/// dtype code of signed integers (DLPack kDLInt); only int64 for num_batches_tracked.
pub const NORMKIT_DTYPE_CODE_INT: u8 = 0;
/// dtype code of unsigned integers (DLPack kDLUInt); not accepted by any op.
pub const NORMKIT_DTYPE_CODE_UINT: u8 = 1;
/// dtype code of IEEE floats (DLPack kDLFloat): bits 16 (f16), 32 (f32) or 64 (f64).
pub const NORMKIT_DTYPE_CODE_FLOAT: u8 = 2;
/// dtype code of bfloat16 (DLPack kDLBfloat): bits 16.
pub const NORMKIT_DTYPE_CODE_BFLOAT: u8 = 4;

/// A device: DLPack's `DLDevice` (device_type is one of the NORMKIT_DEVICE_* values).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct normkit_device_t {
    pub device_type: i32,
    pub device_id: i32,
}

/// An element type: DLPack's `DLDataType` (code is a NORMKIT_DTYPE_CODE_* value; lanes must
/// be 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct normkit_dtype_t {
    pub code: u8,
    pub bits: u8,
    pub lanes: u16,
}

/// A borrowed tensor view, layout-identical to DLPack's `DLTensor`: a `DLTensor*` may be cast
/// to `normkit_tensor_t*` directly.
///
/// * `data` + `byte_offset` is the address of element 0; no alignment is assumed.
/// * `shape` has `ndim` entries (0 <= ndim <= NORMKIT_MAX_DIMS), each >= 0.
/// * `strides` has `ndim` entries in elements, each >= 0, or is NULL for a compact row-major
///   tensor. Outputs must not have strides under which two elements share memory.
/// * `data` may be NULL only when the tensor has no elements.
/// * For a CPU context, `device.device_type` is NORMKIT_DEVICE_CPU or NORMKIT_DEVICE_CUDA_HOST.
///
/// normkit reads the struct, `shape` and `strides` during the call only and keeps no pointer
/// to them or to `data` afterwards. An output may be exactly the same memory as an input
/// (same address, dtype, shape and strides: in place); any other overlap between an output and
/// another tensor is an error.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_tensor_t {
    pub data: *mut c_void,
    pub device: normkit_device_t,
    pub ndim: i32,
    pub dtype: normkit_dtype_t,
    pub shape: *mut i64,
    pub strides: *mut i64,
    pub byte_offset: u64,
}

/// The element type of a tensor view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    Float(DType),
    I64,
}

impl Elem {
    pub fn size(self) -> usize {
        match self {
            Elem::Float(d) => d.size_in_bytes(),
            Elem::I64 => 8,
        }
    }
    fn align(self) -> usize {
        match self {
            Elem::Float(DType::F32) => align_of::<f32>(),
            Elem::Float(DType::F64) => align_of::<f64>(),
            Elem::Float(DType::F16) => align_of::<f16>(),
            Elem::Float(DType::BF16) => align_of::<bf16>(),
            Elem::I64 => align_of::<i64>(),
        }
    }
}

fn dtype_of(name: &str, d: normkit_dtype_t) -> CResult<Elem> {
    let unsupported = |why: &str| {
        CapiError::new(
            S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
            format!(
                "{name}: dtype {{code {}, bits {}, lanes {}}} {why}",
                d.code, d.bits, d.lanes
            ),
        )
    };
    if d.lanes != 1 {
        return Err(unsupported(
            "has lanes != 1 (vector dtypes are not supported)",
        ));
    }
    match (d.code, d.bits) {
        (NORMKIT_DTYPE_CODE_FLOAT, 16) => Ok(Elem::Float(DType::F16)),
        (NORMKIT_DTYPE_CODE_FLOAT, 32) => Ok(Elem::Float(DType::F32)),
        (NORMKIT_DTYPE_CODE_FLOAT, 64) => Ok(Elem::Float(DType::F64)),
        (NORMKIT_DTYPE_CODE_BFLOAT, 16) => Ok(Elem::Float(DType::BF16)),
        (NORMKIT_DTYPE_CODE_INT, 64) => Ok(Elem::I64),
        _ => Err(unsupported(
            "is not supported (expected float 16/32/64 or bfloat 16)",
        )),
    }
}

/// Which memory a context's ops read and write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Memory {
    Host,
    /// Device memory (or managed memory) of this CUDA ordinal.
    Cuda(i32),
}

/// A validated description of a C tensor: element type, shape, strides and the memory span.
#[derive(Debug)]
pub(crate) struct Desc {
    pub name: &'static str,
    pub elem: Elem,
    pub shape: Vec<usize>,
    pub strides: Vec<usize>,
    /// Address of element 0 (`data + byte_offset`); only dereferenced when `span > 0`.
    base: *mut u8,
    /// Elements from element 0 to the last addressed element, inclusive (0 when empty).
    span: usize,
}

fn overflow(name: &str, what: &str) -> CapiError {
    CapiError::new(
        S::NORMKIT_STATUS_OVERFLOW,
        format!("{name}: {what} overflows"),
    )
}

impl Desc {
    /// Validates the tensor struct `t` for a CPU context.
    ///
    /// # Safety
    /// `t.shape` and `t.strides`, when non-NULL, point to `t.ndim` readable `int64_t`s.
    pub unsafe fn from_c(name: &'static str, t: &normkit_tensor_t) -> CResult<Desc> {
        // SAFETY: forwarded contract.
        unsafe { Desc::from_c_on(name, t, Memory::Host) }
    }

    /// Validates the tensor struct `t` for a context whose ops read `memory`.
    ///
    /// # Safety
    /// As [`Desc::from_c`].
    pub unsafe fn from_c_on(
        name: &'static str,
        t: &normkit_tensor_t,
        memory: Memory,
    ) -> CResult<Desc> {
        let dev = t.device;
        let ok = match memory {
            Memory::Host => {
                dev.device_type == NORMKIT_DEVICE_CPU || dev.device_type == NORMKIT_DEVICE_CUDA_HOST
            }
            Memory::Cuda(ordinal) => {
                (dev.device_type == NORMKIT_DEVICE_CUDA
                    || dev.device_type == NORMKIT_DEVICE_CUDA_MANAGED)
                    && dev.device_id == ordinal
            }
        };
        if !ok {
            let expected = match memory {
                Memory::Host => "host memory, the context runs on the CPU (expected \
                                 NORMKIT_DEVICE_CPU or NORMKIT_DEVICE_CUDA_HOST)"
                    .to_string(),
                Memory::Cuda(i) => format!(
                    "memory of CUDA device {i}, the context runs there (expected \
                     {{NORMKIT_DEVICE_CUDA or NORMKIT_DEVICE_CUDA_MANAGED, {i}}})"
                ),
            };
            return Err(CapiError::new(
                S::NORMKIT_STATUS_DEVICE_MISMATCH,
                format!(
                    "{name}: device {{type {}, id {}}} is not {expected}",
                    dev.device_type, dev.device_id
                ),
            ));
        }
        if !(0..=NORMKIT_MAX_DIMS).contains(&t.ndim) {
            return Err(CapiError::invalid(
                name,
                format!(
                    "ndim {} is outside [0, {NORMKIT_MAX_DIMS}] (NORMKIT_MAX_DIMS)",
                    t.ndim
                ),
            ));
        }
        let elem = dtype_of(name, t.dtype)?;
        let ndim = t.ndim as usize;
        if ndim > 0 && t.shape.is_null() {
            return Err(CapiError::null(&format!("{name}.shape")));
        }
        let mut shape = Vec::with_capacity(ndim);
        for i in 0..ndim {
            // SAFETY: shape is non-NULL and has ndim entries (caller contract, checked above
            // for NULL); read_unaligned tolerates any alignment.
            let d = unsafe { t.shape.add(i).read_unaligned() };
            let d = usize::try_from(d)
                .map_err(|_| CapiError::invalid(name, format!("shape[{i}] = {d} is negative")))?;
            shape.push(d);
        }
        let strides = if t.strides.is_null() {
            crate::tensor::contiguous_strides(&shape)
        } else {
            let mut v = Vec::with_capacity(ndim);
            for i in 0..ndim {
                // SAFETY: strides is non-NULL and has ndim entries (caller contract).
                let s = unsafe { t.strides.add(i).read_unaligned() };
                let s = usize::try_from(s).map_err(|_| {
                    CapiError::new(
                        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
                        format!("{name}: strides[{i}] = {s} is negative (negative strides are not supported)"),
                    )
                })?;
                v.push(s);
            }
            v
        };
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| overflow(name, "the element count"))?;
        let span = if numel == 0 {
            0
        } else {
            let mut max = 0usize;
            for (&d, &s) in shape.iter().zip(&strides) {
                max = (d - 1)
                    .checked_mul(s)
                    .and_then(|o| o.checked_add(max))
                    .ok_or_else(|| overflow(name, "the largest element offset"))?;
            }
            max.checked_add(1)
                .ok_or_else(|| overflow(name, "the element span"))?
        };
        let bytes = span
            .checked_mul(elem.size())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| overflow(name, "the byte size"))?;
        let offset = usize::try_from(t.byte_offset).map_err(|_| overflow(name, "byte_offset"))?;
        if span > 0 && t.data.is_null() {
            return Err(CapiError::null(&format!(
                "{name}.data (of a non-empty tensor)"
            )));
        }
        let base = (t.data as *mut u8).wrapping_add(offset);
        if span > 0 && (base as usize).checked_add(bytes).is_none() {
            return Err(overflow(name, "data + byte_offset + size"));
        }
        Ok(Desc {
            name,
            elem,
            shape,
            strides,
            base,
            span,
        })
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The address, dtype and dense layout of a device tensor: contiguous or channels-last
    /// (strides of size-1 dims are ignored, as every framework does), element-aligned.
    pub fn device_parts(&self) -> CResult<(u64, DType, crate::tensor::Layout)> {
        use crate::tensor::{Layout, channels_last_strides, contiguous_strides};
        let dtype = self.dtype()?;
        let same = |want: &[usize]| {
            self.shape
                .iter()
                .zip(want.iter().zip(&self.strides))
                .all(|(&d, (&w, &s))| d <= 1 || w == s)
        };
        let layout = if same(&contiguous_strides(&self.shape)) {
            Layout::Contiguous
        } else if self.shape.len() >= 3 && same(&channels_last_strides(&self.shape)) {
            Layout::ChannelsLast
        } else {
            return Err(CapiError::new(
                S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
                format!(
                    "{}: CUDA ops need a contiguous or channels-last tensor, got strides {:?} \
                     for shape {:?}",
                    self.name, self.strides, self.shape
                ),
            ));
        };
        if !self.aligned() {
            return Err(CapiError::new(
                S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
                format!(
                    "{}: device address {:#x} is not aligned to its {}-byte elements (CUDA \
                     tensors cannot be staged on the host)",
                    self.name,
                    self.base as usize,
                    self.elem.size()
                ),
            ));
        }
        Ok((self.base as u64, dtype, layout))
    }

    /// Whether two views address overlapping memory (`same_view`: exactly the same view).
    pub fn overlap_with(&self, other: &Desc) -> (bool, bool) {
        (self.overlaps(other), self.same_view(other))
    }

    fn bytes(&self) -> usize {
        self.span * self.elem.size()
    }

    fn range(&self) -> (usize, usize) {
        let start = self.base as usize;
        (start, start + self.bytes())
    }

    fn overlaps(&self, other: &Desc) -> bool {
        let (a0, a1) = self.range();
        let (b0, b1) = other.range();
        self.span > 0 && other.span > 0 && a0 < b1 && b0 < a1
    }

    fn same_view(&self, other: &Desc) -> bool {
        self.base == other.base
            && self.elem == other.elem
            && self.shape == other.shape
            && self.strides == other.strides
    }

    fn aligned(&self) -> bool {
        self.span == 0 || (self.base as usize) % self.elem.align() == 0
    }

    fn dtype(&self) -> CResult<DType> {
        match self.elem {
            Elem::Float(d) => Ok(d),
            Elem::I64 => Err(CapiError::new(
                S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
                format!(
                    "{}: int64 is only accepted for num_batches_tracked (expected a float dtype)",
                    self.name
                ),
            )),
        }
    }

    /// A copy of the addressed memory in an aligned buffer.
    ///
    /// # Safety
    /// The span of this view is readable (the C caller's contract).
    unsafe fn copy_in(&self) -> CResult<Buffer> {
        let mut b = Buffer::filled(self.dtype()?, self.span, 0.0);
        if self.span > 0 {
            // SAFETY: the source has `bytes()` readable bytes (caller contract); the buffer
            // has `span` elements of the same size, so the same byte count; no overlap (fresh
            // allocation).
            unsafe { std::ptr::copy_nonoverlapping(self.base, buffer_ptr(&mut b), self.bytes()) };
        }
        Ok(b)
    }

    /// Copies `b` (from [`Desc::copy_in`]) back to the addressed memory.
    ///
    /// # Safety
    /// The span of this view is writable and not borrowed elsewhere.
    unsafe fn copy_out(&self, b: &mut Buffer) {
        if self.span > 0 && b.len() == self.span {
            // SAFETY: same byte count as copy_in; the destination is writable (caller
            // contract) and distinct from the buffer.
            unsafe { std::ptr::copy_nonoverlapping(buffer_ptr(b), self.base, self.bytes()) };
        }
    }

    /// Reads the single element of an int64 tensor with one element.
    ///
    /// # Safety
    /// The span is readable.
    pub unsafe fn read_i64(&self) -> CResult<i64> {
        self.check_scalar_i64()?;
        // SAFETY: span is 1 element of 8 bytes (checked), readable per the caller's contract;
        // read_unaligned needs no alignment.
        Ok(unsafe { (self.base as *const i64).read_unaligned() })
    }

    /// Writes the single element of an int64 tensor with one element.
    ///
    /// # Safety
    /// The span is writable.
    pub unsafe fn write_i64(&self, v: i64) -> CResult<()> {
        self.check_scalar_i64()?;
        // SAFETY: as in read_i64, writable per the caller's contract.
        unsafe { (self.base as *mut i64).write_unaligned(v) };
        Ok(())
    }

    fn check_scalar_i64(&self) -> CResult<()> {
        if self.elem != Elem::I64 {
            return Err(CapiError::new(
                S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
                format!(
                    "{}: expected an int64 tensor (code NORMKIT_DTYPE_CODE_INT, bits 64)",
                    self.name
                ),
            ));
        }
        if self.numel() != 1 {
            return Err(CapiError::new(
                S::NORMKIT_STATUS_SHAPE_MISMATCH,
                format!("{}: expected 1 element, got {}", self.name, self.numel()),
            ));
        }
        Ok(())
    }
}

fn buffer_ptr(b: &mut Buffer) -> *mut u8 {
    match b {
        Buffer::F32(v) => v.as_mut_ptr() as *mut u8,
        Buffer::F64(v) => v.as_mut_ptr() as *mut u8,
        Buffer::F16(v) => v.as_mut_ptr() as *mut u8,
        Buffer::BF16(v) => v.as_mut_ptr() as *mut u8,
    }
}

/// # Safety
/// `base` is aligned for the dtype and `span` elements from it are readable and not written
/// during `'a`.
unsafe fn host_data<'a>(dtype: DType, base: *const u8, span: usize) -> HostData<'a> {
    if span == 0 {
        return match dtype {
            DType::F32 => HostData::F32(&[]),
            DType::F64 => HostData::F64(&[]),
            DType::F16 => HostData::F16(&[]),
            DType::BF16 => HostData::BF16(&[]),
        };
    }
    // SAFETY: the function's contract (non-NULL, aligned, readable, unaliased by writers).
    unsafe {
        match dtype {
            DType::F32 => HostData::F32(std::slice::from_raw_parts(base as *const f32, span)),
            DType::F64 => HostData::F64(std::slice::from_raw_parts(base as *const f64, span)),
            DType::F16 => HostData::F16(std::slice::from_raw_parts(base as *const f16, span)),
            DType::BF16 => HostData::BF16(std::slice::from_raw_parts(base as *const bf16, span)),
        }
    }
}

/// # Safety
/// `base` is aligned for the dtype and `span` elements from it are writable and not accessed
/// through any other pointer during `'a`.
unsafe fn host_data_mut<'a>(dtype: DType, base: *mut u8, span: usize) -> HostDataMut<'a> {
    if span == 0 {
        return match dtype {
            DType::F32 => HostDataMut::F32(&mut []),
            DType::F64 => HostDataMut::F64(&mut []),
            DType::F16 => HostDataMut::F16(&mut []),
            DType::BF16 => HostDataMut::BF16(&mut []),
        };
    }
    // SAFETY: the function's contract (non-NULL, aligned, writable, unaliased).
    unsafe {
        match dtype {
            DType::F32 => HostDataMut::F32(std::slice::from_raw_parts_mut(base as *mut f32, span)),
            DType::F64 => HostDataMut::F64(std::slice::from_raw_parts_mut(base as *mut f64, span)),
            DType::F16 => HostDataMut::F16(std::slice::from_raw_parts_mut(base as *mut f16, span)),
            DType::BF16 => {
                HostDataMut::BF16(std::slice::from_raw_parts_mut(base as *mut bf16, span))
            }
        }
    }
}

/// One tensor argument of a call: absent, or a description plus an optional aligned copy.
struct Arg {
    desc: Option<Desc>,
    copy: Option<Buffer>,
}

/// The tensor arguments of one call, split into inputs (read) and outputs (written).
///
/// [`Io::prepare`] decides where each view's memory comes from: the caller's memory directly,
/// or an aligned copy when the address is misaligned for the dtype, or (for an input) when an
/// output is exactly the same view (in place). Any other overlap of an output with another
/// tensor is rejected. Staged outputs are copied back by [`Io::write_back`].
pub(crate) struct Io {
    inputs: Vec<Arg>,
    outputs: Vec<Arg>,
}

/// The input and output views of one call (None for absent optional tensors).
pub(crate) type Views<'a, const N: usize, const M: usize> =
    ([Option<Tensor<'a>>; N], [Option<TensorMut<'a>>; M]);

/// Whether a tensor argument may be NULL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    Optional,
}

/// # Safety
/// `t` is NULL or points to a valid `normkit_tensor_t` whose shape/strides arrays are valid.
pub(crate) unsafe fn describe(
    name: &'static str,
    t: *const normkit_tensor_t,
    need: Need,
    memory: Memory,
) -> CResult<Option<Desc>> {
    // SAFETY: `t` is NULL or valid (function contract); as_ref handles NULL.
    match unsafe { t.as_ref() } {
        None if need == Need::Required => Err(CapiError::null(name)),
        None => Ok(None),
        // SAFETY: shape/strides valid per the function contract.
        Some(t) => unsafe { Desc::from_c_on(name, t, memory) }.map(Some),
    }
}

impl Io {
    /// Describes every argument (inputs first, then outputs).
    ///
    /// # Safety
    /// Every non-NULL pointer points to a valid `normkit_tensor_t` whose memory (shape,
    /// strides, data span) is valid for the duration of the call.
    pub unsafe fn new(
        inputs: &[(&'static str, *const normkit_tensor_t, Need)],
        outputs: &[(&'static str, *const normkit_tensor_t, Need)],
    ) -> CResult<Io> {
        let mut io = Io {
            inputs: Vec::new(),
            outputs: Vec::new(),
        };
        for &(name, t, need) in inputs {
            // SAFETY: forwarded contract.
            let desc = unsafe { describe(name, t, need, Memory::Host) }?;
            io.inputs.push(Arg { desc, copy: None });
        }
        for &(name, t, need) in outputs {
            // SAFETY: forwarded contract.
            let desc = unsafe { describe(name, t, need, Memory::Host) }?;
            io.outputs.push(Arg { desc, copy: None });
        }
        io.prepare()?;
        Ok(io)
    }

    fn prepare(&mut self) -> CResult<()> {
        for (i, out) in self.outputs.iter().enumerate() {
            let Some(o) = &out.desc else { continue };
            for other in self.outputs[i + 1..].iter().filter_map(|a| a.desc.as_ref()) {
                if o.overlaps(other) {
                    return Err(overlap_error(o, other));
                }
            }
        }
        for inp in &mut self.inputs {
            let Some(d) = &inp.desc else { continue };
            let mut stage = !d.aligned();
            for o in self.outputs.iter().filter_map(|a| a.desc.as_ref()) {
                if o.overlaps(d) {
                    if o.same_view(d) {
                        stage = true;
                    } else {
                        return Err(overlap_error(o, d));
                    }
                }
            }
            if stage {
                // SAFETY: the input's span is readable (Io::new contract).
                inp.copy = Some(unsafe { d.copy_in() }?);
            }
        }
        for out in &mut self.outputs {
            if let Some(d) = &out.desc {
                if !d.aligned() {
                    // SAFETY: the output's span is readable (Io::new contract); the copy keeps
                    // the elements the op does not write (gaps, read-modify-write state).
                    out.copy = Some(unsafe { d.copy_in() }?);
                }
            }
        }
        Ok(())
    }

    /// Views of every argument (None for absent ones), inputs and outputs.
    pub fn views<const N: usize, const M: usize>(&mut self) -> CResult<Views<'_, N, M>> {
        let mut ins = Vec::with_capacity(N);
        for a in &self.inputs {
            ins.push(match (&a.desc, &a.copy) {
                (None, _) => None,
                (Some(d), Some(b)) => {
                    Some(Tensor::with_strides(b.as_data(), &d.shape, &d.strides)?)
                }
                (Some(d), None) => {
                    // SAFETY: aligned (prepare staged misaligned views), readable for the call
                    // (Io::new contract), and no output overlaps it (prepare staged or
                    // rejected every overlap), so it is not written during the borrow.
                    let data = unsafe { host_data(d.dtype()?, d.base, d.span) };
                    Some(Tensor::with_strides(data, &d.shape, &d.strides)?)
                }
            });
        }
        let mut outs = Vec::with_capacity(M);
        for a in &mut self.outputs {
            outs.push(match (&a.desc, &mut a.copy) {
                (None, _) => None,
                (Some(d), Some(b)) => Some(TensorMut::with_strides(
                    b.as_data_mut(),
                    &d.shape,
                    &d.strides,
                )?),
                (Some(d), None) => {
                    // SAFETY: aligned, writable for the call (Io::new contract), and no other
                    // argument's borrowed memory overlaps it (prepare rejected or staged every
                    // overlap); `&mut self` keeps this the only view.
                    let data = unsafe { host_data_mut(d.dtype()?, d.base, d.span) };
                    Some(TensorMut::with_strides(data, &d.shape, &d.strides)?)
                }
            });
        }
        let ins: [Option<Tensor>; N] = ins
            .try_into()
            .map_err(|_| CapiError::internal("input count"))?;
        let outs: [Option<TensorMut>; M] = outs
            .try_into()
            .map_err(|_| CapiError::internal("output count"))?;
        Ok((ins, outs))
    }

    /// Copies staged (misaligned) outputs back to the caller's memory. Call after success.
    pub fn write_back(&mut self) {
        for a in &mut self.outputs {
            if let (Some(d), Some(b)) = (&a.desc, &mut a.copy) {
                // SAFETY: the output's span is writable (Io::new contract) and no view of it
                // is alive (views borrow `self`, which is exclusively borrowed here).
                unsafe { d.copy_out(b) };
            }
        }
    }
}

fn overlap_error(out: &Desc, other: &Desc) -> CapiError {
    CapiError::new(
        S::NORMKIT_STATUS_UNSUPPORTED_LAYOUT,
        format!(
            "{}: output memory overlaps {} without being the same view (in place needs the \
             same address, dtype, shape and strides)",
            out.name, other.name
        ),
    )
}

/// Unwraps a required view (present by construction when `Io::new` succeeded).
pub(crate) fn required<T>(v: Option<T>, name: &str) -> CResult<T> {
    v.ok_or_else(|| CapiError::internal(&format!("{name} missing after validation")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn tensor_layout_is_dltensor() {
        assert_eq!(size_of::<normkit_device_t>(), 8);
        assert_eq!(align_of::<normkit_device_t>(), 4);
        assert_eq!(size_of::<normkit_dtype_t>(), 4);
        assert_eq!(align_of::<normkit_dtype_t>(), 2);
        assert_eq!(size_of::<normkit_tensor_t>(), 48);
        assert_eq!(align_of::<normkit_tensor_t>(), 8);
        assert_eq!(offset_of!(normkit_tensor_t, data), 0);
        assert_eq!(offset_of!(normkit_tensor_t, device), 8);
        assert_eq!(offset_of!(normkit_tensor_t, device.device_type), 8);
        assert_eq!(offset_of!(normkit_tensor_t, device.device_id), 12);
        assert_eq!(offset_of!(normkit_tensor_t, ndim), 16);
        assert_eq!(offset_of!(normkit_tensor_t, dtype), 20);
        assert_eq!(offset_of!(normkit_tensor_t, dtype.code), 20);
        assert_eq!(offset_of!(normkit_tensor_t, dtype.bits), 21);
        assert_eq!(offset_of!(normkit_tensor_t, dtype.lanes), 22);
        assert_eq!(offset_of!(normkit_tensor_t, shape), 24);
        assert_eq!(offset_of!(normkit_tensor_t, strides), 32);
        assert_eq!(offset_of!(normkit_tensor_t, byte_offset), 40);
    }
}
