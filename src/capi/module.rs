//! Stateful modules mirroring torch.nn, behind one opaque `normkit_module_t`.
//!
//! A module owns its parameters and buffers: host memory when created with a CPU context,
//! device memory of the context's GPU when created with a CUDA context (then forward and
//! backward take device tensors and a CUDA context of that device; saved statistics and
//! gradients stay on the device). State entries are read and written by their PyTorch
//! `state_dict` names ("weight", "bias", "running_mean", "running_var",
//! "num_batches_tracked") through caller tensors in the memory of the context passed to the
//! call: float entries through any float tensor with the entry's element count (values
//! converted; on a CUDA context a contiguous or channels-last device tensor),
//! num_batches_tracked through a host int64 tensor of one element; gradients are read into
//! host tensors. A module is used by one thread at a time.

use std::ffi::{CStr, c_char};

use super::comm::{CCommunicator, normkit_communicator_t};
use super::context::{context_ref, normkit_context_t};
use super::error::{CResult, CapiError, boundary, normkit_status_t, normkit_status_t as S};
use super::ops::run_op;
use super::tensor::{Desc, Elem, Io, Need, normkit_dtype_t, normkit_tensor_t, required};
use super::tensor::{NORMKIT_DTYPE_CODE_BFLOAT, NORMKIT_DTYPE_CODE_FLOAT};
use super::{read_str, read_struct, write_out};
use crate::dtype::DType;
use crate::layers::{
    AnyModule, BatchNorm, BatchNormConfig, BatchNormKind, CudaModule, GroupNorm, GroupNormConfig,
    InstanceNorm, InstanceNormConfig, InstanceNormKind, LayerNorm, LayerNormConfig,
    LocalResponseNorm, Module, State,
};
use crate::ops::LrnArgs;
use crate::tensor::Buffer;

/// Module kind: the 1d variant (BatchNorm1d, InstanceNorm1d).
pub const NORMKIT_KIND_1D: i32 = 1;
/// Module kind: the 2d variant.
pub const NORMKIT_KIND_2D: i32 = 2;
/// Module kind: the 3d variant.
pub const NORMKIT_KIND_3D: i32 = 3;
/// Module kind: SyncBatchNorm (batch norm only; any rank >= 2; in one process it is exactly
/// BatchNorm).
pub const NORMKIT_KIND_SYNC: i32 = 4;

/// A normalization module (opaque). Create it with a `normkit_<family>_create` function, destroy
/// it with normkit_module_destroy. Used by one thread at a time.
pub struct normkit_module_t {
    inner: Inner,
}

/// A module: on the host (created with a CPU context) or on a CUDA device (created with a
/// CUDA context: state, saved statistics and gradients in device memory).
enum Inner {
    Host(Box<AnyModule>),
    Cuda(Box<CudaModule>),
}

fn other(m: impl Into<AnyModule>) -> Inner {
    Inner::Host(Box::new(m.into()))
}

impl Inner {
    fn host_module(&self) -> Option<&(dyn Module + Send)> {
        match self {
            Inner::Host(m) => Some(m.as_module()),
            Inner::Cuda(_) => None,
        }
    }
    fn name(&self) -> &'static str {
        match self {
            Inner::Host(m) => m.as_module().name(),
            Inner::Cuda(m) => m.name(),
        }
    }
    fn train(&mut self) {
        match self {
            Inner::Host(m) => m.as_module_mut().train(),
            Inner::Cuda(m) => m.train(),
        }
    }
    fn eval(&mut self) {
        match self {
            Inner::Host(m) => m.as_module_mut().eval(),
            Inner::Cuda(m) => m.eval(),
        }
    }
    fn is_training(&self) -> bool {
        self.host_module().map_or_else(
            || self.cuda_ref().is_some_and(|m| m.is_training()),
            |m| m.is_training(),
        )
    }
    fn is_initialized(&self) -> bool {
        self.host_module().map_or_else(
            || self.cuda_ref().is_some_and(|m| m.is_initialized()),
            |m| m.is_initialized(),
        )
    }
    fn state_names(&self) -> Vec<&'static str> {
        match self {
            Inner::Host(m) => m.as_module().state_names(),
            Inner::Cuda(m) => m.state_names(),
        }
    }
    /// A state entry (copied from the device for a CUDA module).
    fn state(&self, name: &str) -> crate::error::Result<State> {
        match self {
            Inner::Host(m) => m.as_module().state(name),
            Inner::Cuda(m) => m.state(name),
        }
    }
    fn load_state(&mut self, name: &str, v: &State) -> crate::error::Result<()> {
        match self {
            Inner::Host(m) => m.as_module_mut().load_state(name, v),
            Inner::Cuda(m) => m.load_state(name, v),
        }
    }
    fn reset_running_stats(&mut self) -> crate::error::Result<()> {
        match self {
            Inner::Host(m) => {
                m.as_module_mut().reset_running_stats();
                Ok(())
            }
            Inner::Cuda(m) => m.reset_running_stats(),
        }
    }
    fn reset_parameters(&mut self) -> crate::error::Result<()> {
        match self {
            Inner::Host(m) => {
                m.as_module_mut().reset_parameters();
                Ok(())
            }
            Inner::Cuda(m) => m.reset_parameters(),
        }
    }
    fn grad(&self, name: &str) -> crate::error::Result<Option<Buffer>> {
        match self {
            Inner::Host(m) => m.as_module().grad(name),
            Inner::Cuda(m) => m.grad(name),
        }
    }
    fn zero_grad(&mut self) {
        match self {
            Inner::Host(m) => m.as_module_mut().zero_grad(),
            Inner::Cuda(m) => m.zero_grad(),
        }
    }
    fn cuda_ref(&self) -> Option<&CudaModule> {
        match self {
            Inner::Cuda(m) => Some(m),
            Inner::Host(_) => None,
        }
    }
    /// The host module, for calls with host tensors.
    fn host_mut(&mut self) -> CResult<&mut (dyn Module + Send)> {
        match self {
            Inner::Host(m) => Ok(m.as_module_mut()),
            Inner::Cuda(_) => Err(CapiError::new(
                S::NORMKIT_STATUS_DEVICE_MISMATCH,
                "ctx: the module lives on a CUDA device (it was created with a CUDA context); \
                 call it with a CUDA context of that device",
            )),
        }
    }
}

const F32: normkit_dtype_t = normkit_dtype_t {
    code: NORMKIT_DTYPE_CODE_FLOAT,
    bits: 32,
    lanes: 1,
};

fn param_dtype(d: normkit_dtype_t) -> CResult<DType> {
    match (d.code, d.bits, d.lanes) {
        (NORMKIT_DTYPE_CODE_FLOAT, 32, 1) => Ok(DType::F32),
        (NORMKIT_DTYPE_CODE_FLOAT, 64, 1) => Ok(DType::F64),
        (NORMKIT_DTYPE_CODE_FLOAT, 16, 1) => Ok(DType::F16),
        (NORMKIT_DTYPE_CODE_BFLOAT, 16, 1) => Ok(DType::BF16),
        _ => Err(CapiError::new(
            S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
            format!(
                "config.param_dtype: {{code {}, bits {}, lanes {}}} is not float 16/32/64 or bfloat 16",
                d.code, d.bits, d.lanes
            ),
        )),
    }
}

fn count(arg: &str, v: i64) -> CResult<usize> {
    usize::try_from(v).map_err(|_| CapiError::invalid(arg, format!("must be >= 0, got {v}")))
}

fn momentum(cumulative: bool, m: f64) -> Option<f64> {
    (!cumulative).then_some(m)
}

/// Validates the context, reads the config, builds the module (on the context's CUDA device
/// for a CUDA context), writes `out`.
///
/// # Safety
/// ctx, config and out are NULL or valid (the caller's contract).
unsafe fn create<T: Copy>(
    ctx: *const normkit_context_t,
    config: *const T,
    out: *mut *mut normkit_module_t,
    build: impl FnOnce(&T) -> CResult<Inner>,
) -> CResult<()> {
    // SAFETY: ctx is NULL or live (caller contract).
    let ctx = unsafe { context_ref(ctx) }?;
    // SAFETY: config is NULL or readable (caller contract).
    let cfg = unsafe { read_struct("config", config) }?;
    if out.is_null() {
        return Err(CapiError::null("out"));
    }
    let inner = match (build(&cfg)?, ctx.cuda()) {
        (Inner::Host(m), Some(dev)) => Inner::Cuda(Box::new(CudaModule::new(*m, dev)?)),
        (inner, _) => inner,
    };
    let m = Box::new(normkit_module_t { inner });
    // SAFETY: out is non-NULL (checked) and writable (caller contract).
    unsafe { out.write(Box::into_raw(m)) };
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

/// Configuration of a BatchNorm1d/2d/3d, LazyBatchNorm1d/2d/3d or SyncBatchNorm module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_batch_norm_config_t {
    /// sizeof(normkit_batch_norm_config_t), set by the _init function.
    pub struct_size: u32,
    /// NORMKIT_KIND_1D, _2D, _3D or _SYNC; no default (_init sets 0, which must be replaced).
    pub kind: i32,
    /// Channels C (ignored when lazy).
    pub num_features: i64,
    /// Default 1e-5.
    pub eps: f64,
    /// Default 0.1.
    pub momentum: f64,
    /// PyTorch momentum=None (cumulative average). Default false.
    pub momentum_cumulative: bool,
    /// Learnable weight and bias. Default true.
    pub affine: bool,
    /// running_mean, running_var and num_batches_tracked exist. Default true.
    pub track_running_stats: bool,
    /// With affine: whether the bias exists. Default true.
    pub bias: bool,
    /// LazyBatchNorm: num_features comes from dim 1 of the first input. Default false (not
    /// with NORMKIT_KIND_SYNC).
    pub lazy: bool,
    /// dtype of the parameters and running statistics. Default float32.
    pub param_dtype: normkit_dtype_t,
}

impl Default for normkit_batch_norm_config_t {
    fn default() -> Self {
        let d = BatchNormConfig::new(0);
        normkit_batch_norm_config_t {
            struct_size: size_of::<Self>() as u32,
            kind: 0,
            num_features: 0,
            eps: d.eps,
            momentum: 0.1,
            momentum_cumulative: false,
            affine: d.affine,
            track_running_stats: d.track_running_stats,
            bias: d.bias,
            lazy: false,
            param_dtype: F32,
        }
    }
}

/// Fills `config` with PyTorch's defaults (kind 0 and num_features 0 must be set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_batch_norm_config_init(
    config: *mut normkit_batch_norm_config_t,
) -> normkit_status_t {
    boundary!("normkit_batch_norm_config_init", {
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, normkit_batch_norm_config_t::default()) }
    })
}

/// Creates a batch-norm module (training mode). Errors: an unknown kind, lazy SyncBatchNorm,
/// negative num_features (INVALID_ARGUMENT), param_dtype (UNSUPPORTED_DTYPE).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_batch_norm_create(
    ctx: *mut normkit_context_t,
    config: *const normkit_batch_norm_config_t,
    out: *mut *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_batch_norm_create", {
        // SAFETY: the caller's contract for ctx, config and out.
        unsafe {
            create(ctx, config, out, |c: &normkit_batch_norm_config_t| {
                let kind = match c.kind {
                    NORMKIT_KIND_1D => BatchNormKind::BatchNorm1d,
                    NORMKIT_KIND_2D => BatchNormKind::BatchNorm2d,
                    NORMKIT_KIND_3D => BatchNormKind::BatchNorm3d,
                    NORMKIT_KIND_SYNC if !c.lazy => BatchNormKind::SyncBatchNorm,
                    NORMKIT_KIND_SYNC => {
                        return Err(CapiError::invalid(
                            "config.lazy",
                            "there is no lazy SyncBatchNorm",
                        ));
                    }
                    k => {
                        return Err(CapiError::invalid(
                            "config.kind",
                            format!("{k} is not NORMKIT_KIND_1D/2D/3D/SYNC (1..4)"),
                        ));
                    }
                };
                let cfg = BatchNormConfig {
                    num_features: if c.lazy {
                        0
                    } else {
                        count("config.num_features", c.num_features)?
                    },
                    eps: c.eps,
                    momentum: momentum(c.momentum_cumulative, c.momentum),
                    affine: c.affine,
                    track_running_stats: c.track_running_stats,
                    bias: c.bias,
                    dtype: param_dtype(c.param_dtype)?,
                };
                Ok(match (c.lazy, kind) {
                    (true, _) => other(BatchNorm::lazy(kind, cfg)),
                    (false, BatchNormKind::SyncBatchNorm) => other(BatchNorm::new(kind, cfg)),
                    (false, _) => other(BatchNorm::new(kind, cfg)),
                })
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// InstanceNorm

/// Configuration of an InstanceNorm1d/2d/3d or LazyInstanceNorm1d/2d/3d module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_instance_norm_config_t {
    /// sizeof(normkit_instance_norm_config_t), set by the _init functions.
    pub struct_size: u32,
    /// NORMKIT_KIND_1D, _2D or _3D; no default (0 must be replaced).
    pub kind: i32,
    /// Channels C (ignored when lazy).
    pub num_features: i64,
    /// Default 1e-5.
    pub eps: f64,
    /// Default 0.1.
    pub momentum: f64,
    /// PyTorch momentum=None: running statistics are then not updated. Default false.
    pub momentum_cumulative: bool,
    /// Default false (true for the lazy defaults).
    pub affine: bool,
    /// Default false (true for the lazy defaults).
    pub track_running_stats: bool,
    /// With affine: whether the bias exists. Default true.
    pub bias: bool,
    /// LazyInstanceNorm. Default false (true for normkit_lazy_instance_norm_config_init).
    pub lazy: bool,
    /// Default float32.
    pub param_dtype: normkit_dtype_t,
}

fn instance_defaults(lazy: bool) -> normkit_instance_norm_config_t {
    let d = if lazy {
        InstanceNormConfig::lazy()
    } else {
        InstanceNormConfig::new(0)
    };
    normkit_instance_norm_config_t {
        struct_size: size_of::<normkit_instance_norm_config_t>() as u32,
        kind: 0,
        num_features: 0,
        eps: d.eps,
        momentum: 0.1,
        momentum_cumulative: false,
        affine: d.affine,
        track_running_stats: d.track_running_stats,
        bias: d.bias,
        lazy,
        param_dtype: F32,
    }
}

/// Fills `config` with InstanceNorm's defaults (affine false, track_running_stats false).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_instance_norm_config_init(
    config: *mut normkit_instance_norm_config_t,
) -> normkit_status_t {
    boundary!("normkit_instance_norm_config_init", {
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, instance_defaults(false)) }
    })
}

/// Fills `config` with LazyInstanceNorm's defaults (lazy, affine true, track_running_stats
/// true).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_lazy_instance_norm_config_init(
    config: *mut normkit_instance_norm_config_t,
) -> normkit_status_t {
    boundary!("normkit_lazy_instance_norm_config_init", {
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, instance_defaults(true)) }
    })
}

/// Creates an instance-norm module (training mode).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_instance_norm_create(
    ctx: *mut normkit_context_t,
    config: *const normkit_instance_norm_config_t,
    out: *mut *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_instance_norm_create", {
        // SAFETY: the caller's contract for ctx, config and out.
        unsafe {
            create(ctx, config, out, |c: &normkit_instance_norm_config_t| {
                let kind = match c.kind {
                    NORMKIT_KIND_1D => InstanceNormKind::InstanceNorm1d,
                    NORMKIT_KIND_2D => InstanceNormKind::InstanceNorm2d,
                    NORMKIT_KIND_3D => InstanceNormKind::InstanceNorm3d,
                    k => {
                        return Err(CapiError::invalid(
                            "config.kind",
                            format!("{k} is not NORMKIT_KIND_1D/2D/3D (1..3)"),
                        ));
                    }
                };
                let cfg = InstanceNormConfig {
                    num_features: if c.lazy {
                        0
                    } else {
                        count("config.num_features", c.num_features)?
                    },
                    eps: c.eps,
                    momentum: momentum(c.momentum_cumulative, c.momentum),
                    affine: c.affine,
                    track_running_stats: c.track_running_stats,
                    bias: c.bias,
                    dtype: param_dtype(c.param_dtype)?,
                };
                Ok(other(if c.lazy {
                    InstanceNorm::lazy(kind, cfg)
                } else {
                    InstanceNorm::new(kind, cfg)
                }))
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// GroupNorm

/// Configuration of a GroupNorm module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_group_norm_config_t {
    /// sizeof(normkit_group_norm_config_t), set by the _init function.
    pub struct_size: u32,
    /// Learnable per-channel weight and bias. Default true.
    pub affine: bool,
    /// With affine: whether the bias exists. Default true.
    pub bias: bool,
    /// Groups G (> 0, divides num_channels); no default (_init sets 0).
    pub num_groups: i64,
    /// Channels C; no default (_init sets 0).
    pub num_channels: i64,
    /// Default 1e-5.
    pub eps: f64,
    /// Default float32.
    pub param_dtype: normkit_dtype_t,
}

/// Fills `config` with PyTorch's defaults (num_groups and num_channels must be set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_group_norm_config_init(
    config: *mut normkit_group_norm_config_t,
) -> normkit_status_t {
    boundary!("normkit_group_norm_config_init", {
        let d = GroupNormConfig::new(0, 0);
        let v = normkit_group_norm_config_t {
            struct_size: size_of::<normkit_group_norm_config_t>() as u32,
            affine: d.affine,
            bias: d.bias,
            num_groups: 0,
            num_channels: 0,
            eps: d.eps,
            param_dtype: F32,
        };
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, v) }
    })
}

/// Creates a GroupNorm module. num_groups must be > 0 and divide num_channels
/// (INVALID_ARGUMENT).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_group_norm_create(
    ctx: *mut normkit_context_t,
    config: *const normkit_group_norm_config_t,
    out: *mut *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_group_norm_create", {
        // SAFETY: the caller's contract for ctx, config and out.
        unsafe {
            create(ctx, config, out, |c: &normkit_group_norm_config_t| {
                let cfg = GroupNormConfig {
                    num_groups: count("config.num_groups", c.num_groups)?,
                    num_channels: count("config.num_channels", c.num_channels)?,
                    eps: c.eps,
                    affine: c.affine,
                    bias: c.bias,
                    dtype: param_dtype(c.param_dtype)?,
                };
                Ok(other(GroupNorm::new(cfg)?))
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// Configuration of a LayerNorm module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_layer_norm_config_t {
    /// sizeof(normkit_layer_norm_config_t), set by the _init function.
    pub struct_size: u32,
    /// Number of dims in normalized_shape, 1..NORMKIT_MAX_DIMS; no default (_init sets 0).
    pub normalized_ndim: i32,
    /// The normalised (trailing) shape; the first normalized_ndim entries are used.
    pub normalized_shape: [i64; 8],
    /// Default 1e-5.
    pub eps: f64,
    /// Learnable weight and bias shaped like normalized_shape. Default true.
    pub elementwise_affine: bool,
    /// With elementwise_affine: whether the bias exists. Default true.
    pub bias: bool,
    /// Default float32.
    pub param_dtype: normkit_dtype_t,
}

/// Fills `config` with PyTorch's defaults (normalized_ndim and normalized_shape must be set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_layer_norm_config_init(
    config: *mut normkit_layer_norm_config_t,
) -> normkit_status_t {
    boundary!("normkit_layer_norm_config_init", {
        let d = LayerNormConfig::new(&[]);
        let v = normkit_layer_norm_config_t {
            struct_size: size_of::<normkit_layer_norm_config_t>() as u32,
            normalized_ndim: 0,
            normalized_shape: [0; 8],
            eps: d.eps,
            elementwise_affine: d.elementwise_affine,
            bias: d.bias,
            param_dtype: F32,
        };
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, v) }
    })
}

/// Creates a LayerNorm module. normalized_ndim outside 1..NORMKIT_MAX_DIMS or a negative
/// dim: INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_layer_norm_create(
    ctx: *mut normkit_context_t,
    config: *const normkit_layer_norm_config_t,
    out: *mut *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_layer_norm_create", {
        // SAFETY: the caller's contract for ctx, config and out.
        unsafe {
            create(ctx, config, out, |c: &normkit_layer_norm_config_t| {
                let nd = usize::try_from(c.normalized_ndim)
                    .ok()
                    .filter(|n| (1..=8).contains(n))
                    .ok_or_else(|| {
                        CapiError::invalid(
                            "config.normalized_ndim",
                            format!("must be in [1, 8], got {}", c.normalized_ndim),
                        )
                    })?;
                let shape = c.normalized_shape[..nd]
                    .iter()
                    .map(|&d| count("config.normalized_shape", d))
                    .collect::<CResult<Vec<usize>>>()?;
                shape
                    .iter()
                    .try_fold(1usize, |a, &d| a.checked_mul(d))
                    .ok_or_else(|| {
                        CapiError::new(
                            S::NORMKIT_STATUS_OVERFLOW,
                            "config.normalized_shape: the element count overflows",
                        )
                    })?;
                let cfg = LayerNormConfig {
                    normalized_shape: shape,
                    eps: c.eps,
                    elementwise_affine: c.elementwise_affine,
                    bias: c.bias,
                    dtype: param_dtype(c.param_dtype)?,
                };
                Ok(other(LayerNorm::new(cfg)))
            })
        }
    })
}

// ---------------------------------------------------------------------------------------------
// LocalResponseNorm

/// Configuration of a LocalResponseNorm module.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct normkit_local_response_norm_config_t {
    /// sizeof(normkit_local_response_norm_config_t), set by the _init function.
    pub struct_size: u32,
    /// Window size in channels (> 0); no default (_init sets 0).
    pub size: i64,
    /// Default 1e-4.
    pub alpha: f64,
    /// Default 0.75.
    pub beta: f64,
    /// Default 1.0.
    pub k: f64,
}

/// Fills `config` with PyTorch's defaults (size must be set).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_local_response_norm_config_init(
    config: *mut normkit_local_response_norm_config_t,
) -> normkit_status_t {
    boundary!("normkit_local_response_norm_config_init", {
        let d = LrnArgs::new(0);
        let v = normkit_local_response_norm_config_t {
            struct_size: size_of::<normkit_local_response_norm_config_t>() as u32,
            size: 0,
            alpha: d.alpha,
            beta: d.beta,
            k: d.k,
        };
        // SAFETY: config is NULL or writable (caller contract).
        unsafe { write_out("config", config, v) }
    })
}

/// Creates a LocalResponseNorm module. size must be > 0 (INVALID_ARGUMENT).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_local_response_norm_create(
    ctx: *mut normkit_context_t,
    config: *const normkit_local_response_norm_config_t,
    out: *mut *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_local_response_norm_create", {
        // SAFETY: the caller's contract for ctx, config and out.
        unsafe {
            create(
                ctx,
                config,
                out,
                |c: &normkit_local_response_norm_config_t| {
                    let size = count("config.size", c.size)?;
                    if size == 0 {
                        return Err(CapiError::invalid("config.size", "must be > 0, got 0"));
                    }
                    Ok(other(LocalResponseNorm::with_args(LrnArgs {
                        size,
                        alpha: c.alpha,
                        beta: c.beta,
                        k: c.k,
                    })))
                },
            )
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Common module functions

/// # Safety
/// `m` is NULL or a live module used by this thread only.
unsafe fn module_mut<'a>(m: *mut normkit_module_t) -> CResult<&'a mut normkit_module_t> {
    // SAFETY: the function's contract.
    unsafe { m.as_mut() }.ok_or_else(|| CapiError::null("module"))
}

/// # Safety
/// `m` is NULL or a live module not being modified by another thread.
unsafe fn module_ref<'a>(m: *const normkit_module_t) -> CResult<&'a normkit_module_t> {
    // SAFETY: the function's contract.
    unsafe { m.as_ref() }.ok_or_else(|| CapiError::null("module"))
}

/// Static NUL-terminated copies of every module and state name.
const NAMES: [&CStr; 21] = [
    c"BatchNorm1d",
    c"BatchNorm2d",
    c"BatchNorm3d",
    c"LazyBatchNorm1d",
    c"LazyBatchNorm2d",
    c"LazyBatchNorm3d",
    c"SyncBatchNorm",
    c"InstanceNorm1d",
    c"InstanceNorm2d",
    c"InstanceNorm3d",
    c"LazyInstanceNorm1d",
    c"LazyInstanceNorm2d",
    c"LazyInstanceNorm3d",
    c"GroupNorm",
    c"LayerNorm",
    c"LocalResponseNorm",
    c"weight",
    c"bias",
    c"running_mean",
    c"running_var",
    c"num_batches_tracked",
];

fn static_c_name(name: &str) -> CResult<*const c_char> {
    NAMES
        .iter()
        .find(|c| c.to_bytes() == name.as_bytes())
        .map(|c| c.as_ptr())
        .ok_or_else(|| CapiError::internal(&format!("no C name for \"{name}\"")))
}

/// Destroys a module. NULL is a no-op.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_destroy(module: *mut normkit_module_t) {
    boundary_or!("normkit_module_destroy", (), {
        if !module.is_null() {
            // SAFETY: module came from Box::into_raw in a _create function and is destroyed
            // once (caller contract).
            drop(unsafe { Box::from_raw(module) });
        }
    })
}

/// Writes the torch.nn class name the module behaves as ("BatchNorm2d", "LazyBatchNorm1d"
/// before materialisation, ...) to `*out`: a static string, never freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_name(
    module: *const normkit_module_t,
    out: *mut *const c_char,
) -> normkit_status_t {
    boundary!("normkit_module_name", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        let name = static_c_name(m.inner.name())?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, name) }
    })
}

/// Switches the module to training (true: PyTorch's train()) or evaluation (false: eval())
/// mode. Modules start in training mode.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_set_training(
    module: *mut normkit_module_t,
    training: bool,
) -> normkit_status_t {
    boundary!("normkit_module_set_training", {
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        let m = unsafe { module_mut(module) }?;
        if training {
            m.inner.train();
        } else {
            m.inner.eval();
        }
        Ok(())
    })
}

/// Writes whether the module is in training mode to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_is_training(
    module: *const normkit_module_t,
    out: *mut bool,
) -> normkit_status_t {
    boundary!("normkit_module_is_training", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, m.inner.is_training()) }
    })
}

/// Writes whether every parameter and buffer exists to `*out` (false for a lazy module before
/// its first forward or before all its state was loaded).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_is_initialized(
    module: *const normkit_module_t,
    out: *mut bool,
) -> normkit_status_t {
    boundary!("normkit_module_is_initialized", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, m.inner.is_initialized()) }
    })
}

/// Normalises x into y (same shape and dtype; y may be x itself), updating running statistics
/// in training mode; a lazy module is materialised from dim 1 of its first input. Shapes that
/// disagree with the module's kind or configuration: SHAPE_MISMATCH.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_forward(
    ctx: *mut normkit_context_t,
    module: *mut normkit_module_t,
    x: *const normkit_tensor_t,
    y: *mut normkit_tensor_t,
) -> normkit_status_t {
    boundary!("normkit_module_forward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        let m = unsafe { module_mut(module) }?;
        if let Inner::Cuda(cm) = &mut m.inner {
            // SAFETY: the tensor contract for x and y.
            return unsafe { super::cuda::module_forward(ctx, cm, x, y) };
        }
        let inner = m.inner.host_mut()?;
        // SAFETY: the tensor contract for x and y.
        unsafe {
            run_op(
                ctx,
                [("x", x, Need::Required)],
                [("y", y, Need::Required)],
                move |[x], [y]| {
                    let x = required(x, "x")?;
                    let mut y = required(y, "y")?;
                    Ok(inner.forward(&x, &mut y)?)
                },
            )
        }
    })
}

/// Writes the number of state entries (the module's state_dict keys) to `*out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_state_count(
    module: *const normkit_module_t,
    out: *mut usize,
) -> normkit_status_t {
    boundary!("normkit_module_state_count", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, m.inner.state_names().len()) }
    })
}

/// Writes the name of state entry `index` (PyTorch state_dict order) to `*out`: a static
/// string, never freed. index >= count: INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_state_name(
    module: *const normkit_module_t,
    index: usize,
    out: *mut *const c_char,
) -> normkit_status_t {
    boundary!("normkit_module_state_name", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        let names = m.inner.state_names();
        let name = names.get(index).ok_or_else(|| {
            CapiError::invalid(
                "index",
                format!(
                    "{index} is out of range (the module has {} state entries)",
                    names.len()
                ),
            )
        })?;
        let p = static_c_name(name)?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, p) }
    })
}

/// Writes the element count of state entry `name` to `*out` (1 for num_batches_tracked).
/// Unknown name: INVALID_ARGUMENT; lazy state before materialisation: NOT_INITIALIZED.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_state_numel(
    module: *const normkit_module_t,
    name: *const c_char,
    out: *mut i64,
) -> normkit_status_t {
    boundary!("normkit_module_state_numel", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        // SAFETY: name is NULL or a NUL-terminated string (caller contract).
        let name = unsafe { read_str("name", name) }?;
        let n = match m.inner.state(name)? {
            State::Tensor(b) => b.len(),
            State::Counter(_) => 1,
        };
        let n = i64::try_from(n).map_err(|_| CapiError::internal("state size"))?;
        // SAFETY: out is NULL or writable (caller contract).
        unsafe { write_out("out", out, n) }
    })
}

/// Copies state entry `name` into the caller tensor `dst`: float entries into a float tensor
/// with the same element count (any shape and strides; values converted to dst's dtype),
/// num_batches_tracked into an int64 tensor with one element. Unknown name: INVALID_ARGUMENT;
/// lazy state before materialisation: NOT_INITIALIZED; wrong element count: SHAPE_MISMATCH;
/// wrong dtype: UNSUPPORTED_DTYPE.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_get_state(
    ctx: *mut normkit_context_t,
    module: *const normkit_module_t,
    name: *const c_char,
    dst: *mut normkit_tensor_t,
) -> normkit_status_t {
    boundary!("normkit_module_get_state", {
        // SAFETY: ctx is NULL or live (caller contract). (The copy needs no thread pool.)
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        // SAFETY: name is NULL or a NUL-terminated string (caller contract).
        let name = unsafe { read_str("name", name) }?;
        let state = m.inner.state(name)?;
        let State::Tensor(b) = state else {
            let State::Counter(n) = state else {
                return Err(CapiError::internal("state kind"));
            };
            // SAFETY: the tensor contract for dst.
            let d = unsafe { counter_desc(dst) }?;
            // SAFETY: dst's span is writable (tensor contract).
            return unsafe { d.write_i64(n) };
        };
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract for dst.
            return unsafe { super::cuda::write_device("state entry", dev, dst, &b) };
        }
        // SAFETY: the tensor contract for dst.
        unsafe { copy_out("state entry", dst, &b) }
    })
}

/// Copies `b` into the caller tensor `dst` (any float dtype, strides and shape with b's element
/// count; values converted).
///
/// # Safety
/// `dst` follows the tensor contract.
unsafe fn copy_out(what: &str, dst: *mut normkit_tensor_t, b: &Buffer) -> CResult<()> {
    // SAFETY: forwarded tensor contract.
    let mut io = unsafe { Io::new(&[], &[("dst", dst, Need::Required)]) }?;
    {
        let ([], [dst]) = io.views::<0, 1>()?;
        let mut dst = required(dst, "dst")?;
        if dst.numel() != b.len() {
            return Err(numel_error(what, "dst", b.len(), dst.numel()));
        }
        let data = b.as_data();
        for i in 0..b.len() {
            dst.set_linear_f64(i, data.get_f64(i));
        }
    }
    io.write_back();
    Ok(())
}

/// Overwrites state entry `name` from the caller tensor `src` (same rules as
/// normkit_module_get_state; values are converted to the module's param_dtype). Loading every
/// lazy entry of an uninitialised lazy module materialises it with src's element count.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_set_state(
    ctx: *mut normkit_context_t,
    module: *mut normkit_module_t,
    name: *const c_char,
    src: *const normkit_tensor_t,
) -> normkit_status_t {
    boundary!("normkit_module_set_state", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        let m = unsafe { module_mut(module) }?;
        // SAFETY: name is NULL or a NUL-terminated string (caller contract).
        let name = unsafe { read_str("name", name) }?;
        if name == "num_batches_tracked" {
            // SAFETY: the tensor contract for src.
            let d = unsafe { counter_desc(src) }?;
            // SAFETY: src's span is readable (tensor contract).
            let n = unsafe { d.read_i64() }?;
            return Ok(m.inner.load_state(name, &State::Counter(n))?);
        }
        let expected = match m.inner.state(name) {
            Ok(State::Tensor(b)) => Some(b.len()),
            _ => None, // lazy or unknown: load_state reports or accepts it
        };
        if let Some(dev) = ctx.cuda() {
            // SAFETY: the tensor contract for src.
            let value = unsafe { super::cuda::read_device("state entry", dev, src, expected) }?;
            return Ok(m.inner.load_state(name, &State::Tensor(value))?);
        }
        let inner = &mut m.inner;
        // SAFETY: the tensor contract for src.
        unsafe {
            run_op(ctx, [("src", src, Need::Required)], [], move |[src], []| {
                let src = required(src, "src")?;
                if let Some(n) = expected.filter(|&n| n != src.numel()) {
                    return Err(numel_error("state entry", "src", n, src.numel()));
                }
                let value = Buffer::from_f64(src.dtype(), &src.to_f64_vec());
                Ok(inner.load_state(name, &State::Tensor(value))?)
            })
        }
    })
}

fn numel_error(what: &str, arg: &str, expected: usize, got: usize) -> CapiError {
    CapiError::new(
        S::NORMKIT_STATUS_SHAPE_MISMATCH,
        format!("{arg}: the {what} has {expected} elements, the tensor has {got}"),
    )
}

/// # Safety
/// `t` follows the tensor contract.
unsafe fn counter_desc(t: *const normkit_tensor_t) -> CResult<Desc> {
    // SAFETY: t is NULL or valid (tensor contract).
    let t = unsafe { t.as_ref() }.ok_or_else(|| CapiError::null("tensor"))?;
    // SAFETY: shape/strides valid (tensor contract).
    let d = unsafe { Desc::from_c("num_batches_tracked tensor", t) }?;
    if d.elem != Elem::I64 {
        return Err(CapiError::new(
            S::NORMKIT_STATUS_UNSUPPORTED_DTYPE,
            "num_batches_tracked: expected an int64 tensor (code NORMKIT_DTYPE_CODE_INT, bits 64)",
        ));
    }
    Ok(d)
}

/// PyTorch's reset_running_stats(): running_mean <- 0, running_var <- 1, counter <- 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_reset_running_stats(
    module: *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_module_reset_running_stats", {
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        Ok(unsafe { module_mut(module) }?.inner.reset_running_stats()?)
    })
}

/// PyTorch's reset_parameters(): running statistics reset, weight <- 1, bias <- 0.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_reset_parameters(
    module: *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_module_reset_parameters", {
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        Ok(unsafe { module_mut(module) }?.inner.reset_parameters()?)
    })
}

/// Backward of the module's last successful forward (PyTorch's autograd through this module):
/// `x` is that forward's input (same shape and dtype), `grad_output` dL/dy (x's shape and
/// dtype). Writes dL/dx into `grad_input` when it is not NULL (x's shape and dtype, any
/// strides; it may be grad_output itself), and accumulates dL/dweight and dL/dbias into the
/// module's gradients (read them with normkit_module_get_grad, clear them with
/// normkit_module_zero_grad), as PyTorch's `.grad` does. Uses what the forward saved: batch
/// statistics after a training forward, running statistics after an eval forward. A
/// SyncBatchNorm after a synchronised forward all-reduces through its communicator when
/// grad_input is requested (every rank must then request it); its parameter gradients are
/// this rank's (sum them over ranks as data-parallel training does). No forward yet:
/// INVALID_ARGUMENT; x differs from the forward's input: SHAPE_MISMATCH; a failed collective:
/// COMMUNICATOR.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_backward(
    ctx: *mut normkit_context_t,
    module: *mut normkit_module_t,
    x: *const normkit_tensor_t,
    grad_output: *const normkit_tensor_t,
    grad_input: *mut normkit_tensor_t,
) -> normkit_status_t {
    boundary!("normkit_module_backward", {
        // SAFETY: ctx is NULL or live (caller contract).
        let ctx = unsafe { context_ref(ctx) }?;
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        let m = unsafe { module_mut(module) }?;
        if let Inner::Cuda(cm) = &mut m.inner {
            // SAFETY: the tensor contract for x, grad_output and grad_input.
            return unsafe { super::cuda::module_backward(ctx, cm, x, grad_output, grad_input) };
        }
        let inner = m.inner.host_mut()?;
        // SAFETY: the tensor contract for x, grad_output and grad_input.
        unsafe {
            run_op(
                ctx,
                [
                    ("x", x, Need::Required),
                    ("grad_output", grad_output, Need::Required),
                ],
                [("grad_input", grad_input, Need::Optional)],
                move |[x, g], [mut gi]| {
                    let x = required(x, "x")?;
                    let g = required(g, "grad_output")?;
                    Ok(inner.backward(&x, &g, gi.as_mut())?)
                },
            )
        }
    })
}

/// Copies the accumulated gradient of parameter `name` ("weight" or "bias") into the caller
/// tensor `dst` (any float dtype and shape with the parameter's element count; values
/// converted). No backward since creation or normkit_module_zero_grad: NO_GRADIENT; a name
/// the module has no parameter for: INVALID_ARGUMENT; wrong element count: SHAPE_MISMATCH.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_get_grad(
    module: *const normkit_module_t,
    name: *const c_char,
    dst: *mut normkit_tensor_t,
) -> normkit_status_t {
    boundary!("normkit_module_get_grad", {
        // SAFETY: module is NULL or live (caller contract).
        let m = unsafe { module_ref(module) }?;
        // SAFETY: name is NULL or a NUL-terminated string (caller contract).
        let name = unsafe { read_str("name", name) }?;
        let Some(b) = m.inner.grad(name)? else {
            return Err(CapiError::new(
                S::NORMKIT_STATUS_NO_GRADIENT,
                format!("{name}: no gradient yet (run normkit_module_backward first)"),
            ));
        };
        // SAFETY: the tensor contract for dst.
        unsafe { copy_out("gradient", dst, &b) }
    })
}

/// Clears the module's accumulated parameter gradients (PyTorch's zero_grad(set_to_none=True):
/// normkit_module_get_grad then reports NO_GRADIENT until the next backward).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_zero_grad(
    module: *mut normkit_module_t,
) -> normkit_status_t {
    boundary!("normkit_module_zero_grad", {
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        unsafe { module_mut(module) }?.inner.zero_grad();
        Ok(())
    })
}

/// Sets the process group of a SyncBatchNorm module (created with NORMKIT_KIND_SYNC): `comm` is
/// validated and copied (normkit keeps no pointer to it, but keeps comm->user_data and calls
/// the callbacks during later training forwards/backwards of this module, so user_data must
/// outlive that use). NULL clears it: the module then behaves as BatchNorm (as does a module
/// with world_size 1, or in eval mode). Another kind of module: INVALID_ARGUMENT; an invalid
/// table: NULL_POINTER (a NULL callback), INVALID_ARGUMENT (world_size, rank), STRUCT_SIZE.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn normkit_module_set_communicator(
    module: *mut normkit_module_t,
    comm: *const normkit_communicator_t,
) -> normkit_status_t {
    boundary!("normkit_module_set_communicator", {
        // SAFETY: module is NULL or live and used by this thread only (caller contract).
        let m = unsafe { module_mut(module) }?;
        let name = m.inner.name();
        let bn = match &mut m.inner {
            Inner::Host(m) => match m.as_mut() {
                AnyModule::BatchNorm(bn) => Some(bn),
                _ => None,
            },
            Inner::Cuda(cm) => cm.batch_norm_mut(),
        };
        let Some(bn) = bn.filter(|bn| bn.kind() == BatchNormKind::SyncBatchNorm) else {
            return Err(CapiError::invalid(
                "module",
                format!(
                    "is a {name}; only a SyncBatchNorm (NORMKIT_KIND_SYNC) takes a communicator"
                ),
            ));
        };
        // SAFETY: comm is NULL or a readable table (caller contract).
        let group = unsafe { CCommunicator::from_c_opt("comm", comm) }?;
        bn.set_process_group(group);
        Ok(())
    })
}

use super::error::boundary_or;
