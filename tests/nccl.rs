//! `NcclCommunicator` (feature `nccl`).
//!
//! Without a GPU (CI): creating what a communicator needs is an error that explains itself,
//! never a panic, and libnccl is found and loaded when one is installed (the PyPI wheel
//! PyTorch ships, when `python3` has it). With GPUs and libnccl (`NORMKIT_REQUIRE_GPU=1`
//! makes their absence a failure): collectives on one rank per GPU, borrowed and owned
//! communicators, and SyncBatchNorm through NCCL against one BatchNorm over the whole batch
//! (the harness of `tests/sync_batch_norm.rs`). NCCL refuses two ranks on one GPU, so a
//! single-GPU machine runs the world-size-1 checks and says that it skipped the rest.
#![cfg(feature = "nccl")]

mod sync_common;

use normkit::backend::cuda::device::CudaDevice;
use normkit::backend::cuda::emu::EmuDevice;
use normkit::backend::cuda::probe;
use normkit::comm::Communicator;
use normkit::nccl::{self, NcclCommunicator, NcclUniqueId};
use normkit::{ErrorKind, bf16};
use std::path::PathBuf;
use std::sync::Arc;
use sync_common::run_case;

fn require_gpu() -> bool {
    std::env::var("NORMKIT_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// Says why the GPU part is skipped; a failure under `NORMKIT_REQUIRE_GPU=1`.
fn skip(why: &str) {
    assert!(!require_gpu(), "NORMKIT_REQUIRE_GPU=1, but {why}");
    eprintln!("skipping the GPU part of this test: {why}");
}

/// The libnccl of the `nvidia-nccl-cu*` wheel of this machine's `python3`, if any.
fn wheel_library() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import nvidia.nccl as m; print(list(m.__path__)[0])"])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let lib = PathBuf::from(dir.trim()).join("lib/libnccl.so.2");
    lib.is_file().then_some(lib)
}

#[test]
fn missing_gpu_or_library_is_an_error_not_a_panic() {
    if let Some(reason) = probe::probe().reason() {
        let e = CudaDevice::new(0).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DeviceUnavailable, "{e}");
        assert!(e.to_string().contains(reason), "{e}");
        skip(&format!(
            "no CUDA device for an NcclCommunicator ({reason})"
        ));
    }
    match nccl::version() {
        Ok(v) => {
            assert!(v.0 >= 2, "{v:?}");
            eprintln!("NCCL {v:?} from {}", nccl::library_path().unwrap());
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::DeviceUnavailable, "{e}");
            assert!(e.to_string().contains("libnccl"), "{e}");
            eprintln!("libnccl not found here: {e}");
        }
    }
}

/// NCCL needs a GPU: every constructor refuses the host emulation of a `CudaDevice`, before
/// touching libnccl.
#[test]
fn the_host_emulation_is_refused() {
    let emu = match CudaDevice::emulated(EmuDevice {
        sms: 1,
        reverse_blocks: false,
        reverse_threads: false,
    }) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("skipping: the host emulation is not built ({e})");
            return;
        }
    };
    let mut errors = vec![
        NcclCommunicator::init_all(std::slice::from_ref(&emu)).unwrap_err(),
        NcclCommunicator::init_rank(
            emu.clone(),
            &NcclUniqueId::from_bytes([0; NcclUniqueId::BYTES]),
            1,
            0,
        )
        .unwrap_err(),
    ];
    let mut dummy = 0u8;
    // SAFETY: the device is checked (and refused) before `comm` is used.
    errors.push(unsafe { NcclCommunicator::from_raw((&raw mut dummy).cast(), emu) }.unwrap_err());
    for e in errors {
        assert_eq!(e.kind(), ErrorKind::DeviceUnavailable, "{e}");
        assert!(e.to_string().contains("host emulation"), "{e}");
    }
}

/// The PyPI layout (`site-packages/nvidia/nccl/lib/libnccl.so.2`, which cudarc's own loader
/// does not find): loading it explicitly works, resolves every symbol, and loading it again
/// is the same library.
#[test]
fn loads_the_wheel_library_when_present() {
    let Some(lib) = wheel_library() else {
        eprintln!("skipping: python3 has no nvidia-nccl wheel");
        return;
    };
    let loaded = match nccl::load_library(&lib) {
        Ok(p) => p,
        // another libnccl was found first by this process (NORMKIT_NCCL_PATH, the loader)
        Err(e) if e.kind() == ErrorKind::InvalidArgument => {
            eprintln!("skipping: {e}");
            return;
        }
        Err(e) => panic!("{}: {e}", lib.display()),
    };
    assert!(loaded.ends_with("libnccl.so.2"), "{loaded}");
    assert_eq!(nccl::load_library(&lib).unwrap(), loaded);
    assert_eq!(nccl::library_path().unwrap(), loaded);
    let (major, minor, _) = nccl::version().unwrap();
    assert!(major >= 2 && minor > 0, "{major}.{minor}");
    // The bootstrap id needs no GPU; whether it can be made here depends on the network, but
    // it never panics.
    match NcclUniqueId::new() {
        Ok(id) => assert_ne!(id.as_bytes(), [0u8; NcclUniqueId::BYTES]),
        Err(e) => assert_eq!(e.kind(), ErrorKind::Communication, "{e}"),
    }
}

/// The GPUs and libnccl, or `None` (after saying why).
fn gpus() -> Option<Vec<CudaDevice>> {
    if let Some(lib) = wheel_library() {
        let _ = nccl::load_library(lib);
    }
    let p = probe::probe();
    if let Some(reason) = p.reason() {
        skip(reason);
        return None;
    }
    if let Err(e) = nccl::version() {
        skip(&e.to_string());
        return None;
    }
    Some(
        (0..p.devices().len())
            .map(|i| CudaDevice::new(i).unwrap())
            .collect(),
    )
}

/// Each rank (a thread) runs `f` on its communicator.
fn on_ranks<R: Send + 'static>(
    group: &[Arc<dyn Communicator>],
    f: impl Fn(&dyn Communicator) -> R + Send + Sync + Copy + 'static,
) -> Vec<R> {
    let handles: Vec<_> = group
        .iter()
        .cloned()
        .map(|c| std::thread::spawn(move || f(c.as_ref())))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// All-gather and all-reduce results, and a bad receive length, on every rank.
fn check_collectives(group: &[Arc<dyn Communicator>]) {
    let n = group.len();
    let got = on_ranks(group, |c| {
        let r = c.rank() as f64;
        let mut all = vec![0.0; 2 * c.world_size()];
        c.all_gather(&[r, r + 0.25], &mut all).unwrap();
        let mut sum = vec![1.0, r, 0.5];
        c.all_reduce_sum(&mut sum).unwrap();
        let bad = c.all_gather(&[r], &mut [0.0; 0]).unwrap_err();
        (all, sum, bad)
    });
    let ranks = (0..n).map(|r| r as f64);
    let gathered: Vec<f64> = ranks.clone().flat_map(|r| [r, r + 0.25]).collect();
    for (rank, (all, sum, bad)) in got.into_iter().enumerate() {
        assert_eq!(all, gathered, "rank {rank}");
        assert_eq!(sum, vec![n as f64, ranks.clone().sum(), n as f64 * 0.5]);
        assert_eq!(bad.kind(), ErrorKind::Communication);
        assert!(bad.to_string().contains("ncclAllGather"), "{bad}");
    }
}

#[test]
fn nccl_world_of_one() {
    let Some(devices) = gpus() else { return };
    let comms = NcclCommunicator::init_all(&devices[..1]).unwrap();
    assert_eq!((comms[0].rank(), comms[0].world_size()), (0, 1));
    assert!(comms[0].is_owned());
    // a borrowed view of the same communicator, which must not destroy it
    // SAFETY: `comms[0]` outlives `borrowed` and no other thread uses it meanwhile.
    let borrowed =
        unsafe { NcclCommunicator::from_raw(comms[0].as_raw(), devices[0].clone()) }.unwrap();
    assert!(!borrowed.is_owned());
    let group: Vec<Arc<dyn Communicator>> = vec![Arc::new(borrowed)];
    check_collectives(&group);
    drop(group);
    let owned: Arc<dyn Communicator> = Arc::new(comms.into_iter().next().unwrap());
    check_collectives(&[owned]);
    // a null communicator is refused
    // SAFETY: null is checked before use.
    let e = unsafe { NcclCommunicator::from_raw(std::ptr::null_mut(), devices[0].clone()) };
    assert_eq!(e.unwrap_err().kind(), ErrorKind::InvalidArgument);
}

#[test]
fn sync_batch_norm_over_nccl_equals_full_batch() {
    let Some(devices) = gpus() else { return };
    if devices.len() < 2 {
        // NCCL refuses two ranks on one GPU ("Duplicate GPU detected": ncclInvalidUsage)
        eprintln!(
            "skipping SyncBatchNorm over NCCL: it needs two GPUs, found {} (the world-size-1 \
             test ran the collectives)",
            devices.len()
        );
        return;
    }
    let owned = NcclCommunicator::init_all(&devices).unwrap();
    // SyncBatchNorm runs through borrowed communicators (the application keeps `owned`)
    let group: Vec<Arc<dyn Communicator>> = owned
        .iter()
        .map(|c| {
            // SAFETY: `owned` outlives every use of `group` (dropped last, below); each rank's
            // communicator is used by one thread at a time.
            let b = unsafe { NcclCommunicator::from_raw(c.as_raw(), c.device().clone()) };
            Arc::new(b.unwrap()) as Arc<dyn Communicator>
        })
        .collect();
    for (i, c) in group.iter().enumerate() {
        assert_eq!((c.rank(), c.world_size()), (i, devices.len()));
    }
    check_collectives(&group);
    // uneven local batches, one rank empty when there are three or more
    let slices: Vec<usize> = (0..group.len()).map(|r| [2, 3, 0, 1][r % 4]).collect();
    run_case::<f32>(false, 1e-4, &slices, group.clone());
    run_case::<f32>(true, 1e-4, &slices, group.clone());
    run_case::<bf16>(false, 2e-2, &slices, group.clone());
    drop(group);
    drop(owned);
}
